/*
 * kquant.c — GGML's K-quant block formats Q4_K, Q5_K and Q6_K (formats/kquant.h): their byte
 * layouts as GGUF files store them, dequantization (bit for bit as the gguf Python package),
 * our own quantizer, and dot products with int8 activations for the CPU inference engine
 * (portable C, AVX2, AVX-512 VNNI).
 *
 * Written from the format description (the gguf package's numpy dequantizers, gguf 0.19.0,
 * gguf/quants.py); no code is taken from ggml / llama.cpp. All multi-byte fields are
 * little-endian; fp16 is IEEE binary16.
 *
 * ---------------------------------------------------------------- layouts (one super-block)
 *
 * Q4_K: 256 values = 8 sub-blocks j of 32 values (values 32j .. 32j+31), 144 bytes:
 *
 *   offset  size  field
 *        0     2  d       fp16 super-block scale of the sub-block scales
 *        2     2  dmin    fp16 super-block scale of the sub-block minima
 *        4    12  scales  8 six-bit scales sc_j and 8 six-bit minima m_j, packed below
 *       16   128  qs      4-bit quants: byte 32g + l (g = 0..3, l = 0..31) holds value
 *                         64g + l (sub-block 2g) in its low nibble and value 64g + 32 + l
 *                         (sub-block 2g + 1) in its high nibble
 *
 *   value = (d * sc_j) * q - (dmin * m_j),   q in 0..15, sc_j and m_j in 0..63
 *
 *   The 12 scale bytes s[0..11] (bit 7 first):
 *     s[j]     (j = 0..3)  = hh hhhh : top 2 bits = bits 4,5 of sc_{j+4}; low 6 bits = sc_j
 *     s[j + 4] (j = 0..3)  = hh hhhh : top 2 bits = bits 4,5 of m_{j+4};  low 6 bits = m_j
 *     s[j + 8] (j = 0..3)  = mmmm ssss : high nibble = bits 0..3 of m_{j+4}, low nibble =
 *                            bits 0..3 of sc_{j+4}
 *   so sc_{j+4} = (s[j+8] & 15) | (s[j] >> 6) << 4 and m_{j+4} = (s[j+8] >> 4) | (s[j+4] >> 6) << 4.
 *
 * Q5_K: as Q4_K with a fifth bit, 176 bytes:
 *
 *        0     2  d       fp16
 *        2     2  dmin    fp16
 *        4    12  scales  packed exactly as Q4_K's
 *       16    32  qh      bit j of byte l is bit 4 of value 32j + l (sub-block j)
 *       48   128  qs      low 4 bits of the quants, nibbles placed as Q4_K's qs
 *
 *   value = (d * sc_j) * q - (dmin * m_j),   q = low nibble | qh bit << 4 in 0..31
 *
 * Q6_K: 256 values = 16 sub-blocks k of 16 values, 210 bytes (the scale comes last):
 *
 *        0   128  ql      low 4 bits of the quants
 *      128    64  qh      high 2 bits of the quants
 *      192    16  scales  int8 sub-block scales sc_k (k = value / 16)
 *      208     2  d       fp16
 *
 *   The values form two halves h = 0, 1 of 128; value 128h + 32g + l (g = 0..3, l = 0..31):
 *     low 4 bits  = ql[64h + 32(g & 1) + l], low nibble for g < 2, high nibble for g >= 2
 *     high 2 bits = bits 2g, 2g+1 of qh[32h + l]
 *   value = (d * sc_k) * (q - 32),   q in 0..63
 *
 * ---------------------------------------------------------------- dequantization
 *
 * The gguf package computes in float32 with numpy: for Q4_K / Q5_K the products
 * dl = d * float(sc_j) and ml = dmin * float(m_j), then dl * float(q) - ml; for Q6_K
 * dl = d * float(sc_k), then dl * float(q - 32). The code below does the same operations in
 * the same order. Contracting a product and a difference into one FMA could not change a
 * bit here: d has 11 significant bits, sc_j and m_j 6, q 5, so d * sc_j, dmin * m_j and
 * dl * q are all exact in FP32 (at most 22 bits); Q6_K's dl * (q - 32) may round (up to
 * 11 + 8 + 6 bits) but no addition follows it.
 *
 * ---------------------------------------------------------------- dot products
 *
 * With int8 activations (qx_i, per 32-block scale dx_b and FP32 sum xs_b of the original x;
 * see cpu/qmatmul.c "int8 activations"), one super-block s of a row gives 8 lanes b = 0..7,
 * one per 32 values (activation block 8s + b):
 *
 *   Q4_K / Q5_K (lane b = sub-block b):
 *     isum_b = sum_{i<32} q_i qx_i                         (exact int32, |.| <= 32*31*127)
 *     acc_b  = fma((d * float(sc_b)) * dx_{8s+b}, float(isum_b), acc_b)
 *     accm_b = fma(dmin * float(m_b), xs_{8s+b}, accm_b)
 *     y      = H(acc) - H(accm)
 *   Q6_K (lane b = sub-blocks 2b, 2b+1):
 *     isum_b = sc_{2b} (sum_{i<16} q_i qx_i - 32 sum_{i<16} qx_i)
 *            + sc_{2b+1} (the same over the next 16)      (exact int32, |.| < 2^24)
 *     acc_b  = fma(d * dx_{8s+b}, float(isum_b), acc_b)
 *     y      = H(acc)
 *
 * where H(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), the horizontal sum of one
 * 256-bit vector. Every variant performs exactly these FP32 operations, so all agree bit for
 * bit: the portable C code keeps the 8 lanes in an array and calls fmaf; the SIMD code keeps
 * them in one __m256 per activation row. Each activation row has its own accumulators, so a
 * row's result does not depend on how many rows are computed with it.
 *
 * Every isum is exact, so the only error against the same formula in exact arithmetic is the
 * FP32 rounding of the scale products and the accumulation; the error against x . w (the
 * original x) adds the activation rounding, at most dx_b / 2 per value times the weight's
 * scaled quant |d sc q| (the minimum term uses the exact block sum xs_b, so it sees none).
 *
 * SIMD: the quants of a sub-block are unpacked into 32 unsigned bytes (values in 0..15, 0..31
 * or 0..63) and multiplied with the 32 signed activation bytes by vpmaddubsw (int16 pair sums,
 * at most 2 * 63 * 127 = 16002: no saturation) + vpmaddwd (int32), or by one vpdpbusd with
 * AVX-512 VNNI. Q6_K subtracts 32 * qx in the int16 pairs (vpmaddubsw of 32 and qx, at most
 * 8128) and multiplies by the int16 sub-block scale with vpmaddwd (|.| <= 2 * 8128 * 128 fits
 * int32). The eight 8-lane int32 vectors of a super-block are reduced to one vector of isum_b
 * with vphaddd (and a 128-bit lane swap), so only one int->float conversion and one FMA per
 * super-block and activation row remain. Weights are unpacked once per super-block and used
 * for up to 4 activation rows.
 */
#include "formats/kquant.h"

#include "cpu/ops_cpu.h"
#include "formats/qmatrix.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define Q4K_BYTES 144
#define Q5K_BYTES 176
#define Q6K_BYTES 210
#define KQ_MAXNX 4

size_t fr_kq_block_bytes(fr_kq_type t) {
    switch (t) {
    case FR_KQ_Q4_K: return Q4K_BYTES;
    case FR_KQ_Q5_K: return Q5K_BYTES;
    case FR_KQ_Q6_K: return Q6K_BYTES;
    default: return 0;
    }
}

size_t fr_kq_row_bytes(fr_kq_type t, int n) {
    if (n <= 0 || n % FR_QK_K) return 0;
    return fr_kq_block_bytes(t) * (size_t)(n / FR_QK_K);
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

/* The 12 scale bytes of Q4_K / Q5_K -> sc[8], m[8] (layout above). */
static inline void unpack_scales(const uint8_t *s, uint8_t *sc, uint8_t *m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

static inline void pack_scales(uint8_t *s, const uint8_t *sc, const uint8_t *m) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* The 256 quants of a Q4_K (five = 0) or Q5_K (five = 1) super-block, in value order. */
static inline void unpack_q45(const uint8_t *blk, int five, uint8_t *q) {
    const uint8_t *qh = blk + 16, *qs = blk + (five ? 48 : 16);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = qs[32 * g + l] & 15;
            q[64 * g + 32 + l] = qs[32 * g + l] >> 4;
        }
    if (five)
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) q[32 * j + l] |= (uint8_t)(((qh[l] >> j) & 1) << 4);
}

/* The 256 quants (0..63, not yet minus 32) of a Q6_K super-block, in value order. */
static inline void unpack_q6(const uint8_t *blk, uint8_t *q) {
    const uint8_t *ql = blk, *qh = blk + 128;
    for (int h = 0; h < 2; h++)
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = ql[64 * h + 32 * (g & 1) + l], hb = qh[32 * h + l];
                q[128 * h + 32 * g + l] = (uint8_t)(((g < 2 ? lo : lo >> 4) & 15) | (((hb >> (2 * g)) & 3) << 4));
            }
}

void fr_kq_unpack_q45(fr_kq_type t, const void *blk, uint8_t *q, float *scale, float *min) {
    const uint8_t *b = blk;
    const float d = fr_q_f16_to_f32(rd16(b)), dmin = fr_q_f16_to_f32(rd16(b + 2));
    uint8_t sc[8], m[8];
    unpack_scales(b + 4, sc, m);
    unpack_q45(b, t == FR_KQ_Q5_K, q);
    for (int j = 0; j < 8; j++) {
        scale[j] = d * (float)sc[j];
        min[j] = dmin * (float)m[j];
    }
}

void fr_kq_unpack_q6k(const void *blk, uint8_t *q, int8_t *sc, float *d) {
    const uint8_t *b = blk;
    unpack_q6(b, q);
    memcpy(sc, b + 192, 16);
    *d = fr_q_f16_to_f32(rd16(b + 208));
}

/* ------------------------------------------------------------------ dequantization */

static void dequant_q45(const uint8_t *blk, int five, float *y) {
    const float d = fr_q_f16_to_f32(rd16(blk)), dmin = fr_q_f16_to_f32(rd16(blk + 2));
    uint8_t sc[8], m[8], q[FR_QK_K];
    unpack_scales(blk + 4, sc, m);
    unpack_q45(blk, five, q);
    for (int j = 0; j < 8; j++) {
        const float dl = d * (float)sc[j], ml = dmin * (float)m[j];
        for (int l = 0; l < 32; l++) {
            const float p = dl * (float)q[32 * j + l];
            y[32 * j + l] = p - ml;
        }
    }
}

static void dequant_q6(const uint8_t *blk, float *y) {
    const float d = fr_q_f16_to_f32(rd16(blk + 208));
    const int8_t *sc = (const int8_t *)(blk + 192);
    uint8_t q[FR_QK_K];
    unpack_q6(blk, q);
    for (int k = 0; k < 16; k++) {
        const float dl = d * (float)sc[k];
        for (int l = 0; l < 16; l++) y[16 * k + l] = dl * (float)((int)q[16 * k + l] - 32);
    }
}

void fr_kq_dequantize_row(fr_kq_type t, const void *src, float *dst, int n) {
    const size_t bb = fr_kq_block_bytes(t);
    if (!bb || n <= 0 || n % FR_QK_K) return;
    const uint8_t *p = (const uint8_t *)src;
    for (int s = 0; s < n / FR_QK_K; s++, p += bb, dst += FR_QK_K) {
        if (t == FR_KQ_Q6_K) dequant_q6(p, dst);
        else dequant_q45(p, t == FR_KQ_Q5_K, dst);
    }
}

/* ------------------------------------------------------------------ quantization
 *
 * Q4_K / Q5_K (nmax = 15 / 31), one super-block:
 *  1. Each sub-block j of 32 values gets a step s_j >= 0 and an offset o_j <= 0 (value ~
 *     s_j q + o_j; the format stores -o_j as m_j >= 0, so the offset is never positive and an
 *     all-positive sub-block uses o = 0). Candidates: with lo = min(min x, 0), hi = max x,
 *     steps (hi - lo) / (nmax + t) for t = -0.5, -0.25, ..., 3 (t > 0 lets a few outliers
 *     clip for a finer step). For each: q_i = clamp(round((x_i - lo) / step), 0, nmax), then
 *     the least-squares (s, o) for those q (o clamped to <= 0, s refitted alone then), then
 *     q reassigned to the nearest level of (s, o) and the squared error measured. The best
 *     candidate is refined twice more by refit + reassignment (kept only if better).
 *  2. Super-block scales: d = max_j s_j / 63 and dmin = max_j(-o_j) / 63, rounded to fp16.
 *  3. sc_j = round(s_j / d) and m_j = round(-o_j / dmin) in 0..63; the 3 x 3 neighbours
 *     (sc_j - 1 .. sc_j + 1, m_j - 1 .. m_j + 1) are tried with the values requantized to the
 *     stored levels, and the pair with the least squared error is kept (the 6-bit scales of
 *     sub-blocks much smaller than the largest are coarse, and rounding each alone is not
 *     the best pair).
 *  4. q_i = clamp(round((x_i + dmin m_j) / (d sc_j)), 0, nmax) with the stored FP32 scales.
 * Q6_K (levels q - 32 in -32..31, symmetric), one super-block:
 *  1. Each sub-block k of 16 values gets a signed step s_k: with v the value of largest
 *     magnitude, candidates s = v / L for L = -32.4, -32, -31.5, ..., -28 (v on the extra
 *     level -32) and L = 31.4, 31, ..., 28; for each, q = clamp(round(x / s), -32, 31), then the
 *     least-squares s = sum x q / sum q^2, q reassigned, error measured; the best is kept.
 *  2. d = max_k |s_k| / 127 in fp16; sc_k = round(s_k / d) in -128..127, then sc_k - 1 ..
 *     sc_k + 1 tried with the values requantized, the least squared error kept.
 *  3. q = clamp(round(x / (d sc_k)), -32, 31) + 32.
 * Input must be finite; d and dmin are clamped to the fp16 range (65504).
 */

/* v clamped to [lo, hi]; NaN (0 * inf from a vanishing step) gives lo */
static inline float clampf(float v, float lo, float hi) {
    v = v > lo ? v : lo; /* (the forms of maxss / minss: no branches, and the loops vectorize) */
    return v < hi ? v : hi;
}

/* v clamped to [lo, hi] (small integers) and rounded to nearest even; the magic-number
 * rounding is exact for |v| < 2^22 and needs no libm call (nearbyintf is one on generic x86-64). */
static inline int round_clamp(float v, float lo, float hi) {
    const float magic = 0x1.8p23f;
    return (int)((clampf(v, lo, hi) + magic) - magic);
}

static uint16_t f16_scale(float v) {
    if (!(v > 0.f)) return 0;
    if (v > 65504.f) v = 65504.f;
    return fr_q_f32_to_f16(v);
}

/* nearest level of value x for step s (inverse is = 1 / s), offset o: q in 0..nmax */
static inline int level_asym(float x, float is, float o, int nmax) {
    return round_clamp((x - o) * is, 0.f, (float)nmax);
}

/* sum of 8 lanes (the error sums below run in 8 independent lanes so they pipeline) */
static inline float sum8(const float *a) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); }

/* squared error of x (len a multiple of 8) on the levels of (s, o) */
static float err_asym(const float *x, int len, float s, float o, int nmax) {
    const float is = s > 0.f ? 1.f / s : 0.f;
    float acc[8] = {0};
    for (int i = 0; i < len; i += 8)
        for (int k = 0; k < 8; k++) {
            const float r = s * (float)level_asym(x[i + k], is, o, nmax) + o - x[i + k];
            acc[k] += r * r;
        }
    return sum8(acc);
}

/* least-squares (s, o <= 0) for fixed levels q of x; 0 if degenerate */
static int fit_asym(const float *x, const int *q, int len, float *s, float *o) {
    float aq[8] = {0}, aqq[8] = {0}, ax[8] = {0}, aqx[8] = {0};
    for (int i = 0; i < len; i += 8)
        for (int k = 0; k < 8; k++) {
            const float qf = (float)q[i + k];
            aq[k] += qf;
            aqq[k] += qf * qf;
            ax[k] += x[i + k];
            aqx[k] += qf * x[i + k];
        }
    /* sq, sqq are exact integers (< 2^24); det exact in double */
    const double sq = sum8(aq), sqq = sum8(aqq), sx = sum8(ax), sqx = sum8(aqx);
    const double det = len * sqq - sq * sq;
    if (det <= 0) return 0;
    double ss = (len * sqx - sq * sx) / det, oo = (sqq * sx - sq * sqx) / det;
    if (oo > 0) {
        oo = 0;
        ss = sqx / sqq;
    }
    if (!(ss > 0)) return 0;
    *s = (float)ss;
    *o = (float)oo;
    return 1;
}

static void subblock_asym(const float *x, int len, int nmax, float *s_out, float *o_out) {
    float lo = 0.f, hi = x[0];
    for (int i = 0; i < len; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    if (!(hi > lo)) { /* all values equal lo <= 0 */
        *s_out = 0.f;
        *o_out = lo;
        return;
    }
    float bs = (hi - lo) / (float)nmax, bo = lo;
    float be = err_asym(x, len, bs, bo, nmax);
    int q[32];
    for (int t = -2; t <= 12; t++) {
        const float step = (hi - lo) / ((float)nmax + 0.25f * (float)t);
        const float is = 1.f / step;
        for (int i = 0; i < len; i++) q[i] = level_asym(x[i], is, lo, nmax);
        float s, o;
        if (!fit_asym(x, q, len, &s, &o)) continue;
        const float e = err_asym(x, len, s, o, nmax);
        if (e < be) {
            be = e;
            bs = s;
            bo = o;
        }
    }
    for (int it = 0; it < 2; it++) {
        const float is = bs > 0.f ? 1.f / bs : 0.f;
        for (int i = 0; i < len; i++) q[i] = level_asym(x[i], is, bo, nmax);
        float s, o;
        if (!fit_asym(x, q, len, &s, &o)) break;
        const float e = err_asym(x, len, s, o, nmax);
        if (!(e < be)) break;
        be = e;
        bs = s;
        bo = o;
    }
    *s_out = bs;
    *o_out = bo;
}

static void quant_q45(const float *x, uint8_t *blk, int five) {
    const int nmax = five ? 31 : 15;
    float s[8], o[8], smax = 0.f, mmax = 0.f;
    for (int j = 0; j < 8; j++) {
        subblock_asym(x + 32 * j, 32, nmax, &s[j], &o[j]);
        smax = s[j] > smax ? s[j] : smax;
        mmax = -o[j] > mmax ? -o[j] : mmax;
    }
    const uint16_t dh = f16_scale(smax / 63.f), mh = f16_scale(mmax / 63.f);
    const float d = fr_q_f16_to_f32(dh), dmin = fr_q_f16_to_f32(mh);
    uint8_t sc[8], m[8], q[FR_QK_K];
    for (int j = 0; j < 8; j++) {
        const float *xj = x + 32 * j;
        const int sc0 = d > 0.f ? round_clamp(s[j] / d, 0.f, 63.f) : 0;
        const int m0 = dmin > 0.f ? round_clamp(-o[j] / dmin, 0.f, 63.f) : 0;
        int bsc = sc0, bm = m0;
        float be = -1.f;
        for (int a = sc0 - 1; a <= sc0 + 1; a++)
            for (int b = m0 - 1; b <= m0 + 1; b++) {
                if (a < 0 || a > 63 || b < 0 || b > 63) continue;
                const float e = err_asym(xj, 32, d * (float)a, -(dmin * (float)b), nmax);
                if (be < 0 || e < be) {
                    be = e;
                    bsc = a;
                    bm = b;
                }
            }
        sc[j] = (uint8_t)bsc;
        m[j] = (uint8_t)bm;
        const float dl = d * (float)bsc, ml = dmin * (float)bm, idl = dl > 0.f ? 1.f / dl : 0.f;
        for (int l = 0; l < 32; l++) q[32 * j + l] = (uint8_t)level_asym(xj[l], idl, -ml, nmax);
    }
    memset(blk, 0, five ? Q5K_BYTES : Q4K_BYTES);
    wr16(blk, dh);
    wr16(blk + 2, mh);
    pack_scales(blk + 4, sc, m);
    uint8_t *qh = blk + 16, *qs = blk + (five ? 48 : 16);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++)
            qs[32 * g + l] = (uint8_t)((q[64 * g + l] & 15) | ((q[64 * g + 32 + l] & 15) << 4));
    if (five)
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) qh[l] |= (uint8_t)(((q[32 * j + l] >> 4) & 1) << j);
}

static inline int level_sym(float x, float is) { return round_clamp(x * is, -32.f, 31.f); }

static float err_sym(const float *x, int len, float s) {
    const float is = s != 0.f ? 1.f / s : 0.f;
    float acc[8] = {0};
    for (int i = 0; i < len; i += 8)
        for (int k = 0; k < 8; k++) {
            const float r = s * (float)level_sym(x[i + k], is) - x[i + k];
            acc[k] += r * r;
        }
    return sum8(acc);
}

static float subblock_sym(const float *x, int len) {
    float v = 0.f;
    for (int i = 0; i < len; i++)
        if (fabsf(x[i]) > fabsf(v)) v = x[i];
    if (v == 0.f) return 0.f;
    float bs = -v / 32.f;
    float be = err_sym(x, len, bs);
    static const float L[] = {-32.4f, -32.f, -31.5f, -31.f, -30.5f, -30.f, -29.f, -28.f,
                              31.4f,  31.f,  30.5f,  30.f,  29.5f,  29.f,  28.f};
    for (size_t c = 0; c < sizeof L / sizeof L[0]; c++) {
        const float is0 = L[c] / v;
        float aqx[8] = {0}, aqq[8] = {0};
        for (int i = 0; i < len; i += 8)
            for (int k = 0; k < 8; k++) {
                const float q = (float)level_sym(x[i + k], is0);
                aqx[k] += q * x[i + k];
                aqq[k] += q * q;
            }
        const float sqq = sum8(aqq);
        if (sqq <= 0.f) continue;
        const float s = sum8(aqx) / sqq;
        const float e = err_sym(x, len, s);
        if (e < be) {
            be = e;
            bs = s;
        }
    }
    return bs;
}

static void quant_q6(const float *x, uint8_t *blk) {
    float s[16], amax = 0.f;
    for (int k = 0; k < 16; k++) {
        s[k] = subblock_sym(x + 16 * k, 16);
        amax = fabsf(s[k]) > amax ? fabsf(s[k]) : amax;
    }
    const uint16_t dh = f16_scale(amax / 127.f);
    const float d = fr_q_f16_to_f32(dh);
    int8_t sc[16];
    uint8_t q[FR_QK_K];
    for (int k = 0; k < 16; k++) {
        const float *xk = x + 16 * k;
        const int c0 = d > 0.f ? round_clamp(s[k] / d, -128.f, 127.f) : 0;
        int bc = c0;
        float be = -1.f;
        for (int c = c0 - 1; c <= c0 + 1; c++) {
            if (c < -128 || c > 127) continue;
            const float e = err_sym(xk, 16, d * (float)c);
            if (be < 0 || e < be) {
                be = e;
                bc = c;
            }
        }
        sc[k] = (int8_t)bc;
        const float dl = d * (float)bc, idl = dl != 0.f ? 1.f / dl : 0.f;
        for (int l = 0; l < 16; l++) q[16 * k + l] = (uint8_t)(level_sym(xk[l], idl) + 32);
    }
    uint8_t *ql = blk, *qh = blk + 128;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *qq = q + 128 * h + l; /* values 128h + 32g + l at qq[32g] */
            ql[64 * h + l] = (uint8_t)((qq[0] & 15) | ((qq[64] & 15) << 4));
            ql[64 * h + 32 + l] = (uint8_t)((qq[32] & 15) | ((qq[96] & 15) << 4));
            qh[32 * h + l] = (uint8_t)((qq[0] >> 4) | ((qq[32] >> 4) << 2) | ((qq[64] >> 4) << 4) | ((qq[96] >> 4) << 6));
        }
    memcpy(blk + 192, sc, 16);
    wr16(blk + 208, dh);
}

void fr_kq_quantize_row(fr_kq_type t, const float *src, void *dst, int n) {
    const size_t bb = fr_kq_block_bytes(t);
    if (!bb || n <= 0 || n % FR_QK_K) return;
    uint8_t *p = (uint8_t *)dst;
    for (int s = 0; s < n / FR_QK_K; s++, p += bb, src += FR_QK_K) {
        if (t == FR_KQ_Q6_K) quant_q6(src, p);
        else quant_q45(src, p, t == FR_KQ_Q5_K);
    }
}

/* ------------------------------------------------------------------ dot products: portable C
 * (the order of FP32 operations is the contract every SIMD variant follows; see the top) */

typedef void (*kq_rows_fn)(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, int n, int nx,
                           float *out);

static inline float hsum8(const float *a) {
    const float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

static void q45_rows_c(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, int n, int nx,
                       float *out, int five) {
    const int nsb = n / FR_QK_K, nb = n / 32;
    const size_t bb = five ? Q5K_BYTES : Q4K_BYTES;
    float acc[KQ_MAXNX][8], accm[KQ_MAXNX][8];
    uint8_t sc[8], m[8], q[FR_QK_K];
    memset(acc, 0, sizeof acc);
    memset(accm, 0, sizeof accm);
    if (nx > KQ_MAXNX) nx = KQ_MAXNX; /* (callers pass 1..4; this tells the compiler) */
    for (int s = 0; s < nsb; s++) {
        const uint8_t *blk = row + bb * (size_t)s;
        const float d = fr_q_f16_to_f32(rd16(blk)), dmin = fr_q_f16_to_f32(rd16(blk + 2));
        unpack_scales(blk + 4, sc, m);
        unpack_q45(blk, five, q);
        for (int r = 0; r < nx; r++) {
            const int8_t *x = qx + (size_t)r * n + (size_t)s * FR_QK_K;
            const float *dxr = dx + (size_t)r * nb + 8 * s, *xsr = xs + (size_t)r * nb + 8 * s;
            for (int j = 0; j < 8; j++) {
                int32_t isum = 0;
                for (int l = 0; l < 32; l++) isum += (int32_t)q[32 * j + l] * x[32 * j + l];
                const float sdx = (d * (float)sc[j]) * dxr[j];
                acc[r][j] = fmaf(sdx, (float)isum, acc[r][j]);
                accm[r][j] = fmaf(dmin * (float)m[j], xsr[j], accm[r][j]);
            }
        }
    }
    for (int r = 0; r < nx; r++) out[r] = hsum8(acc[r]) - hsum8(accm[r]);
}

static void q4k_rows_c(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, int n, int nx,
                       float *out) {
    q45_rows_c(row, qx, dx, xs, n, nx, out, 0);
}
static void q5k_rows_c(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, int n, int nx,
                       float *out) {
    q45_rows_c(row, qx, dx, xs, n, nx, out, 1);
}

static void q6k_rows_c(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, int n, int nx,
                       float *out) {
    const int nsb = n / FR_QK_K, nb = n / 32;
    float acc[KQ_MAXNX][8];
    uint8_t q[FR_QK_K];
    memset(acc, 0, sizeof acc);
    if (nx > KQ_MAXNX) nx = KQ_MAXNX;
    for (int s = 0; s < nsb; s++) {
        const uint8_t *blk = row + Q6K_BYTES * (size_t)s;
        const float d = fr_q_f16_to_f32(rd16(blk + 208));
        const int8_t *sc = (const int8_t *)(blk + 192);
        unpack_q6(blk, q);
        for (int r = 0; r < nx; r++) {
            const int8_t *x = qx + (size_t)r * n + (size_t)s * FR_QK_K;
            const float *dxr = dx + (size_t)r * nb + 8 * s;
            for (int b = 0; b < 8; b++) {
                int32_t isum = 0;
                for (int k = 0; k < 2; k++) {
                    int32_t sqx = 0, sx = 0;
                    for (int l = 0; l < 16; l++) {
                        const int i = 32 * b + 16 * k + l;
                        sqx += (int32_t)q[i] * x[i];
                        sx += x[i];
                    }
                    isum += (int32_t)sc[2 * b + k] * (sqx - 32 * sx);
                }
                acc[r][b] = fmaf(d * dxr[b], (float)isum, acc[r][b]);
            }
        }
    }
    for (int r = 0; r < nx; r++) out[r] = hsum8(acc[r]);
}

/* ------------------------------------------------------------------ dot products: SIMD
 * One body for AVX2 (vpmaddubsw + vpmaddwd) and AVX-512 VNNI (vpdpbusd on 256-bit vectors,
 * and 32 vector registers for the 4-row kernels): DOT32(u, s) returns 8 int32 lanes whose
 * total is sum u_i s_i over 32 unsigned x signed bytes. Q6_K needs the int16 pair sums (to
 * weight each half by its int16 scale with vpmaddwd), so its body is the same instructions
 * in both instances. NX (activation rows) and FIVE (Q5_K) are compile-time constants in each
 * instance. Measured on this project's AMD EPYC (Zen 4) machine, one core, rows of 4096, nx = 1:
 * about 6-7 ns (Q4_K), 8 ns (Q5_K), 9 ns (Q6_K) per 256 values with VNNI, 20-24 GB/s of
 * weights from cache; AVX2 about 10 % slower; the portable C code 60-110 ns. */

#define T_KQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_KQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))

#define KQ_SIMD(SFX, TARGET, DOT32)                                                                                \
    TARGET KQ_INLINE float hsum8_##SFX(__m256 v) {                                                              \
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));                          \
        t = _mm_add_ps(t, _mm_movehl_ps(t, t));                                                                 \
        t = _mm_add_ss(t, _mm_movehdup_ps(t));                                                                  \
        return _mm_cvtss_f32(t);                                                                                \
    }                                                                                                           \
    /* lanes [p0 .. p7] of a = hadd(hadd(p0,p1), hadd(p2,p3)), c = the same for p4..p7 -> isum_0..7 */            \
    TARGET KQ_INLINE __m256i isum8_##SFX(__m256i h0, __m256i h1, __m256i h2, __m256i h3) {                      \
        const __m256i a = _mm256_hadd_epi32(h0, h1), c = _mm256_hadd_epi32(h2, h3);                             \
        return _mm256_add_epi32(_mm256_permute2x128_si256(a, c, 0x20), _mm256_permute2x128_si256(a, c, 0x31));  \
    }                                                                                                           \
    /* sc_0..7 | m_0..7 as 16 bytes from the 12 scale bytes at p (unpack_scales on 32-bit lanes u0, u1, u2:  \
     * sc_0..3 = u0 & 0x3f.., sc_4..7 = (u2 & 0x0f..) | (u0 >> 2 & 0x30..), m_0..3 = u1 & 0x3f..,             \
     * m_4..7 = (u2 >> 4 & 0x0f..) | (u1 >> 2 & 0x30..)); the 16-byte load stays inside the super-block */      \
    TARGET KQ_INLINE __m128i scales16_##SFX(const uint8_t *p) {                                                 \
        const __m128i v = _mm_loadu_si128((const __m128i *)p);                                                  \
        const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */                      \
        const __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */                      \
        const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),                          \
                                         _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));       \
        const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));   \
        return _mm_or_si128(lo, hi);                                                                            \
    }                                                                                                           \
    /* bit J of each byte of qh moved to bit 4 (Q5_K's fifth bit of sub-block J) */                             \
    TARGET KQ_INLINE __m256i qh_bit_##SFX(__m256i qh, const int J) {                                            \
        const __m256i t = J <= 4 ? _mm256_slli_epi16(qh, 4 - J) : _mm256_srli_epi16(qh, J - 4);                 \
        return _mm256_and_si256(t, _mm256_set1_epi8(16));                                                       \
    }                                                                                                           \
    TARGET KQ_INLINE void q45_##SFX##_n(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs, \
                                        int n, const int NX, const int FIVE, float *out) {                      \
        const int nsb = n / FR_QK_K, nb = n / 32;                                                               \
        const size_t bb = FIVE ? Q5K_BYTES : Q4K_BYTES;                                                         \
        const __m256i m4 = _mm256_set1_epi8(15);                                                                \
        __m256 acc[KQ_MAXNX], accm[KQ_MAXNX];                                                                   \
        for (int r = 0; r < NX; r++) acc[r] = accm[r] = _mm256_setzero_ps();                                    \
        for (int s = 0; s < nsb; s++) {                                                                         \
            const uint8_t *blk = row + bb * (size_t)s;                                                          \
            const __m128i sm = scales16_##SFX(blk + 4);                                                         \
            const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(rd16(blk))),                              \
                                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)));                     \
            const __m256 dmm = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(rd16(blk + 2))),                          \
                                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8))));  \
            const uint8_t *qs = blk + (FIVE ? 48 : 16);                                                         \
            const __m256i qh = FIVE ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256(); \
            const int8_t *x = qx + (size_t)s * FR_QK_K;                                                         \
            __m256i h[KQ_MAXNX][4];                                                                             \
            _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++) {                                               \
                const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));                           \
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);       \
                if (FIVE) {                                                                                     \
                    lo = _mm256_or_si256(lo, qh_bit_##SFX(qh, 2 * g));                                          \
                    hi = _mm256_or_si256(hi, qh_bit_##SFX(qh, 2 * g + 1));                                      \
                }                                                                                               \
                for (int r = 0; r < NX; r++) {                                                                  \
                    const int8_t *xr = x + (size_t)r * n + 64 * g;                                              \
                    h[r][g] = _mm256_hadd_epi32(DOT32(lo, _mm256_loadu_si256((const __m256i *)xr)),             \
                                                DOT32(hi, _mm256_loadu_si256((const __m256i *)(xr + 32))));     \
                }                                                                                               \
            }                                                                                                   \
            for (int r = 0; r < NX; r++) {                                                                      \
                const size_t o = (size_t)r * nb + 8 * (size_t)s;                                                \
                const __m256i is = isum8_##SFX(h[r][0], h[r][1], h[r][2], h[r][3]);                             \
                const __m256 sdx = _mm256_mul_ps(dsc, _mm256_loadu_ps(dx + o));                                 \
                acc[r] = _mm256_fmadd_ps(sdx, _mm256_cvtepi32_ps(is), acc[r]);                                  \
                accm[r] = _mm256_fmadd_ps(dmm, _mm256_loadu_ps(xs + o), accm[r]);                               \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < NX; r++) out[r] = hsum8_##SFX(acc[r]) - hsum8_##SFX(accm[r]);                       \
    }                                                                                                           \
    TARGET KQ_INLINE void q6_##SFX##_n(const uint8_t *row, const int8_t *qx, const float *dx, int n, const int NX, \
                                       float *out) {                                                            \
        const int nsb = n / FR_QK_K, nb = n / 32;                                                               \
        const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);      \
        /* int16 scale pairs of block 4h + g: low 128-bit lane sc_{8h+2g}, high lane sc_{8h+2g+1} */             \
        const __m256i ctl[4] = {                                                                                \
            _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, \
                             3, 2, 3),                                                                          \
            _mm256_setr_epi8(4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, \
                             7, 6, 7),                                                                          \
            _mm256_setr_epi8(8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10,    \
                             11, 10, 11, 10, 11, 10, 11),                                                       \
            _mm256_setr_epi8(12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 14, 15, 14, 15, 14,    \
                             15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15)};                                      \
        __m256 acc[KQ_MAXNX];                                                                                   \
        for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();                                              \
        for (int s = 0; s < nsb; s++) {                                                                         \
            const uint8_t *blk = row + Q6K_BYTES * (size_t)s;                                                   \
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));           \
            const int8_t *x = qx + (size_t)s * FR_QK_K;                                                         \
            __m256i h[KQ_MAXNX][4];                                                                             \
            _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; hf++) {                                            \
                const __m256i L0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * hf));                        \
                const __m256i L1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * hf + 32));                   \
                const __m256i H = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * hf));                   \
                const __m256i S = hf ? _mm256_permute2x128_si256(sc16, sc16, 0x11)                              \
                                     : _mm256_permute2x128_si256(sc16, sc16, 0x00);                             \
                const __m256i w[4] = {                                                                          \
                    _mm256_or_si256(_mm256_and_si256(L0, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)), \
                    _mm256_or_si256(_mm256_and_si256(L1, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)), \
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), m4), _mm256_and_si256(H, m30)), \
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), m4),                             \
                                    _mm256_and_si256(_mm256_srli_epi16(H, 2), m30))};                           \
                _Pragma("GCC unroll 2") for (int gp = 0; gp < 2; gp++) {                                        \
                    const __m256i S0 = _mm256_shuffle_epi8(S, ctl[2 * gp]);                                     \
                    const __m256i S1 = _mm256_shuffle_epi8(S, ctl[2 * gp + 1]);                                 \
                    for (int r = 0; r < NX; r++) {                                                              \
                        const int8_t *xr = x + (size_t)r * n + 128 * hf + 64 * gp;                              \
                        const __m256i x0 = _mm256_loadu_si256((const __m256i *)xr);                             \
                        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xr + 32));                      \
                        const __m256i p0 = _mm256_madd_epi16(                                                   \
                            _mm256_sub_epi16(_mm256_maddubs_epi16(w[2 * gp], x0), _mm256_maddubs_epi16(k32, x0)), S0); \
                        const __m256i p1 = _mm256_madd_epi16(                                                   \
                            _mm256_sub_epi16(_mm256_maddubs_epi16(w[2 * gp + 1], x1), _mm256_maddubs_epi16(k32, x1)), \
                            S1);                                                                                \
                        h[r][2 * hf + gp] = _mm256_hadd_epi32(p0, p1);                                          \
                    }                                                                                           \
                }                                                                                               \
            }                                                                                                   \
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(rd16(blk + 208)));                                        \
            for (int r = 0; r < NX; r++) {                                                                      \
                const __m256i is = isum8_##SFX(h[r][0], h[r][1], h[r][2], h[r][3]);                             \
                const __m256 ddx = _mm256_mul_ps(d, _mm256_loadu_ps(dx + (size_t)r * nb + 8 * (size_t)s));      \
                acc[r] = _mm256_fmadd_ps(ddx, _mm256_cvtepi32_ps(is), acc[r]);                                  \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < NX; r++) out[r] = hsum8_##SFX(acc[r]);                                              \
    }                                                                                                           \
    TARGET static void q4k_rows_##SFX(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs,   \
                                      int n, int nx, float *out) {                                              \
        switch (nx) {                                                                                           \
        case 1: q45_##SFX##_n(row, qx, dx, xs, n, 1, 0, out); break;                                            \
        case 2: q45_##SFX##_n(row, qx, dx, xs, n, 2, 0, out); break;                                            \
        case 3: q45_##SFX##_n(row, qx, dx, xs, n, 3, 0, out); break;                                            \
        default: q45_##SFX##_n(row, qx, dx, xs, n, 4, 0, out); break;                                           \
        }                                                                                                       \
    }                                                                                                           \
    TARGET static void q5k_rows_##SFX(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs,   \
                                      int n, int nx, float *out) {                                              \
        switch (nx) {                                                                                           \
        case 1: q45_##SFX##_n(row, qx, dx, xs, n, 1, 1, out); break;                                            \
        case 2: q45_##SFX##_n(row, qx, dx, xs, n, 2, 1, out); break;                                            \
        case 3: q45_##SFX##_n(row, qx, dx, xs, n, 3, 1, out); break;                                            \
        default: q45_##SFX##_n(row, qx, dx, xs, n, 4, 1, out); break;                                           \
        }                                                                                                       \
    }                                                                                                           \
    TARGET static void q6k_rows_##SFX(const uint8_t *row, const int8_t *qx, const float *dx, const float *xs,   \
                                      int n, int nx, float *out) {                                              \
        switch (nx) {                                                                                           \
        case 1: q6_##SFX##_n(row, qx, dx, n, 1, out); break;                                                    \
        case 2: q6_##SFX##_n(row, qx, dx, n, 2, out); break;                                                    \
        case 3: q6_##SFX##_n(row, qx, dx, n, 3, out); break;                                                    \
        default: q6_##SFX##_n(row, qx, dx, n, 4, out); break;                                                   \
        }                                                                                                       \
    }

T_KQ_AVX2 KQ_INLINE __m256i kq_dot32_avx2(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
KQ_SIMD(avx2, T_KQ_AVX2, kq_dot32_avx2)

T_KQ_VNNI KQ_INLINE __m256i kq_dot32_vnni(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}
KQ_SIMD(vnni, T_KQ_VNNI, kq_dot32_vnni)

/* ------------------------------------------------------------------ dispatch */

static kq_rows_fn pick_rows(fr_kq_type t) {
    static const kq_rows_fn table[3][3] = {
        {q4k_rows_c, q5k_rows_c, q6k_rows_c},
        {q4k_rows_avx2, q5k_rows_avx2, q6k_rows_avx2},
        {q4k_rows_vnni, q5k_rows_vnni, q6k_rows_vnni},
    };
    /* -1: not yet probed; the probe is idempotent, so a race only repeats it */
    static int have_vnni = -1, have_f16c = -1;
    if ((unsigned)t > FR_KQ_Q6_K) return NULL;
    int v = __atomic_load_n(&have_vnni, __ATOMIC_RELAXED), f = __atomic_load_n(&have_f16c, __ATOMIC_RELAXED);
    if (v < 0 || f < 0) {
        /* cpuid rather than __builtin_cpu_supports, which clang rejects for "f16c" (the fuzz
         * build compiles this file with clang); the OS's AVX-512 state is fr_cpu_isa()'s check */
        unsigned a, b, c, d;
        f = __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1);                  /* F16C */
        v = f && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((b >> 30) & 1) &&  /* AVX512BW */
            ((b >> 31) & 1) && ((c >> 11) & 1);                                /* AVX512VL, AVX512_VNNI */
        __atomic_store_n(&have_f16c, f, __ATOMIC_RELAXED);
        __atomic_store_n(&have_vnni, v, __ATOMIC_RELAXED);
    }
    const int isa = fr_cpu_isa();
    int lvl = 0;
    if (isa >= FR_ISA_AVX512 && v) lvl = 2;
    else if (isa >= FR_ISA_AVX2 && f) lvl = 1;
    return table[lvl][t];
}

float fr_kq_dot_q8(fr_kq_type t, const void *row, const int8_t *qx, const float *dx, const float *xs, int n) {
    const kq_rows_fn fn = pick_rows(t);
    if (!fn || n <= 0 || n % FR_QK_K) return 0.f;
    float out;
    fn((const uint8_t *)row, qx, dx, xs, n, 1, &out);
    return out;
}

void fr_kq_dot_q8_rows(fr_kq_type t, const void *row, const int8_t *qx, const float *dx, const float *xs, int n,
                       int nx, float *out) {
    const kq_rows_fn fn = pick_rows(t);
    if (!fn || n <= 0 || n % FR_QK_K || nx < 1 || nx > KQ_MAXNX) return;
    fn((const uint8_t *)row, qx, dx, xs, n, nx, out);
}

int fr_kmix_more_bits(int layer, int n_layers) {
    const int e = n_layers / 8 > 0 ? n_layers / 8 : 1;
    return layer < e || layer >= n_layers - e || (layer - e) % 3 == 2;
}

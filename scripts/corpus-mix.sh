#!/usr/bin/env bash
# corpus-mix.sh — write the large default corpus: ~135 MB of English text and code, all from
# Debian packages, one JSONL document ({"text": ...}) per line, documents shuffled:
#   dictionaries  GCIDE (dict-gcide), WordNet (dict-wn), FOLDOC (dict-foldoc), Jargon File
#                 (dict-jargon), Devil's Dictionary (dict-devil): consecutive entries grouped
#                 into documents of about 4 KB
#   fortunes      fortunes, fortunes-min: consecutive fortunes of one file, grouped to ~4 KB
#   kjv           King James Bible, one chapter per document (scripts/corpus-kjv.sh)
#   manual pages  manpages, manpages-dev rendered to text by man (80 columns, ragged right)
#   docs          Python's reStructuredText sources (python3.X-doc), Perl's pod (perl-doc)
#   code          Python's standard library (libpython3.X-minimal/-stdlib) *.py, C headers
#                 of libc6-dev and linux-libc-dev *.h: one document per file
#
#   scripts/corpus-mix.sh [OUT_DIR]      default OUT_DIR: data/mix  -> OUT_DIR/mix.jsonl
#
# Writes OUT_DIR/SOURCES.txt too: package versions, documents and bytes per source, sha256.
# Deterministic: the same package versions give byte-identical output (sorted file lists,
# exact duplicates dropped, documents ordered by the SHA-256 of their text). Idempotent: an
# existing complete file is kept. A missing package is an error (scripts/install-deps.sh).
set -euo pipefail
export LC_ALL=C
out_dir=${1:-data/mix}
case "$out_dir" in -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
out="$out_dir/mix.jsonl"
if [ -s "$out" ]; then
    echo "corpus-mix: $out already present"
    [ -f "$out_dir/SOURCES.txt" ] && sed -n '/^source /,$p' "$out_dir/SOURCES.txt"
    exit 0
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v python3 >/dev/null 2>&1 || { echo "corpus-mix: python3 is missing; run scripts/install-deps.sh" >&2; exit 1; }
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# Every package whose files are read (plus the tools that render them); versions go to SOURCES.txt.
packages=(dict-gcide dict-wn dict-foldoc dict-jargon dict-devil fortunes fortunes-min
          bible-kjv-text bible-kjv "libpython$pyver-minimal" "libpython$pyver-stdlib"
          "python$pyver-doc" perl-doc manpages manpages-dev libc6-dev linux-libc-dev
          man-db groff-base)
missing=()
for p in "${packages[@]}"; do
    st=$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -ne 0 ]; then
    echo "corpus-mix: missing Debian packages: ${missing[*]}" >&2
    echo "corpus-mix: run scripts/install-deps.sh (python$pyver-doc comes with python3-doc); no corpus written" >&2
    exit 1
fi

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.mix-work.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$here/corpus-kjv.sh" "$work/kjv" >&2
dpkg-query -W -f '${Package} ${Version}\n' "${packages[@]}" | sort > "$work/versions.txt"

python3 - "$work" "$pyver" <<'PY'
import gzip, hashlib, json, os, re, subprocess, sys

work, pyver = sys.argv[1], sys.argv[2]
GROUP = 4096                       # bytes: target size of grouped dictionary / fortune documents

def die(msg):
    print("corpus-mix: " + msg, file=sys.stderr)
    sys.exit(1)

def decode(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:     # a handful of legacy files (e.g. 3 cp1252 bytes in GCIDE)
        try:
            return b.decode("cp1252")
        except UnicodeDecodeError:
            return b.decode("latin-1")

OVERSTRIKE = re.compile(".\x08")
def clean(s):
    # no NUL (cJSON cuts strings there), no overstrike (x BS x = bold, _ BS x = underline)
    s = s.replace("\0", "")
    while "\x08" in s:
        t = OVERSTRIKE.sub("", s)
        if t == s:
            s = s.replace("\x08", "")
            break
        s = t
    return s

def package_files(pkgs, pred):
    files = set()
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-L", p], capture_output=True, text=True)
        if r.returncode != 0:
            die("dpkg-query -L %s failed: %s" % (p, r.stderr.strip()))
        for f in r.stdout.splitlines():
            if pred(f) and os.path.isfile(f) and not os.path.islink(f):
                files.add(f)
    if not files:
        die("no files found in %s" % " ".join(pkgs))
    return sorted(files)

def read(path):
    with open(path, "rb") as fh:
        return fh.read()

def grouped(pieces):
    docs, cur, size = [], [], 0
    for p in pieces:
        cur.append(p)
        size += len(p.encode("utf-8"))
        if size >= GROUP:
            docs.append("\n\n".join(cur)); cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs

B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
def b64num(s):
    v = 0
    for c in s:
        v = v * 64 + B64[c]
    return v

def dictd(name):
    """Entries of a dictd database in file order (offsets from the index; 00-database-* skipped)."""
    base = "/usr/share/dictd/" + name
    data = gzip.open(base + ".dict.dz").read()           # dictzip is gzip-compatible
    ranges = set()
    for line in read(base + ".index").decode("utf-8", "replace").splitlines():
        f = line.split("\t")
        if len(f) < 3 or f[0].startswith("00-") or f[0].startswith("00database"):
            continue
        ranges.add((b64num(f[1]), b64num(f[2])))
    entries = []
    for off, ln in sorted(ranges):
        t = clean(decode(data[off:off + ln])).strip("\n")
        if t.strip():
            entries.append(t)
    if len(entries) < 100:
        die("dictd database %s: only %d entries" % (name, len(entries)))
    return grouped(entries)

def fortunes():
    docs = []
    for f in package_files(["fortunes", "fortunes-min"],
                           lambda f: f.startswith("/usr/share/games/fortunes/") and "." not in os.path.basename(f)):
        items, cur = [], []
        for line in clean(decode(read(f))).split("\n"):
            if line == "%":
                if "".join(cur).strip(): items.append("\n".join(cur).strip("\n"))
                cur = []
            else:
                cur.append(line)
        if "".join(cur).strip(): items.append("\n".join(cur).strip("\n"))
        docs += grouped(items)
    return docs

def kjv():
    docs = []
    with open(os.path.join(work, "kjv", "kjv.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                docs.append(json.loads(line)["text"])
    return docs

def whole_files(files):
    return [clean(decode(read(f))) for f in files]

def man_pages():
    files = package_files(["manpages", "manpages-dev"],
                          lambda f: re.match(r"^/usr/share/man/man[0-9][^/]*/[^/]+$", f) is not None)
    env = dict(os.environ, LC_ALL="C", MANWIDTH="80", MAN_KEEP_FORMATTING="", MANPAGER="cat", PAGER="cat")
    docs = []
    for f in files:
        src = read(f)
        if f.endswith(".gz"):
            src = gzip.decompress(src)
        if re.match(rb"^\.so \S+\s*$", src.strip()):       # a one-line link to another page
            continue
        r = subprocess.run(["man", "--nj", "--nh", "-l", "-P", "cat", f], env=env,
                           capture_output=True)
        if r.returncode != 0 or not r.stdout.strip():
            die("man -l %s failed (%d): %s" % (f, r.returncode, r.stderr.decode(errors="replace").strip()))
        docs.append(clean(decode(r.stdout)))
    return docs

sources = [
    ("gcide", lambda: dictd("gcide")),
    ("wordnet", lambda: dictd("wn")),
    ("foldoc", lambda: dictd("foldoc")),
    ("jargon", lambda: dictd("jargon")),
    ("devil", lambda: dictd("devil")),
    ("fortunes", fortunes),
    ("kjv", kjv),
    ("man-pages", man_pages),
    ("python-docs", lambda: whole_files(package_files(
        ["python%s-doc" % pyver],
        lambda f: f.startswith("/usr/share/doc/python%s/html/_sources/" % pyver) and f.endswith(".txt")))),
    ("perl-docs", lambda: whole_files(package_files(
        ["perl-doc"], lambda f: f.endswith(".pod") and os.path.basename(f) != "perltoc.pod"))),
    ("python-stdlib", lambda: whole_files(package_files(
        ["libpython%s-minimal" % pyver, "libpython%s-stdlib" % pyver], lambda f: f.endswith(".py")))),
    ("c-headers", lambda: whole_files(package_files(
        ["libc6-dev", "linux-libc-dev"], lambda f: f.startswith("/usr/include/") and f.endswith(".h")))),
]

seen = set()
allDocs = []                      # (sha256 of text, text)
stats = []
dups = 0
for name, fn in sources:
    n = nbytes = 0
    for t in fn():
        if not t.strip():
            continue
        b = t.encode("utf-8")
        h = hashlib.sha256(b).digest()
        if h in seen:
            dups += 1
            continue
        seen.add(h)
        allDocs.append((h, t))
        n += 1
        nbytes += len(b)
    if n == 0:
        die("source %s gave no documents" % name)
    stats.append((name, n, nbytes))
    print("corpus-mix: %-13s %7d documents %11d bytes" % (name, n, nbytes), file=sys.stderr, flush=True)

allDocs.sort(key=lambda d: d[0])  # deterministic shuffle: order by SHA-256 of the text
h_out = hashlib.sha256()
with open(os.path.join(work, "mix.jsonl"), "w", encoding="utf-8", newline="\n") as fh:
    for _, t in allDocs:
        line = json.dumps({"text": t}, ensure_ascii=False) + "\n"
        h_out.update(line.encode("utf-8"))
        fh.write(line)

total_docs = sum(s[1] for s in stats)
total_bytes = sum(s[2] for s in stats)
table = ["%-14s %9s %12s" % ("source", "documents", "bytes")]
table += ["%-14s %9d %12d" % s for s in stats]
table += ["%-14s %9d %12d" % ("total", total_docs, total_bytes)]
with open(os.path.join(work, "versions.txt")) as fh:
    versions = fh.read()
with open(os.path.join(work, "SOURCES.txt"), "w") as fh:
    fh.write("mix.jsonl: written by scripts/corpus-mix.sh; one JSON object {\"text\": ...} per line,\n"
             "documents ordered by the SHA-256 of their text; exact duplicates dropped (%d).\n"
             "bytes = UTF-8 bytes of the document texts (before JSON escaping).\n"
             "sha256(mix.jsonl) %s\n\n"
             "Debian packages (name version):\n%s\n" % (dups, h_out.hexdigest(), versions))
    fh.write("\n".join(table) + "\n")
print("\n".join(table))
print("corpus-mix: %d exact duplicates dropped; sha256 %s" % (dups, h_out.hexdigest()))
PY

n=$(wc -l < "$work/mix.jsonl")
if [ "$n" -lt 20000 ]; then echo "corpus-mix: expected ~22800 documents, got $n" >&2; exit 1; fi
mv "$work/SOURCES.txt" "$out_dir/SOURCES.txt"
mv "$work/mix.jsonl" "$out"
echo "corpus-mix: wrote $out ($n documents, $(wc -c < "$out") bytes) and $out_dir/SOURCES.txt"

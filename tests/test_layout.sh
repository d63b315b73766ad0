#!/usr/bin/env bash
# test_layout.sh — the README's layout table and the source tree agree: every folder of src/
# has its row, every .c / .cu file of a folder is named in that row, and no source file outside
# the SIMD kernels grows past 1,200 lines (split it along its concerns instead).
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
for dir in "$root"/src/*/; do
    name="src/$(basename "$dir")/"
    row=$(grep -F "| \`$name\` |" "$root/README.md" || true)
    if [ -z "$row" ]; then bad "README.md has no layout row for $name"; continue; fi
    ok
    for f in "$dir"*.c "$dir"*.cu; do
        [ -e "$f" ] || continue
        b=$(basename "$f")
        if printf '%s' "$row" | grep -qF "\`$b\`"; then ok; else bad "README.md's row for $name does not name $b"; fi
    done
done
# rows that name a folder that does not exist
while IFS= read -r d; do
    if [ -d "$root/$d" ]; then ok; else bad "README.md lists $d, which does not exist"; fi
done < <(grep -oE '^\| `src/[a-z_]+/` \|' "$root/README.md" | sed -E 's/^\| `([^`]*)` \|/\1/')
# size: the SIMD kernel files may be long (one variant per instruction set)
simd="cpu/ops_cpu_simd.c cpu/ops_cpu_gemm.c cpu/qmatmul.c"
while IFS= read -r f; do
    rel=${f#"$root/src/"}
    case " $simd " in *" $rel "*) continue ;; esac
    n=$(wc -l <"$f")
    if [ "$n" -le 1200 ]; then ok; else bad "$rel has $n lines (over 1,200: split it along its concerns)"; fi
done < <(find "$root/src" "$root/cli" -name '*.[ch]')
echo "layout: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

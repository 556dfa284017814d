#!/usr/bin/env bash
# The release artefacts, one command:
#
#   scripts/build_release.sh [out-dir]      (default: dist/)
#
# builds the abi3 wheel for manylinux2014 x86_64 (glibc 2.17 and newer; Python 3.9 and newer, one
# wheel for all) with zig as the linker, so that the wheel does not depend on this machine's newer
# glibc, and the sdist; checks the wheel's platform tag and the symbols it needs (auditwheel) and
# the metadata (twine), and prints the files, their sizes and their tags. CPU features (AVX2, FMA)
# are detected at run time, so the wheel imports and runs on any x86-64 CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
python3 -m pip install --quiet --upgrade "maturin>=1.9,<2" "ziglang>=0.13,<0.14" "auditwheel>=6" "twine>=5"
rm -rf "$out"
mkdir -p "$out"
maturin build --release --zig --compatibility manylinux2014 --out "$out"
maturin sdist --out "$out"
wheel=$(ls "$out"/*.whl)
echo "== auditwheel show =="
report=$(auditwheel show "$wheel")
echo "$report"
# auditwheel names the most compatible policy the wheel satisfies; anything newer than
# manylinux2014 (glibc 2.17) means a symbol from a newer glibc crept in.
grep -q '"manylinux_2_17_x86_64"' <<<"$report" || {
    echo "build_release: the wheel is not manylinux2014 (glibc 2.17) compatible" >&2
    exit 1
}
echo "== twine check =="
python3 -m twine check --strict "$out"/*
echo "== artefacts =="
for f in "$out"/*; do
    printf '%10d  %s\n' "$(stat -c %s "$f")" "$(basename "$f")"
done
python3 - "$wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    wheel_meta = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
    tags = [l.split(": ", 1)[1] for l in z.read(wheel_meta).decode().splitlines() if l.startswith("Tag: ")]
    names = z.namelist()
print("wheel tags:", ", ".join(tags))
for needed in ("sgpo_rs/py.typed", "sgpo_rs/_core.pyi"):
    if needed not in names:
        sys.exit(f"build_release: {needed} is missing from the wheel")
if not any(n.startswith("sgpo_rs-") and "/licenses/LICENSE" in n for n in names):
    sys.exit("build_release: the license file is missing from the wheel")
print("wheel holds py.typed, the .pyi stubs and the license")
PY

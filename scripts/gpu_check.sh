#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU, Python and torch but no Rust:
#
#   scripts/gpu_check.sh [path/to/sgpo_rs-*.whl]
#
# Installs the abi3 wheel built on the CPU machine (`maturin build --release`, default: the newest
# in target/wheels or dist/) into a private folder, plus any extra wheels carried in .whl/
# (e.g. liger-kernel for the comparison), then runs the CUDA test suite (every kernel against
# the CPU path and float64 references, fresh random inputs each run), the benchmarks and the
# loss profile (benches/cuda_profile.py), and prints one table. Logs and JSON go to $OUT (or
# ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$out"
wheel="${1:-$(ls -t target/wheels/sgpo_rs-*.whl dist/sgpo_rs-*.whl 2>/dev/null | head -n 1)}"
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
    echo "no sgpo_rs wheel: build one with 'maturin build --release' and pass its path" >&2
    exit 2
fi
site=/tmp/sgpo_rs_site
rm -rf "$site"
python3 -m pip install --quiet --no-deps --no-index --target "$site" "$wheel" || exit 3
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install --quiet --no-deps --no-index --target "$site" .whl/*.whl || true
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/info.txt"
import json, sgpo_rs, sgpo_rs._cuda as c
print("sgpo_rs from", sgpo_rs.__file__)
print(json.dumps(c.availability(), indent=1))
PY
status=0
python3 -m pytest tests/python/test_cuda.py -q -p no:cacheprovider -rfE 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python3 benches/cuda_compare.py --out "$out/bench.json" ${GPU_CHECK_QUICK:+--quick} 2>&1 | tee "$out/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python3 benches/cuda_profile.py 2>&1 | tee "$out/profile.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== summary =="
tail -n 1 "$out/tests.txt"
grep -E "copy|%" "$out/bench.txt"
exit $status

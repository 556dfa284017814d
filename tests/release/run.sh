#!/usr/bin/env bash
# The release test: build the release artefacts (scripts/build_release.sh), then install them the
# way users do, into fresh virtual environments, and run tests/release/smoke.py, `sgpo-rs info` and
# a short `sgpo-rs demo` in each:
#
# - the wheel, with no Rust toolchain on PATH, on Python 3.9, 3.11 and 3.13 (pyenv's), each with
#   numpy 1.x where a numpy 1.x exists for that Python and with numpy 2.x;
# - the sdist, built from source with Rust, on Python 3.11.
#
#   tests/release/run.sh [work-dir]      (default: a fresh temporary folder)
#
# A Python the machine does not have is skipped with a message; everything else failing fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
bash scripts/build_release.sh "$work/dist"
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)

python_for() {  # the interpreter for a minor version: pyenv's, else one on PATH
    local found
    found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python3 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ]; then found=$(command -v "python$1" || true); fi
    echo "$found"
}

check_env() {  # venv, label
    local venv=$1 label=$2
    echo "== $label: smoke test =="
    (cd "$work" && "$venv/bin/python" "$root/tests/release/smoke.py")
    "$venv/bin/sgpo-rs" info
    "$venv/bin/sgpo-rs" demo --no-plot --quiet --seeds 2 --iterations 5 --problems 8 --batch-problems 4 | tail -n 1
}

# Nothing of Rust's on PATH for the wheel installs: /usr/bin and /bin only (plus the venv).
bare_path="/usr/bin:/bin"
for minor in 3.9 3.11 3.13; do
    python=$(python_for "$minor")
    if [ -z "$python" ]; then
        echo "== Python $minor: not on this machine, skipped =="
        continue
    fi
    numpys=("numpy>=2")
    [ "$minor" != "3.13" ] && numpys=("numpy<2" "numpy>=2")  # numpy 1.x has no wheels for 3.13
    for numpy in "${numpys[@]}"; do
        venv="$work/venv-$minor-np$([[ $numpy == *"<2"* ]] && echo 1 || echo 2)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        PATH="$venv/bin:$bare_path" "$venv/bin/python" -m pip install --quiet --upgrade pip
        PATH="$venv/bin:$bare_path" "$venv/bin/python" -m pip install --quiet --only-binary=:all: "$numpy" "$wheel"
        if PATH="$venv/bin:$bare_path" command -v cargo >/dev/null; then
            echo "release test: cargo is on the bare PATH; the wheel test would not prove anything" >&2
            exit 1
        fi
        PATH="$venv/bin:$bare_path" check_env "$venv" "wheel, Python $minor, $numpy"
    done
done

python=$(python_for 3.11)
venv="$work/venv-sdist"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$sdist"
check_env "$venv" "sdist built from source, Python 3.11"
# The optional extras: each installs with the wheel and its modules import. openai and demo in
# fresh venvs; the torch-based ones in venvs that see the machine's site-packages (a fresh torch is
# about 6 GB per venv), so pip resolves the extra against what is installed and only checks it.
extra_check() {  # extra, system-site (0/1), python code
    local extra=$1 system=$2 code=$3 venv="$work/venv-extra-$1"
    rm -rf "$venv"
    if [ "$system" = 1 ]; then "$python" -m venv --system-site-packages "$venv"; else "$python" -m venv "$venv"; fi
    "$venv/bin/python" -m pip install --quiet "$wheel[$extra]"
    (cd "$work" && "$venv/bin/python" -c "$code")
    echo "== extra [$extra]: installs and imports =="
}
extra_check openai 0 "import openai; from sgpo_rs.judge import OpenAIJudge"
extra_check demo 0 "import matplotlib; from sgpo_rs import demo"
if "$python" -c "import torch" 2>/dev/null; then
    extra_check torch 1 "import sgpo_rs.torch"
    extra_check trl 1 "import sgpo_rs.trl"
    extra_check hf 1 "from sgpo_rs.judge.hf import HFJudge"
    extra_check cuda 1 "import sgpo_rs.torch, sgpo_rs._cuda as c; assert c.availability()['nvrtc'], c.availability()"
else
    echo "== extras [torch], [trl], [hf], [cuda]: skipped, torch is not installed in $python =="
fi
echo "== extra [verl]: skipped: verl's own dependency pins do not install here; the verl tests install verl 0.9.1 with --no-deps and the verl-test extra =="
echo "release test passed: $(basename "$wheel") and $(basename "$sdist")"

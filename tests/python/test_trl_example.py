"""examples/trl_sgpo.py runs offline on CPU (its own tiny model) and prints the SGPO metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_sgpo.py"


def test_example_runs_one_step(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = [sys.executable, str(EXAMPLE), "--max-steps", "1", "--output-dir", str(tmp_path / "out")]
    argv += ["--judge-cache", str(tmp_path / "verdicts.sqlite"), "--use-sgpo-loss"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert "sgpo/diversified_frac" in lines[header]
    step, reward, all_negative, diversified, missing, credit = lines[header + 1].split()
    assert step == "1"
    assert 0.0 <= float(diversified) <= float(all_negative) <= 1.0
    assert (tmp_path / "verdicts.sqlite").exists()

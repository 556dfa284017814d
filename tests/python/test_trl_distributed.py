"""SGPOTrainer under ``torchrun --nproc_per_node 2`` (CPU, gloo): the SGPO rewards of a global
batch whose middle group straddles the two processes equal the single-process ones, every row
that needs a verdict is judged exactly once (by the process that holds it), and a real training
step runs. The job itself is trl_distributed_job.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

JOB = Path(__file__).with_name("trl_distributed_job.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, timeout):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.fixture(scope="module")
def results(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, str(JOB), tiny_lm, str(out)], timeout=180)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    run([*torchrun, str(JOB), tiny_lm, str(out)], timeout=300)
    return out


def load(folder, name):
    return json.loads((folder / name).read_text())


def test_two_processes_give_the_single_process_rewards(results):
    one = load(results, "world1-rewards.json")
    two = load(results, "world2-rewards.json")
    assert two["sgpo_rewards"] == one["sgpo_rewards"]
    assert two["diversified"] == one["diversified"]
    assert two["stats"] == one["stats"]
    # Groups 0 and 1 (the latter straddling the processes) are all wrong and were diversified;
    # the rewards TRL normalises are the SGPO rewards.
    assert one["diversified"] == [True] * 8 + [False] * 4
    assert len(set(one["sgpo_rewards"][:4])) > 1 and len(set(one["sgpo_rewards"][4:8])) > 1
    for rewards in (one, two):
        assert rewards["trl_weighted_rewards"] == pytest.approx(rewards["sgpo_rewards"], abs=1e-6)


def test_each_row_is_judged_once_by_its_own_process(results):
    single = load(results, "world1-rank0-judged.json")
    assert single["calls"] == [list(range(8))]  # the 8 rows of the two all-wrong groups
    ranks = [load(results, f"world2-rank{r}-judged.json") for r in (0, 1)]
    assert ranks[0]["calls"] == [[0, 1, 2, 3, 4, 5]]
    assert ranks[1]["calls"] == [[6, 7]]
    assert [r["judged_rows"] for r in ranks] == [6, 2]


def test_a_training_step_runs_on_two_processes(results):
    logs = load(results, "world2-train.json")
    assert len(logs) == 1
    assert 0 <= logs[0]["sgpo/diversified_frac"] <= logs[0]["sgpo/all_negative_frac"] <= 1
    assert logs[0]["sgpo/judge_missing_frac"] >= 0

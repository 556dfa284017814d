"""examples/experiment_arith.py --smoke: the whole SGPO vs GRPO study in miniature (a tiny warm-up,
three RL steps per arm, one seed), checked for the structure and sanity of its JSON and report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sgpo_rs

pytest.importorskip("trl")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "experiment_arith.py"
ARMS = ["grpo", "sgpo_prefix", "sgpo_logistic", "sgpo_shuffled", "sgpo_noisy"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    # The script runs in fresh processes: give them the sgpo_rs this session imported (installed,
    # or a source tree with its built extension), never a source tree without the extension.
    paths = [str(Path(sgpo_rs.__file__).resolve().parents[1])]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    argv = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--no-progress"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    with open(out / "experiment_arith_smoke.json") as f:
        return out, json.load(f)


def test_every_arm_ran_with_its_steps_and_evaluations(smoke):
    _, results = smoke
    cfg = results["config"]
    assert results["smoke"] is True
    assert sorted(r["arm"] for r in results["runs"]) == sorted(ARMS)
    for run in results["runs"]:
        assert [s["step"] for s in run["steps"]] == list(range(1, cfg["steps"] + 1))
        assert [e["step"] for e in run["evals"]] == [0, cfg["steps"]]
        for e in run["evals"]:
            for key in ("greedy", "pass_at_k", "sample_acc"):
                assert 0.0 <= e[key] <= 1.0
            assert e["pass_at_k"] >= e["sample_acc"] - 1e-9  # pass@k is at least one sample's rate
            assert set(e["by_steps"]) == {"2", "3", "4", "5"}
        for s in run["steps"]:
            assert 0.0 <= s["all_negative_frac"] <= 1.0 and 0.0 <= s["accuracy"] <= 1.0
            assert s["wall_s"] > 0 and math.isfinite(s["loss"]) and s["kl"] >= 0


def test_all_runs_start_from_the_same_checkpoint(smoke):
    _, results = smoke
    starts = {json.dumps(r["evals"][0]["by_steps"], sort_keys=True) for r in results["runs"]}
    assert len({r["evals"][0]["greedy"] for r in results["runs"]}) == 1 and len(starts) == 1


def test_sgpo_arms_judge_and_log_their_metrics(smoke):
    _, results = smoke
    group = results["config"]["num_generations"]
    for run in results["runs"]:
        if run["arm"] == "grpo":
            assert run["judge_calls"] == 0 and all("sgpo/mean_credit" not in s for s in run["steps"])
            continue
        for s in run["steps"]:
            # SGPO's own all-negative count agrees with the one computed from the rewards.
            assert s["sgpo/all_negative_frac"] == pytest.approx(s["all_negative_frac"])
            assert 0.0 <= s["sgpo/diversified_frac"] <= s["sgpo/all_negative_frac"] + 1e-9
            assert 0.0 <= s["sgpo/mean_credit"] <= 1.0
            # Only the rows of all-wrong groups are judged, and each once.
            groups = results["config"]["prompts_per_step"]
            assert s["judged"] == round(s["all_negative_frac"] * groups) * group
        assert run["judge_calls"] >= 1


def test_report_and_plots_are_written(smoke):
    out, results = smoke
    report = (out / "EXPERIMENTS.md").read_text()
    for heading in ("## Setup", "## Headline", "### Held-out greedy accuracy", "### Reading"):
        assert heading in report
    assert "smoke run" in report
    for name in ("experiment_arith_smoke_accuracy.png", "experiment_arith_smoke_all_negative.png"):
        assert (out / name).stat().st_size > 1000
    assert results["wall_s"] > 0 and results["warmup"]["loss_last"] < results["warmup"]["loss_first"]


def test_judge_controls_keep_or_randomise_the_verdicts():
    sys.path.insert(0, str(ROOT / "examples"))
    import experiment_arith as study

    problem = "Start from 7: + 5, * 3, - 4."
    responses = [
        "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 30",
        "7 + 5 = 13\n\n13 * 3 = 39\n\n39 - 4 = 35",
        "7 + 5 = 12\n\n12 * 3 = 38\n\n38 - 4 = 34",
        "7 + 5 = 12",
    ]
    exact = [
        (v.first_error, v.num_steps) for v in study.StudyJudge("exact", 0).judge([problem] * 4, responses)
    ]
    # The early stop is scored against the problem's three operations, not its own one step.
    assert exact == [(2, 3), (0, 3), (1, 3), (0, 3)]
    shuffled = [
        (v.first_error, v.num_steps) for v in study.StudyJudge("shuffled", 3).judge([problem] * 4, responses)
    ]
    assert sorted(shuffled) == sorted(exact)
    noisy = study.StudyJudge("noisy", 0, noise=1.0).judge([problem] * 400, responses * 100)
    assert all(0 <= v.first_error < v.num_steps for v in noisy)
    assert len({v.first_error for v in noisy}) == 3

"""The `sgpo-rs demo` simulation: shapes, ranges, the plot, the CLI, and the SGPO mechanism itself."""

import subprocess
import sys

import numpy as np
import pytest
from sgpo_rs import cli, demo

TINY = dict(seeds=3, iterations=12, problems=8, batch_problems=4, group_size=4)


@pytest.fixture(scope="module")
def tiny_result():
    return demo.train(demo.DemoConfig(**TINY))


def test_result_shapes_and_ranges(tiny_result):
    s, t = TINY["seeds"], TINY["iterations"]
    assert tiny_result.accuracy.shape == (2, s, t + 1)
    for curve in (tiny_result.all_negative_frac, tiny_result.signal_frac, tiny_result.all_negative_abs_adv):
        assert curve.shape == (2, s, t)
    assert np.all((tiny_result.accuracy >= 0) & (tiny_result.accuracy <= 1))
    assert np.all((tiny_result.all_negative_frac >= 0) & (tiny_result.all_negative_frac <= 1))
    assert tiny_result.iterations_to(0.5).shape == (2, s)


def test_start_accuracy_is_exact(tiny_result):
    c = demo.DemoConfig(**TINY)
    right = np.exp(-c.difficulty) / (np.exp(-c.difficulty) + c.choices - 1)
    np.testing.assert_allclose(tiny_result.accuracy[..., 0], right**c.steps)


def test_perfect_judge_gives_all_negative_groups_advantages():
    # Hard problems: nearly every group is all-negative, so both methods see many of them.
    result = demo.train(demo.DemoConfig(**TINY, difficulty=1.0))
    grpo, sgpo = result.all_negative_abs_adv
    assert np.isfinite(grpo).any() and np.isfinite(sgpo).any()
    assert np.nanmax(grpo) == 0.0  # GRPO: equal rewards, zero advantages
    assert np.nanmean(sgpo) > 0.1  # SGPO: the judge's credit separates the responses
    assert result.signal_frac[1, :, 0].mean() > result.signal_frac[0, :, 0].mean()


def test_methods_coincide_without_all_negative_groups():
    # Easy problems never produce an all-negative group; SGPO is then exactly GRPO.
    result = demo.train(demo.DemoConfig(**TINY, difficulty=-4.0, steps=2))
    assert result.all_negative_frac.max() == 0.0
    np.testing.assert_array_equal(result.accuracy[0], result.accuracy[1])


def test_noisy_judge_is_always_wrong_at_full_noise():
    c = demo.DemoConfig(steps=4)
    rng = np.random.default_rng(0)
    truth = rng.integers(-1, c.steps, size=(1, 1, 5000))
    noise = demo.IterationNoise(
        problems=np.zeros((1, 1), dtype=np.int64),
        action_u=np.zeros((1, 1, 5000, c.steps)),
        judge_flip_u=np.zeros((1, 1, 5000)),
        judge_pick_u=rng.random((1, 1, 5000)),
    )
    noisy = demo.noisy_verdicts(truth, noise, demo.DemoConfig(steps=4, judge_noise=1.0))
    assert np.all(noisy != truth)
    assert set(np.unique(noisy)) == set(range(-1, c.steps))
    np.testing.assert_array_equal(demo.noisy_verdicts(truth, noise, c), truth)


def test_logit_gradient_matches_finite_differences():
    # The chain d log pi(a)/dz = onehot(a) - pi, checked on L = sum(g * log pi(a)).
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 1, 1, 3, 4))  # (M, S, B, K, C)
    actions = rng.integers(0, 4, size=(1, 1, 1, 5, 3))  # (M, S, B, G, K)
    grad_logp = rng.normal(size=actions.shape)

    def loss(z):
        logp = np.log(demo.softmax(z))[:, :, :, None]
        picked = np.take_along_axis(np.broadcast_to(logp, actions.shape + (4,)), actions[..., None], -1)
        return float((grad_logp * picked[..., 0]).sum())

    analytic = demo.logit_gradient(grad_logp, actions, demo.softmax(logits))
    numeric = np.zeros_like(logits)
    h = 1e-6
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = h
        numeric[index] = (loss(logits + step) - loss(logits - step)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)


def test_run_demo_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    result = demo.run_demo(demo.DemoConfig(**TINY), out=str(out), quiet=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.accuracy.shape == (2, TINY["seeds"], TINY["iterations"] + 1)
    printed = capsys.readouterr().out
    assert "iterations to 90%" in printed and "SGPO" in printed


def test_cli_demo_no_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--seeds", "2", "--iterations", "5", "--problems", "8", "--batch-problems", "4"]
    assert cli.main(argv + ["--no-plot"]) == 0
    captured = capsys.readouterr()
    assert "GRPO" in captured.out and "in this setting" in captured.out
    assert "training [" in captured.err  # the progress bar goes to stderr
    assert not (tmp_path / "sgpo_demo.png").exists()


def test_cli_rejects_bad_settings(capsys):
    assert cli.main(["demo", "--judge-noise", "1.5", "--no-plot"]) == 2
    assert "judge-noise" in capsys.readouterr().err


def test_python_dash_m_runs_the_demo(tmp_path):
    argv = ["demo", "--seeds", "2", "--iterations", "3", "--problems", "4", "--batch-problems", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "sgpo_rs", *argv, "--no-plot", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "mean accuracy over training" in done.stdout
    assert done.stderr == ""  # --quiet: no progress bar


def test_the_logistic_rule_and_the_rule_comparison(capsys):
    config = demo.DemoConfig(seeds=3, iterations=30, rule="logistic", credit_scale=1.0)
    result = demo.train(config)
    # Only SGPO's curves depend on the rule: GRPO's are the prefix run's, seed for seed.
    prefix = demo.train(demo.DemoConfig(seeds=3, iterations=30))
    np.testing.assert_array_equal(result.accuracy[0], prefix.accuracy[0])
    assert not np.array_equal(result.accuracy[1], prefix.accuracy[1])
    assert "logistic credit rule (beta 5, gamma 0.5)" in demo.settings_line(config)
    diff, half = demo.compare_rules(demo.DemoConfig(seeds=3, iterations=30), quiet=True)
    out = capsys.readouterr().out
    assert f"logistic - prefix = {diff:+.3f} +- {half:.3f}" in out
    with pytest.raises(ValueError, match="beta"):
        demo.DemoConfig(rule="logistic", beta=0.0).validate()


def test_cli_demo_compares_rules(capsys):
    assert (
        cli.main(["demo", "--no-plot", "--quiet", "--seeds", "2", "--iterations", "10", "--compare-rules"])
        == 0
    )
    assert "credit rules: SGPO mean accuracy over training" in capsys.readouterr().out
    assert cli.main(["demo", "--no-plot", "--rule", "logistic", "--beta", "-1"]) == 2

"""The credit rules (``rule="prefix" | "logistic"``, ``preset="paper"``) against the float64
reference of ``reference.py``, in numpy, TRL's config, verl's options and the CLI.

Tolerances: rewards are float32 (rtol 1e-6 against the float64 reference, as every reward test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import reference as ref
import sgpo_rs as sg
from sgpo_rs.credit import PRESETS, CreditOptions
from test_rewards import _compare, _layout, _outcomes, _verdicts


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["all_negative", "all_incorrect"])
@pytest.mark.parametrize(
    "beta, gamma",
    [(5.0, 0.5), (1e-3, 0.5), (50.0, 0.5), (1e6, 0.3), (5.0, 0.0), (5.0, 1.0), (5.0, -2.0), (3.0, 4.0)],
)
def test_logistic_rule_matches_the_float64_reference(beta, gamma, mode, seed):
    rng = np.random.default_rng([seed, int(beta * 7) % 1000, int((gamma + 3) * 10), len(mode)])
    n, kw = _layout(rng, int(rng.integers(1, 40)), (1, 2, 4, 8)[seed], ("consecutive", "str_ids")[seed % 2])
    rewards = _outcomes(rng, n, kw, nan_frac=(0.0, 0.1, 0.3, 0.05)[seed])
    first_error, num_steps = _verdicts(rng, n, p_missing=(0.0, 0.1, 0.3, 0.0)[seed])
    args = dict(
        mode=mode, credit_scale=(1.0, 0.5, 0.2, 2.0)[seed], rule="logistic", beta=beta, gamma=gamma, **kw
    )
    _compare(
        sg.sgpo_rewards(rewards, first_error, num_steps, **args),
        ref.sgpo_rewards(rewards, first_error, num_steps, **args),
    )
    # A credit array goes through the same rule.
    credit = np.where(first_error == -1, 1.0, first_error / np.maximum(num_steps, 1))
    credit[first_error == -2] = np.nan
    args_c = dict(args, credit=credit)
    _compare(sg.sgpo_rewards(rewards, **args_c), ref.sgpo_rewards(rewards, **args_c))


def test_the_paper_preset_and_explicit_options():
    rewards = np.zeros(4)
    first_error, num_steps = np.array([0, 1, 3, -1]), np.array([4, 4, 4, 4])
    c = np.array([0.0, 0.25, 0.75, 1.0])
    paper = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=4, preset="paper")
    np.testing.assert_allclose(paper.rewards, 1 / (1 + np.exp(-5 * (c - 0.5))), rtol=1e-6)
    # The credit field is the score itself, whatever the rule.
    np.testing.assert_array_equal(paper.credit, c.astype(np.float32))
    # An explicit option wins over the preset's.
    half = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=4, preset="paper", credit_scale=0.5)
    np.testing.assert_allclose(half.rewards, 0.5 / (1 + np.exp(-5 * (c - 0.5))), rtol=1e-6)
    # The default stays the prefix rule with credit_scale 0.5.
    plain = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=4)
    np.testing.assert_array_equal(plain.rewards, (0.5 * c).astype(np.float32))
    assert CreditOptions.resolve("paper") == CreditOptions(**PRESETS["paper"])


def test_credit_increases_with_the_first_error_under_both_rules():
    steps = 12
    for rule_args in (dict(rule="prefix"), dict(rule="logistic"), dict(rule="logistic", beta=1e6, gamma=0.5)):
        first_error = np.array([*range(steps), -1])
        out = sg.sgpo_rewards(
            np.zeros(steps + 1), first_error, np.full(steps + 1, steps), group_size=steps + 1, **rule_args
        )
        assert np.all(np.diff(out.rewards) >= 0), rule_args


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rule="logistic", beta=0.0), "beta: expected a finite steepness > 0"),
        (dict(rule="logistic", beta=-1.0), "beta"),
        (dict(rule="logistic", beta=math.inf), "beta"),
        (dict(rule="logistic", gamma=math.nan), "gamma: expected a finite threshold"),
        (dict(rule="sigmoid"), "rule: expected one of"),
        (dict(preset="paper2"), "preset: expected one of 'paper'"),
        (dict(credit_scale=-0.5), "credit_scale: expected a finite value >= 0"),
    ],
)
def test_bad_rule_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sg.sgpo_rewards(np.zeros(2), np.array([0, 1]), np.array([2, 2]), group_size=2, **kwargs)
    with pytest.raises(TypeError, match="beta: expected a real number"):
        sg.sgpo_rewards(
            np.zeros(2), np.array([0, 1]), np.array([2, 2]), group_size=2, rule="logistic", beta="5"
        )


def test_the_nan_rewards_and_singleton_groups_keep_their_meaning():
    rewards = np.array([np.nan, 0.0, 0.0, 1.0])
    out = sg.sgpo_rewards(
        rewards, np.array([0, 1, 0, -2]), np.array([2, 2, 3, 0]), group_size=1, preset="paper"
    )
    assert np.isnan(out.rewards[0]) and not out.diversified[0]
    np.testing.assert_allclose(
        out.rewards[1:3], [1 / (1 + np.exp(-5 * 0.0)), 1 / (1 + np.exp(2.5))], rtol=1e-6
    )
    assert out.rewards[3] == 1.0


BASE = dict(output_dir="/tmp/sgpo-credit-test", use_cpu=True, bf16=False)


def test_trl_config_round_trip():
    pytest.importorskip("trl")
    from sgpo_rs.trl import SGPOConfig

    config = SGPOConfig(**BASE, sgpo_preset="paper", report_to="none")
    assert (config.sgpo_rule, config.sgpo_beta, config.sgpo_gamma, config.sgpo_credit_scale) == (
        "logistic",
        5.0,
        0.5,
        1.0,
    )
    config = SGPOConfig(**BASE, report_to="none")
    assert (config.sgpo_rule, config.sgpo_credit_scale) == ("prefix", 0.5)
    saved = {k: v for k, v in config.to_dict().items() if k.startswith("sgpo_")}
    assert saved["sgpo_rule"] == "prefix" and saved["sgpo_beta"] == 5.0  # written out resolved
    again = SGPOConfig(
        **BASE,
        report_to="none",
        **{**saved, "sgpo_rule": "logistic", "sgpo_gamma": 0.3},
    )
    assert (again.sgpo_rule, again.sgpo_beta, again.sgpo_gamma) == ("logistic", 5.0, 0.3)
    with pytest.raises(ValueError, match="sgpo_beta: expected a finite steepness"):
        SGPOConfig(**BASE, sgpo_rule="logistic", sgpo_beta=0.0, report_to="none")
    with pytest.raises(ValueError, match="sgpo_preset"):
        SGPOConfig(**BASE, sgpo_preset="nope", report_to="none")


def test_verl_options_read_the_rule_from_the_config():
    from sgpo_rs.verl.options import SGPOOptions

    options = SGPOOptions.from_config({"sgpo": {"preset": "paper", "gamma": 0.4}})
    assert (options.rule, options.beta, options.gamma, options.credit_scale) == ("logistic", 5.0, 0.4, 1.0)
    assert SGPOOptions().credit == CreditOptions()
    with pytest.raises(ValueError, match="beta"):
        SGPOOptions.from_config({"sgpo": {"rule": "logistic", "beta": -1}})


def test_the_cli_writes_the_credit_under_the_chosen_rule(tmp_path):
    from sgpo_rs.cli import main

    records = [
        {"problem": "2 + 2", "steps": ["2 + 2 = 4", "so 5"], "correct": False},
        {"problem": "1 + 1", "steps": ["1 + 1 = 3", "so 3"], "correct": False},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert main(["judge", "--input", str(source), "--output", str(out), "--quiet", "--preset", "paper"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for line in lines:
        if line["credit"] is None:
            assert line["rule_credit"] is None
        else:
            expected = 1 / (1 + math.exp(-5 * (line["credit"] - 0.5)))
            assert line["rule_credit"] == pytest.approx(expected, rel=1e-12)
        assert line["credit_rule"] == "logistic"
    bad = tmp_path / "bad.jsonl"
    assert (
        main(
            [
                "judge",
                "--input",
                str(source),
                "--output",
                str(bad),
                "--quiet",
                "--rule",
                "logistic",
                "--beta",
                "0",
            ]
        )
        == 2
    )


def test_length_scores_weigh_steps_by_their_characters():
    responses = ["aa\n\nbbbb\n\ncc", "one\n\n\n\ntwo three", "x", "p\r\n\r\nqq"]
    scores = sg.length_scores(responses, [1, 1, -1, -2])
    # Separators do not count: 2 / (2 + 4 + 2); 3 / (3 + 9); no wrong step: 1; not judged: NaN.
    np.testing.assert_allclose(scores[:3], [0.25, 3 / 12, 1.0], rtol=1e-15)
    assert np.isnan(scores[3])
    assert sg.length_scores(["aa\n\nbbbb"], [0])[0] == 0.0
    # Steps split another way (markers) change the lengths.
    marked = "Step 1: ab\nStep 2: abcdef"
    assert sg.length_scores([marked], [1], delimiter="markers")[0] < 0.5
    with pytest.raises(
        ValueError,
        match="first_error: expected -2, -1 or a step index below the response's 1 steps, got 3 at row 0",
    ):
        sg.length_scores(["one step"], [3])
    assert np.isnan(sg.length_scores(["one step"], [3], strict=False)[0])
    with pytest.raises(ValueError, match="first_error: expected one per response"):
        sg.length_scores(["a", "b"], [0])
    # They feed sgpo_rewards(credit=...), under either rule.
    out = sg.sgpo_rewards(np.zeros(3), credit=scores[:3], group_size=3, preset="paper")
    np.testing.assert_allclose(out.rewards, 1 / (1 + np.exp(-5 * (scores[:3] - 0.5))), rtol=1e-6)


def test_the_cli_scores_by_length(tmp_path):
    from sgpo_rs.cli import main

    records = [{"problem": "2 + 2", "response": "2 + 2 = 4\n\nso the answer is 5", "correct": False}]
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(records[0]) + "\n")
    steps_out, length_out = tmp_path / "steps.jsonl", tmp_path / "length.jsonl"
    assert main(["judge", "--input", str(source), "--output", str(steps_out), "--quiet"]) == 0
    assert (
        main(
            [
                "judge",
                "--input",
                str(source),
                "--output",
                str(length_out),
                "--quiet",
                "--credit-unit",
                "length",
            ]
        )
        == 0
    )
    by_steps = json.loads(steps_out.read_text())
    by_length = json.loads(length_out.read_text())
    assert by_steps["first_error"] == by_length["first_error"] == 1
    assert by_steps["credit"] == 0.5
    assert by_length["credit"] == pytest.approx(
        len("2 + 2 = 4") / (len("2 + 2 = 4") + len("so the answer is 5"))
    )


def test_token_length_scores_count_tokens_by_their_first_character():
    from sgpo_rs.credit import token_length_scores, tokenizer_offsets

    text = "aa bb\n\ncc"  # steps "aa bb" (tokens at 0 and 3) and "cc" (token at 7)
    offsets = [[(0, 2), (3, 5), (5, 7), (7, 9)]]  # the separator token (5, 7) belongs to no step
    np.testing.assert_allclose(token_length_scores([text], [1], offsets), [2 / 3])
    np.testing.assert_allclose(token_length_scores([text, text], [-1, -2], offsets * 2), [1.0, np.nan])
    assert token_length_scores([text], [0], offsets)[0] == 0.0
    with pytest.raises(ValueError, match="offsets: expected one per response"):
        token_length_scores([text], [1], [])
    with pytest.raises(TypeError, match="needs a fast tokenizer"):
        tokenizer_offsets(object(), ["x"])


def test_token_length_scores_in_the_verl_reward_function(tokenizer):
    import sgpo_rs.verl as sv
    from sgpo_rs.credit import token_length_scores, tokenizer_offsets

    response = "Start from 3 :\n\nStart from 4 : 5"
    score = sv.make_compute_score(
        lambda *a, **k: 0.0,
        lambda problems, responses, rows: [(1, 2)],
        credit_unit="tokens",
        tokenizer=tokenizer,
    )
    out = score("arith", response, "7", extra_info={"question": "Q"})
    want = token_length_scores([response], [1], tokenizer_offsets(tokenizer, [response]))[0]
    assert out["sgpo_score"] == pytest.approx(want) and 0 < want < 1
    with pytest.raises(TypeError, match="needs a fast tokenizer"):
        sv.make_compute_score(lambda *a, **k: 0.0, lambda p, r, rows: [], credit_unit="tokens")

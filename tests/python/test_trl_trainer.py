"""sgpo_rs.trl.SGPOTrainer on the real TRL 1.16 GRPOTrainer: the SGPO credit reaching TRL's
advantages with several weighted reward functions, judging only what needs judging, text from
conversational data, a failing or slow judge, a few real training steps on the synthetic
arithmetic-chain task, configuration errors and the TRL version pin."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

trl = pytest.importorskip("trl")

import sgpo_rs as sg  # noqa: E402
from datasets import Dataset  # noqa: E402
from sgpo_rs.judge import CallableJudge, Verdict  # noqa: E402
from sgpo_rs.judge.calling import FailureStreak  # noqa: E402
from sgpo_rs.trl import SGPOConfig, SGPOTrainer  # noqa: E402
from sgpo_rs.trl.compat import check_version  # noqa: E402
from sgpo_rs.trl.judging import completion_text, prompt_text  # noqa: E402
from trl_tiny import correct_answer, task, token_steps  # noqa: E402

G = 4


# The tiny model is faster on one torch thread (and the machine may be shared).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(tmp_path, **extra):
    options = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_generations=G,
        max_completion_length=3,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        logging_steps=1,
    )
    options.update(extra)
    return SGPOConfig(**options)


def accuracy(prompts, completions, a, **kwargs):
    return [None if math.isnan(v) else v for v in a]


def style(prompts, completions, b, **kwargs):
    return [None if math.isnan(v) else v for v in b]


class RowJudge:
    """A plain-callable judge whose verdicts are the rows' `fe`/`ns` columns; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, problems, responses, rows):
        self.calls.append({"uids": [r["uid"] for r in rows], "problems": problems, "responses": responses})
        return [(r["fe"], r["ns"]) for r in rows]


def reward_rows():
    """Four groups of four: all wrong (equal totals), mixed, all wrong with an unscorable row, all
    wrong with one row the judge cannot judge."""
    a = [0, 0, 0, 0, 1, 0, 0, 1, 0, 0, math.nan, 0, 0, 0, 0, 0]
    b = [0.2, 0.2, 0.2, 0.2, 0.1, 0.3, 0.0, 0.2, 0.4, 0.0, math.nan, 0.2, 0.1, 0.1, 0.1, 0.1]
    fe = [1, 0, -1, 2, 0, 0, 0, 0, 0, 1, 0, 2, 0, -2, 1, 0]
    ns = [4, 3, 2, 5, 1, 1, 1, 1, 2, 2, 1, 3, 1, 0, 2, 1]
    return [
        {"prompt": f"Start from {i} :", "a": float(a[i]), "b": b[i], "fe": fe[i], "ns": ns[i], "uid": i}
        for i in range(16)
    ]


@pytest.fixture(scope="module")
def two_reward_trainer(tiny_lm, tokenizer, tmp_path_factory):
    judge = RowJudge()
    trainer = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=[accuracy, style],
        args=config(
            tmp_path_factory.mktemp("two"), reward_weights=[2.0, 0.5], sgpo_correctness_reward="accuracy"
        ),
        train_dataset=Dataset.from_list(reward_rows()),
        processing_class=tokenizer,
        judge=judge,
    )
    trainer.model.train()
    return trainer, judge


def expected_sgpo(rows, weights, credit_scale=0.5):
    a = np.array([r["a"] for r in rows])
    b = np.array([r["b"] for r in rows])
    total = np.nansum(np.stack([weights[0] * a, weights[1] * b]), axis=0)
    total[np.isnan(a) & np.isnan(b)] = np.nan
    correct = a > 0
    groups = correct.reshape(-1, G).any(axis=1)
    judged = ~np.isnan(total) & ~correct & np.repeat(~groups, G)
    fe = np.where(judged, [r["fe"] for r in rows], -2)
    ns = np.where(judged, [r["ns"] for r in rows], 0)
    out = sg.sgpo_rewards(
        total.astype(np.float32), fe, ns, group_size=G, correct=correct, credit_scale=credit_scale
    )
    return out, judged


def test_credit_reaches_trl_advantages_with_weighted_rewards(two_reward_trainer):
    trainer, judge = two_reward_trainer
    rows = reward_rows()
    judge.calls.clear()
    trainer._metrics["train"].clear()
    out = trainer._generate_and_score_completions(rows)

    expected, judged = expected_sgpo(rows, (2.0, 0.5))
    # One judge call, exactly the rows that need a verdict, as text.
    assert len(judge.calls) == 1
    assert judge.calls[0]["uids"] == list(np.flatnonzero(judged))
    assert judge.calls[0]["problems"] == [rows[i]["prompt"] for i in np.flatnonzero(judged)]
    assert all(isinstance(r, str) for r in judge.calls[0]["responses"])
    # The reward TRL normalised is the SGPO reward: TRL's advantages are its group advantages.
    np.testing.assert_allclose(trainer.last_sgpo.rewards, expected.rewards, rtol=0, atol=1e-6)
    want = sg.group_advantages(expected.rewards, group_size=G)
    np.testing.assert_allclose(out["advantages"].numpy(), want, rtol=1e-5, atol=1e-6)
    # Group 0 had equal totals (plain GRPO: zero advantages); SGPO separates it.
    assert np.abs(want[:4]).max() > 0.5 and np.ptp(want[:4]) > 1.0
    assert list(expected.diversified.reshape(-1, G).any(axis=1)) == [True, False, True, False]
    assert np.all(out["advantages"].numpy()[12:16] == 0)  # judge missing: plain GRPO, equal totals
    # Metrics and TRL's logs.
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key, value in expected.metrics().items():
        assert metrics[key] == pytest.approx(value)
    assert metrics["sgpo/all_negative_frac"] == 0.75
    assert metrics["sgpo/diversified_frac"] == 0.5
    assert metrics["sgpo/judge_missing_frac"] == 0.25
    assert metrics["reward"] == pytest.approx(np.nanmean(expected.rewards), rel=1e-6)
    assert metrics["rewards/accuracy/mean"] == pytest.approx(np.nanmean([r["a"] for r in rows]))


def test_all_incorrect_mode_credits_mixed_groups(two_reward_trainer):
    trainer, judge = two_reward_trainer
    rows = reward_rows()
    trainer._sgpo["sgpo_mode"] = "all_incorrect"
    try:
        judge.calls.clear()
        trainer._generate_and_score_completions(rows)
    finally:
        trainer._sgpo["sgpo_mode"] = "all_negative"
    a = np.array([r["a"] for r in rows])
    wrong = ~np.isnan(a) & ~(a > 0)
    assert judge.calls[0]["uids"] == list(np.flatnonzero(wrong))
    assert trainer.last_sgpo.diversified[5] and trainer.last_sgpo.diversified[6]  # mixed group 1


def test_evaluation_batches_are_not_judged(two_reward_trainer):
    trainer, judge = two_reward_trainer
    judge.calls.clear()
    trainer.model.eval()
    try:
        out = trainer._generate_and_score_completions(reward_rows())
    finally:
        trainer.model.train()
    assert judge.calls == []
    assert np.all(out["advantages"].numpy()[:4] == 0)  # plain GRPO


def test_conversational_prompts_and_completions(two_reward_trainer):
    trainer, judge = two_reward_trainer
    rows = reward_rows()
    prompts = [
        [{"role": "system", "content": "Be exact."}, {"role": "user", "content": r["prompt"]}] for r in rows
    ]
    completions = [
        [{"role": "assistant", "content": [{"type": "text", "text": f"1 + {i} = {i + 1}"}]}]
        for i in range(16)
    ]
    judge.calls.clear()
    trainer._calculate_rewards(rows, prompts, completions, [[1]] * 16)
    call = judge.calls[0]
    assert call["problems"][0] == rows[call["uids"][0]]["prompt"]
    assert call["responses"] == [f"1 + {i} = {i + 1}" for i in call["uids"]]
    assert prompt_text("plain") == "plain"
    assert completion_text(
        [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    ) == ("a\n\nb")


def sgpo_metrics(trainer):
    return {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("sgpo/")}


@pytest.mark.parametrize("failure", ["raises", "times_out", "wrong_length", "invalid"])
def test_a_failing_judge_leaves_groups_plain_grpo_with_one_warning(two_reward_trainer, failure):
    trainer, _ = two_reward_trainer

    def judge(problems, responses, rows):
        if failure == "raises":
            raise ConnectionError("judge server down")
        if failure == "times_out":
            time.sleep(3.0)
        if failure == "wrong_length":
            return [(0, 1)]
        return [(5, 2)] * len(rows)  # first_error beyond num_steps

    saved = trainer._sgpo_judge_fn, trainer.judge, dict(trainer._sgpo)
    trainer._sgpo_judge_fn = trainer.judge = judge
    trainer._sgpo["sgpo_judge_timeout_s"] = 0.3
    trainer._sgpo_failed_steps = FailureStreak()  # one failed step: a warning, far from the limit
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = trainer._generate_and_score_completions(reward_rows())
    finally:
        trainer._sgpo_judge_fn, trainer.judge = saved[0], saved[1]
        trainer._sgpo.update(saved[2])
    sgpo_warnings = [w for w in caught if "SGPO" in str(w.message)]
    assert len(sgpo_warnings) == 1, [str(w.message) for w in caught]
    metrics = sgpo_metrics(trainer)
    assert metrics["sgpo/diversified_frac"] == 0.0
    assert metrics["sgpo/judge_missing_frac"] == metrics["sgpo/all_negative_frac"] == 0.75
    assert np.all(out["advantages"].numpy()[:4] == 0)  # plain GRPO


def test_step_judge_backend_and_verdict_objects(two_reward_trainer):
    trainer, _ = two_reward_trainer
    seen = []

    def fn(problem, response):
        seen.append(problem)
        return Verdict(0, 2) if "Start from 1 " in problem else (1, 2)

    saved = trainer._sgpo_judge_fn, trainer.judge
    judge = CallableJudge(fn, identity="test")
    from sgpo_rs.trl.judging import as_judge_fn

    trainer._sgpo_judge_fn, trainer.judge = as_judge_fn(judge), judge
    try:
        trainer._generate_and_score_completions(reward_rows())
    finally:
        trainer._sgpo_judge_fn, trainer.judge = saved
    assert len(seen) == 11
    credit = trainer.last_sgpo.credit
    assert credit[1] == 0.0 and credit[0] == 0.5  # row 1's problem is "Start from 1 :"


# --- a few real training steps on the synthetic arithmetic-chain task ------------------------------


def test_training_diversifies_all_negative_groups(tiny_lm, tokenizer, tmp_path):
    rows = task(16, seed=1)
    calls = []

    def counted(problem, response):
        calls.append(response)
        return token_steps(problem, response)

    trainer = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=correct_answer,
        args=config(
            tmp_path, per_device_train_batch_size=8, max_completion_length=8, max_steps=3, use_sgpo_loss=True
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        judge=CallableJudge(counted, identity="token-steps"),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "sgpo/diversified_frac" in entry]
    assert len(logs) == 3 and calls
    for entry in logs:
        assert entry["sgpo/all_negative_frac"] > 0
        assert entry["sgpo/credited_frac"] == entry["sgpo/all_negative_frac"]
        assert entry["sgpo/diversified_frac"] <= entry["sgpo/credited_frac"]
        assert entry["sgpo/judge_missing_frac"] == 0
        assert 0 <= entry["sgpo/mean_credit"] <= 1
    # The last batch: raw rewards are equal inside each diversified group (plain GRPO would give
    # zero advantages), yet its advantages are non-zero.
    sgpo = trainer.last_sgpo
    raw = np.array(trainer._logs["rewards"]["correct_answer"]).reshape(-1, G)
    advantages = np.array(trainer._logs["advantages"]).reshape(-1, G)
    groups = sgpo.diversified.reshape(-1, G).all(axis=1)
    assert groups.any()
    for g in np.flatnonzero(groups):
        assert np.all(raw[g] == raw[g][0])
        if np.ptp(sgpo.credit.reshape(-1, G)[g]) > 0:
            assert np.abs(advantages[g]).max() > 0.1
    assert any(np.ptp(sgpo.credit.reshape(-1, G)[g]) > 0 for g in np.flatnonzero(groups))


def test_a_dead_judge_is_loud(tiny_lm, tokenizer, tmp_path):
    calls = []

    def broken(problems, responses, rows):
        calls.append(len(rows))
        raise RuntimeError("judge crashed")

    def build(**extra):
        return SGPOTrainer(
            model=tiny_lm,
            reward_funcs=correct_answer,
            args=config(tmp_path, per_device_train_batch_size=8, max_completion_length=4, **extra),
            train_dataset=Dataset.from_list(task(8, seed=2)),
            processing_class=tokenizer,
            judge=broken,
        )

    # At construction: the preflight call fails, with the judge's own error.
    with pytest.raises(RuntimeError, match=r"failed before training.*RuntimeError: judge crashed") as info:
        build(max_steps=2)
    assert isinstance(info.value.__cause__, RuntimeError) and calls == [2]
    # Without the preflight: training stops once K consecutive judging steps gave nothing.
    calls.clear()
    trainer = build(max_steps=6, sgpo_judge_preflight=False, sgpo_judge_max_failed_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"no verdict in 2 consecutive judging steps.*judge crashed"):
            trainer.train()
    assert len(calls) == 2 and trainer.state.global_step < 6
    assert len([w for w in caught if "judge crashed" in str(w.message)]) == 1  # the first step warns
    # Opting out of both: training goes on as plain GRPO, one warning per judging step.
    calls.clear()
    trainer = build(max_steps=2, sgpo_judge_preflight=False, sgpo_judge_max_failed_steps=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.state.global_step == 2
    sgpo_warnings = [w for w in caught if "judge crashed" in str(w.message)]
    assert len(sgpo_warnings) == len(calls) >= 1  # one warning per step that called the judge
    logs = [e for e in trainer.state.log_history if "sgpo/judge_missing_frac" in e]
    assert logs and all(e["sgpo/judge_missing_frac"] == e["sgpo/all_negative_frac"] > 0 for e in logs)
    assert all(e["sgpo/diversified_frac"] == 0 for e in logs)


# --- configuration --------------------------------------------------------------------------------


def test_configuration_errors(tiny_lm, tokenizer, tmp_path):
    data = Dataset.from_list(reward_rows())

    row_judge = RowJudge()

    def build(reward_funcs, judge=row_judge, **extra):
        return SGPOTrainer(
            model=tiny_lm,
            reward_funcs=reward_funcs,
            args=config(tmp_path, **extra),
            train_dataset=data,
            processing_class=tokenizer,
            judge=judge,
        )

    with pytest.raises(ValueError, match="sgpo_mode"):
        config(tmp_path, sgpo_mode="sometimes")
    with pytest.raises(ValueError, match="sum_then_normalize"):
        config(tmp_path, multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="sgpo_judge_timeout_s"):
        config(tmp_path, sgpo_judge_timeout_s=0)
    with pytest.raises(ValueError, match="sgpo_correctness_reward"):
        build([accuracy, style])
    with pytest.raises(ValueError, match="not one of the reward functions"):
        build([accuracy, style], sgpo_correctness_reward="correctness")
    with pytest.raises(TypeError, match="judge is required"):
        build([accuracy], judge=None)
    with pytest.raises(TypeError, match="judge"):
        build([accuracy], judge=42)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        build([accuracy], use_sgpo_loss=True, top_entropy_quantile=0.5)


def test_correctness_func(tiny_lm, tokenizer, tmp_path):
    judge = RowJudge()
    trainer = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=[accuracy, style],
        args=config(tmp_path),
        train_dataset=Dataset.from_list(reward_rows()),
        processing_class=tokenizer,
        judge=judge,
        correctness_func=lambda prompts, completions, uid, **kw: [u in (4, 7) for u in uid],
    )
    trainer.model.train()
    trainer._generate_and_score_completions(reward_rows())
    # Only group 1 has a correct row now; the unscorable row 10 is never judged.
    assert judge.calls[-1]["uids"] == [0, 1, 2, 3, 8, 9, 11, 12, 13, 14, 15]  # calls[0]: the preflight


def test_version_pin():
    check_version("1.16.0")
    check_version("1.16.3.dev0")
    for version in ("1.17.0", "1.15.2", "2.0.0"):
        with pytest.raises(ImportError, match=rf"TRL {version} is installed.*>=1.16,<1.17"):
            check_version(version)


def test_config_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"]
    argv += ["--sgpo_credit_scale", "0.3", "--sgpo_correctness_reward", "accuracy"]
    argv += ["--sgpo_judge_timeout_s", "5", "--use_sgpo_loss", "true", "--sgpo_mode", "all_incorrect"]
    (args,) = HfArgumentParser(SGPOConfig).parse_args_into_dataclasses(argv)
    assert (args.sgpo_credit_scale, args.sgpo_correctness_reward) == (0.3, "accuracy")
    assert args.sgpo_judge_timeout_s == 5
    assert args.use_sgpo_loss and args.sgpo_mode == "all_incorrect" and args.num_generations == 8


class ReferenceCritic:
    """A StepJudge that takes reference solutions; records them."""

    identity = "reference-critic"
    accepts_references = True

    def __init__(self):
        self.references = []

    def judge(self, problems, responses, references=None):
        self.references.append(references)
        return [Verdict(0, 2) for _ in responses]


def test_reference_column_and_dataset_columns_are_checked_at_construction(tiny_lm, tokenizer, tmp_path):
    from sgpo_rs.judge import RuleJudge

    rows = [dict(r, solution=f"worked solution {r['uid']}") for r in reward_rows()]
    data = Dataset.from_list(rows)

    def build(judge, **extra):
        return SGPOTrainer(
            model=tiny_lm,
            reward_funcs=[accuracy],
            args=config(tmp_path, **extra),
            train_dataset=data,
            processing_class=tokenizer,
            judge=judge,
        )

    with pytest.raises(
        ValueError, match=r"sgpo_problem_column='question': the train dataset has no such column"
    ):
        build(RowJudge(), sgpo_problem_column="question")
    with pytest.raises(ValueError, match=r"sgpo_reference_column='answer'.*columns: prompt, a, b"):
        build(ReferenceCritic(), sgpo_reference_column="answer")
    with pytest.raises(TypeError, match="RuleJudge does not take reference solutions"):
        build(RuleJudge(), sgpo_reference_column="solution")
    critic = ReferenceCritic()
    trainer = build(critic, sgpo_reference_column="solution", sgpo_preset="paper")
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    judged = [r for r in rows if r["a"] == 0]  # every wrong row of the all-wrong groups is judged
    assert critic.references and all(ref.startswith("worked solution") for ref in critic.references[-1])
    assert len(critic.references[-1]) <= len(judged)
    # The paper preset: credited rows gain sigma(5 (c - 0.5)) with c = 0 / 2.
    out = trainer.last_sgpo
    credited = out.diversified
    assert credited.any()
    np.testing.assert_allclose(
        out.rewards[credited] - np.nan_to_num(np.array([r["a"] for r in rows]))[credited],
        1 / (1 + np.exp(2.5)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("unit", ["length", "tokens"])
def test_length_scores_in_the_trainer(tiny_lm, tokenizer, tmp_path, unit):
    from sgpo_rs.judge.verdict import missing

    class LastStepJudge:
        """Calls each response's last step wrong; records what it judged."""

        identity = "last-step"
        delimiter = "\n\n"

        def __init__(self):
            self.seen = []

        def judge(self, problems, responses):
            out = []
            for response in responses:
                n = len(sg.split_steps(response))
                out.append(Verdict(n - 1, n) if n else missing(0, "no steps"))
                self.seen.append((response, out[-1].first_error))
            return out

    judge = LastStepJudge()
    trainer = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=[accuracy],
        args=config(tmp_path, sgpo_credit_unit=unit),
        train_dataset=Dataset.from_list(reward_rows()),
        processing_class=tokenizer,
        judge=judge,
    )
    trainer.model.train()
    trainer._generate_and_score_completions(reward_rows())
    assert judge.seen
    responses, ks = [r for r, _ in judge.seen], [k for _, k in judge.seen]
    if unit == "length":
        expected = sg.length_scores(responses, ks)
    else:
        from sgpo_rs.credit import token_length_scores, tokenizer_offsets

        expected = token_length_scores(responses, ks, tokenizer_offsets(tokenizer, responses))
    credited = trainer.last_sgpo.credit[trainer.last_sgpo.diversified]
    # Every credited row's score is the length score of a response the judge saw (float32).
    assert credited.size and all(np.isclose(c, expected, rtol=1e-6, atol=0).any() for c in credited)
    with pytest.raises(ValueError, match="sgpo_credit_unit"):
        config(tmp_path, sgpo_credit_unit="bytes")


def test_judges_that_cannot_work_are_refused_at_construction(tiny_lm, tokenizer, tmp_path):
    from sgpo_rs.judge import RuleJudge

    def build(judge, **extra):
        return SGPOTrainer(
            model=tiny_lm,
            reward_funcs=[accuracy],
            args=config(tmp_path, **extra),
            train_dataset=Dataset.from_list(reward_rows()),
            processing_class=tokenizer,
            judge=judge,
        )

    with pytest.raises(
        TypeError, match=r"got the class RuleJudge, not a judge; pass an instance, e\.g\. judge=RuleJudge\(\)"
    ):
        build(RuleJudge)

    def per_item(problem, response):
        return (0, 1)

    with pytest.raises(TypeError, match=r"per_item\(problem, response\) cannot be.*CallableJudge\(fn\)"):
        build(per_item)

    def wrong_shape(problems, responses, rows):
        return ["fine"] * len(responses)

    with pytest.raises(RuntimeError, match=r"failed before training.*2 of 2 verdicts are invalid.*'fine'"):
        build(wrong_shape)
    build(wrong_shape, sgpo_judge_preflight=False)  # the check can be turned off


def test_metrics_count_groups_whose_rewards_differ(two_reward_trainer):
    trainer, _ = two_reward_trainer
    saved = trainer._sgpo_judge_fn, trainer.judge

    def same_everywhere(problems, responses, rows):
        return [(0, 2)] * len(rows)  # every wrong answer wrong from its first step: equal credit

    trainer._sgpo_judge_fn = trainer.judge = same_everywhere
    try:
        trainer._generate_and_score_completions(reward_rows())
    finally:
        trainer._sgpo_judge_fn, trainer.judge = saved
    metrics = sgpo_metrics(trainer)
    # Groups 0, 2 and 3 are credited; the totals of groups 0 and 3 were equal and stay equal (no
    # advantage), group 2's differ (its style rewards differ).
    assert metrics["sgpo/credited_frac"] == 0.75
    assert metrics["sgpo/diversified_frac"] == 0.25
    rows = reward_rows()
    a = np.array([r["a"] for r in rows])
    b = np.array([r["b"] for r in rows])
    total = np.where(np.isnan(a) & np.isnan(b), np.nan, np.nansum(np.stack([2.0 * a, 0.5 * b]), axis=0))
    assert metrics["sgpo/outcome_reward_mean"] == pytest.approx(np.nanmean(total), rel=1e-6)


def test_unknown_correctness_keeps_the_group_plain_grpo(tiny_lm, tokenizer, tmp_path):
    judge = RowJudge()
    unknown = {1, 9}  # rows of groups 0 and 2, which would otherwise be credited

    trainer = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=[accuracy, style],
        args=config(tmp_path, sgpo_judge_preflight=False),
        train_dataset=Dataset.from_list(reward_rows()),
        processing_class=tokenizer,
        judge=judge,
        correctness_func=lambda prompts, completions, uid, a, **kw: [
            None if u in unknown else v > 0 for u, v in zip(uid, a)
        ],
    )
    trainer.model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer._generate_and_score_completions(reward_rows())
        trainer._generate_and_score_completions(reward_rows())
    messages = [str(w.message) for w in caught if "correctness" in str(w.message)]
    assert len(messages) == 1 and "2 of 16 responses is unknown" in messages[0]
    # Groups 0 and 2 are neither judged nor credited; group 3 still is.
    assert all(u not in (0, 1, 2, 3, 8, 9, 10, 11) for u in judge.calls[-1]["uids"])
    assert not trainer.last_sgpo.diversified[:4].any() and not trainer.last_sgpo.diversified[8:12].any()
    assert sgpo_metrics(trainer)["sgpo/correctness_unknown_frac"] == 2 / 16


def test_all_incorrect_mode_warns_when_credit_can_outrank_a_right_answer(tiny_lm, tokenizer, tmp_path):
    def build(**extra):
        return SGPOTrainer(
            model=tiny_lm,
            reward_funcs=[accuracy],
            args=config(tmp_path, sgpo_mode="all_incorrect", sgpo_judge_preflight=False, **extra),
            train_dataset=Dataset.from_list(reward_rows()),
            processing_class=tokenizer,
            judge=RowJudge(),
        )

    with pytest.warns(
        RuntimeWarning, match=r"can rank a wrong answer above a right one: full credit adds 1\.2"
    ):
        build(reward_weights=[1.0], sgpo_credit_scale=1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(reward_weights=[1.0], sgpo_credit_scale=0.5)


def test_the_model_card_says_sgpo(two_reward_trainer):
    import os

    trainer, _ = two_reward_trainer
    trainer.create_model_card()
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    assert "SGPO" in card and "2505.11595" in card and "sgpo-rs" in card

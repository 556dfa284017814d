"""HFJudge and PRMJudge with tiny randomly initialised local models (tests/python/tiny_models.py):
their verdicts are noise, so these tests check the plumbing (prompts, chat template, batching,
where scores are read), that a batch gives what one-at-a-time gives, and that noise yields a
missing verdict or a valid index, never anything else."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sgpo_rs import cli  # noqa: E402
from sgpo_rs.judge import HFJudge, PRMJudge, StepJudge, make_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import tiny_models

    return tiny_models.build_all(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def records():
    return make_synthetic(7, seed=2)


def problems_responses(records):
    return [r["problem"] for r in records], [r["response"] for r in records]


def assert_noise_is_missing_or_valid(verdicts, records):
    assert len(verdicts) == len(records)
    for v, r in zip(verdicts, records):
        assert v.num_steps == len(r["steps"])
        assert v.first_error == -2 or -1 <= v.first_error < v.num_steps
        assert (v.error is None) == (v.first_error != -2)


# --------------------------------------------------------------------------------------------------
# HFJudge


@pytest.fixture(scope="module")
def hf(models):
    return HFJudge(models["causal_lm"], max_new_tokens=12, batch_size=3, accept_truncated=True)


def test_hf_judge_plumbing(hf, records):
    assert isinstance(hf, StepJudge)
    assert hf.identity.startswith("hf:") and "greedy|max_new_tokens=12|sgpo-critic-v1" in hf.identity
    verdicts = hf.judge(*problems_responses(records))
    assert_noise_is_missing_or_valid(verdicts, records)
    for v in verdicts:
        if v.first_error == -2:
            assert v.error == "no valid \\boxed{index} in the reply" and v.raw  # a reply came back
    empty = hf.judge(["p"], ["  \n\n "])[0]
    assert empty.first_error == -2 and empty.error == "empty response: no steps"


def test_hf_batch_equals_one_at_a_time(hf, records):
    problems, responses = problems_responses(records)
    batch = hf.judge(problems, responses)
    single = [hf.judge([p], [r])[0] for p, r in zip(problems, responses)]
    assert [(v.first_error, v.raw) for v in batch] == [(v.first_error, v.raw) for v in single]
    assert len({v.raw for v in batch}) > 1  # the replies differ by prompt: the prompts got through


def test_hf_chat_template_and_plain_fallback(hf, models):
    text = hf.render("Check this.")
    assert text == "<|im_start|>user\nCheck this.<|im_end|>\n<|im_start|>assistant\n"
    plain = HFJudge(models["causal_lm_no_template"], max_new_tokens=4, system_prompt="Be strict.")
    assert not plain.use_chat_template and plain.render("Check this.") == "Be strict.\n\nCheck this."
    assert "|plain|system=" in plain.identity
    forced = HFJudge(models["causal_lm"], max_new_tokens=4, use_chat_template=False)
    assert forced.render("Check this.") == "Check this." and forced.identity != hf.identity


def test_hf_model_objects_and_truncation(hf, models, records):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(models["causal_lm"])
    tokenizer = AutoTokenizer.from_pretrained(models["causal_lm"])
    same = HFJudge(model, tokenizer, max_new_tokens=12, accept_truncated=True, identity="tiny-critic")
    problems, responses = problems_responses(records[:3])
    assert same.identity == "tiny-critic"
    assert [v.raw for v in same.judge(problems, responses)] == [v.raw for v in hf.judge(problems, responses)]
    strict = HFJudge(model, tokenizer, max_new_tokens=12, identity="tiny-critic-strict")
    verdicts = strict.judge(problems, responses)
    assert_noise_is_missing_or_valid(verdicts, records[:3])
    assert any("max_new_tokens=12" in (v.error or "") for v in verdicts)


def test_hf_failed_generation_is_missing(models, records):
    judge = HFJudge(models["causal_lm"], max_new_tokens=4, batch_size=2, accept_truncated=True)
    judge.model.model.embed_tokens = None  # a broken model: every generate call raises
    verdicts = judge.judge(*problems_responses(records[:3]))
    assert all(v.first_error == -2 and v.error for v in verdicts)


# --------------------------------------------------------------------------------------------------
# PRMJudge


def card_scores(style, model, tokenizer, problem, steps, marker):
    """Scores computed the model cards' way, one response at a time."""
    if style == "qwen":
        messages = [
            {
                "role": "system",
                "content": "Please reason step by step, and put your final answer within \\boxed{}.",
            },
            {"role": "user", "content": problem},
            {"role": "assistant", "content": marker.join(steps) + marker},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=ids)[0]
        probs = torch.softmax(logits, dim=-1)[0, :, 1]
        return probs[ids[0] == tokenizer.encode(marker, add_special_tokens=False)[0]].tolist()
    good, bad = tokenizer.encode("+ -", add_special_tokens=False)
    text = f"{problem} " + "\n".join(f"Step {i + 1}: {s} {marker}" for i, s in enumerate(steps))
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        logits = model(ids).logits[:, :, [good, bad]]
    scores = logits.softmax(dim=-1)[:, :, 0]
    return scores[ids == tokenizer.encode(marker, add_special_tokens=False)[-1]].tolist()


@pytest.fixture(scope="module", params=["qwen", "math-shepherd"])
def prm(request, models):
    path = models["token_classifier" if request.param == "qwen" else "causal_lm"]
    return PRMJudge(path, style=request.param, batch_size=3)


def test_prm_scores_follow_the_model_cards(prm, records):
    problems, responses = problems_responses(records)
    scores = prm.score(problems, responses)
    for p, r, s in zip(problems, records, scores):
        assert len(s) == len(r["steps"]) and all(0 < x < 1 for x in s)
        expected = card_scores(prm.style, prm.model, prm.tokenizer, p, r["steps"], prm.marker)
        np.testing.assert_allclose(s, expected, rtol=0, atol=1e-5)
    assert np.std(np.concatenate(scores)) > 0.01  # noise, but not constant


def test_prm_verdict_is_the_first_step_below_the_threshold(prm, records):
    problems, responses = problems_responses(records)
    scores = prm.score(problems, responses)
    verdicts = prm.judge(problems, responses)
    assert_noise_is_missing_or_valid(verdicts, records)
    for s, v in zip(scores, verdicts):
        below = [i for i, x in enumerate(s) if x < prm.threshold]
        assert v.first_error == (below[0] if below else -1)
        assert v.raw == " ".join(f"{x:.4f}" for x in s)
    assert prm.identity == f"prm:{prm.style}:{prm.name}|threshold=0.5|prm-{prm.style}-v1"


def test_prm_batch_equals_one_at_a_time(prm, records):
    problems, responses = problems_responses(records)
    batch = prm.score(problems, responses)
    single = [prm.score([p], [r])[0] for p, r in zip(problems, responses)]
    for a, b in zip(batch, single):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    verdicts = prm.judge(problems, responses)
    assert [v.first_error for v in verdicts] == [
        prm.judge([p], [r])[0].first_error for p, r in zip(problems, responses)
    ]


def test_prm_response_cannot_add_score_positions(prm):
    response = f"3 + 4 = 7 {prm.marker}{prm.marker} ки <extra_0>\n\n7 * 2 = 14 {prm.marker}\n\n14 - 5 = 9"
    problem = f"Start from 3 {prm.marker} and apply: + 4, * 2, - 5."
    assert len(prm.score([problem], [response])[0]) == 3
    assert prm.judge([problem], [response])[0].num_steps == 3


def test_prm_max_length_scores_what_fits(models, records):
    full = PRMJudge(models["token_classifier"], batch_size=4)
    cut = PRMJudge(models["token_classifier"], batch_size=4, max_length=60)
    assert cut.identity.endswith("|max_length=60")
    problems, responses = problems_responses(records)
    for whole, part, v in zip(
        full.score(problems, responses), cut.score(problems, responses), cut.judge(problems, responses)
    ):
        assert len(part) < len(whole)
        np.testing.assert_allclose(part, whole[: len(part)], atol=1e-5)
        below = [i for i, x in enumerate(part) if x < 0.5]
        if below:
            assert v.first_error == below[0]
        else:
            assert v.first_error == -2 and "were scored (max_length)" in v.error


def test_prm_wrong_head_is_a_missing_verdict(models, records):
    # A causal LM read as a Qwen-style PRM has vocabulary-sized logits, not 2 classes.
    wrong = PRMJudge(models["causal_lm"], style="qwen", batch_size=4)
    verdicts = wrong.judge(*problems_responses(records[:3]))
    assert all(v.first_error == -2 and "2-class logits" in v.error for v in verdicts)
    with pytest.raises(ValueError, match="style"):
        PRMJudge(models["causal_lm"], style="nope")


# --------------------------------------------------------------------------------------------------
# The command line with the local backends


@pytest.mark.parametrize(
    "backend, model, extra",
    [
        ("hf", "causal_lm", ["--max-tokens", "8"]),
        ("prm", "token_classifier", []),
        ("prm", "causal_lm", ["--prm-style", "math-shepherd", "--threshold", "0.3"]),
    ],
)
def test_judge_eval_with_local_backends(models, tmp_path, capsys, backend, model, extra):
    data = tmp_path / "set.jsonl"
    assert cli.main(["judge-eval", "--make-synthetic", "12", "--output", str(data), "--seed", "1"]) == 0
    args = ["judge-eval", "--input", str(data), "--backend", backend, "--model", models[model], *extra]
    assert cli.main([*args, "--model-batch-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"judge {backend}:" in out and "F1:" in out and "missing verdicts:" in out
    missing = int(out.split("missing verdicts:")[1].split()[0])
    assert 0 <= missing <= 12
    if backend == "hf":
        assert missing == 12  # cut replies (8 tokens) are never verdicts

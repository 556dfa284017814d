"""sgpo_rs against the real TRL 1.16 GRPOTrainer: the fused loss against `_compute_loss` (value,
dL/dlogp, parameter gradients and logged metrics), group advantages against TRL's own advantage
code path, and the recorded signatures of the private TRL methods sgpo_rs.trl relies on.

Tolerance of the loss parity: TRL computes in float32 torch, sgpo_rs in float64 with float32
outputs, on the same log-probabilities (the real model's, captured from TRL's own call). The loss
and dL/dlogp agree to ``rtol=1e-6`` with ``atol=1e-6 * max|TRL|`` (entries that cancel to near
zero, e.g. the bias-corrected KL gradient ``beta * r * (lp - ref)``, carry TRL's float32 error of
the largest entry, not of their own size). Parameter gradients are the same linear map of
dL/dlogp (TRL's backward through the model in both cases): ``rtol=1e-5``, ``atol=1e-6 * max``
over all parameters (a key bias's gradient is 0 analytically, so its entries are rounding noise).
Advantages: TRL float32 against sgpo_rs (float64 math, float32 out), ``rtol=1e-5, atol=1e-6``.
"""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest

trl = pytest.importorskip("trl")

import sgpo_rs as sg  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sgpo_rs.judge import RuleJudge  # noqa: E402
from sgpo_rs.torch import sgpo_loss  # noqa: E402
from sgpo_rs.trl import SGPOConfig, SGPOTrainer  # noqa: E402
from sgpo_rs.trl.compat import PRIVATE_API, private_api_mismatches  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl_tiny import correct_answer, task  # noqa: E402

# TRL's loss types from the engine's registry, and those TRL normalises by num_items.
LOSS_TYPES = tuple(name for name, info in sg.loss_types().items() if info.origin == "trl")
DAPO_FAMILY = tuple(n for n, info in sg.loss_types().items() if not info.divides_by_gradient_accumulation)
B, P, T, STEPS = 8, 5, 7, 2  # rows, prompt tokens, completion tokens, gradient-accumulation steps


def common_args(tmp_path, **extra):
    return dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=T,
        gradient_accumulation_steps=STEPS,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        **extra,
    )


# The tiny model is faster on one torch thread (and the machine may be shared).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loss_trainers(tiny_lm, tokenizer, tmp_path_factory):
    """A real GRPOTrainer and an SGPOTrainer(use_sgpo_loss=True) over identical weights."""
    data = Dataset.from_list(task(8))
    out = tmp_path_factory.mktemp("loss")
    grpo = GRPOTrainer(
        model=tiny_lm,
        reward_funcs=correct_answer,
        args=GRPOConfig(**common_args(out)),
        train_dataset=data,
        processing_class=tokenizer,
    )
    sgpo = SGPOTrainer(
        model=tiny_lm,
        reward_funcs=correct_answer,
        args=SGPOConfig(**common_args(out), use_sgpo_loss=True),
        train_dataset=data,
        processing_class=tokenizer,
        judge=RuleJudge(),
    )
    for trainer in (grpo, sgpo):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = STEPS
    return grpo, sgpo


def configure(trainer, loss_type, beta, level, delta, epsilon, epsilon_high):
    """Set the loss options on a built trainer as GRPOTrainer.__init__ derives them from its args."""
    args = trainer.args
    args.loss_type, args.beta, args.importance_sampling_level = loss_type, beta, level
    args.delta, args.epsilon, args.epsilon_high = delta, epsilon, epsilon_high
    trainer.loss_type, trainer.beta, trainer.importance_sampling_level = loss_type, beta, level
    trainer.epsilon_low = epsilon
    trainer.epsilon_high = epsilon_high if epsilon_high is not None else epsilon


def make_inputs(trainer, seed, *, on_policy=False, token_advantages=False):
    """A micro-batch as TRL's `_compute_loss` receives it; old/ref log-probs are the model's own
    log-probs perturbed (so ratios leave the clip range on both sides)."""
    g = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (B, P), generator=g)
    completion_ids = torch.randint(3, vocab, (B, T), generator=g)
    lengths = torch.tensor([T, 1, 3, T, 5, 2, T, 4])
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        lp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([torch.ones(B, P, dtype=torch.long), completion_mask], 1),
            T,
        )
    shape = (B, T) if token_advantages else (B,)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(shape, generator=g) + 1.0,  # mostly positive: no cancelling loss
        "ref_per_token_logps": lp + 0.3 * torch.randn(B, T, generator=g),
        "num_items_in_batch": torch.tensor(float(completion_mask.sum() * 3)),
    }
    if not on_policy:
        inputs["old_per_token_logps"] = lp + 0.25 * torch.randn(B, T, generator=g)
    return inputs


def run_compute_loss(trainer, inputs):
    """`trainer._compute_loss(model, inputs)` and its backward; returns the loss, the captured
    per-token log-probs (TRL's own tensor, with its gradient), the parameter gradients and the
    metrics logged by this call."""
    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def capturing(*args, **kwargs):
        logp, entropies, aux = original(*args, **kwargs)
        logp.retain_grad()
        captured["logp"] = logp
        return logp, entropies, aux

    trainer._metrics["train"].clear()
    trainer.model.zero_grad(set_to_none=True)
    trainer._get_per_token_logps_and_entropies = capturing
    try:
        loss = trainer._compute_loss(trainer.model, inputs)
    finally:
        del trainer._get_per_token_logps_and_entropies
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return loss.detach(), captured["logp"], grads, metrics


def assert_close(actual, expected, rtol=1e-6, what=""):
    a = torch.as_tensor(actual).detach().double()
    e = torch.as_tensor(expected).detach().double()
    scale = float(e.abs().max()) if e.numel() else 0.0
    torch.testing.assert_close(a, e, rtol=rtol, atol=1e-6 * scale, msg=lambda m: f"{what}: {m}")


# Every loss type x KL off/on x token/sequence ratios x two-sided clipping (delta) off/on x
# symmetric/asymmetric epsilon.
def assert_grads_close(actual, expected, what):
    """All parameter gradients as one vector: ``rtol=1e-5``, ``atol=1e-6 * max`` over the whole
    model (some entries, e.g. a key bias's, are 0 analytically and pure rounding noise)."""
    assert actual.keys() == expected.keys()
    a = torch.cat([actual[name].flatten() for name in expected])
    e = torch.cat([expected[name].flatten() for name in expected])
    assert_close(a, e, rtol=1e-5, what=what)


CASES = list(
    itertools.product(LOSS_TYPES, (0.0, 0.04), ("token", "sequence"), (None, 1.5), ((0.2, None), (0.2, 0.28)))
)


@pytest.mark.parametrize("loss_type,beta,level,delta,eps", CASES)
def test_sgpo_loss_equals_trl_compute_loss(loss_trainers, loss_type, beta, level, delta, eps):
    grpo, sgpo = loss_trainers
    seed = CASES.index((loss_type, beta, level, delta, eps))
    for trainer in loss_trainers:
        configure(trainer, loss_type, beta, level, delta, *eps)
    inputs = make_inputs(grpo, seed)
    trl_loss, logp, trl_grads, trl_metrics = run_compute_loss(grpo, inputs)

    # sgpo_rs.torch.sgpo_loss on TRL's own log-probabilities, options spelled out from the case.
    options = dict(
        loss_type=loss_type,
        beta=beta,
        epsilon_low=eps[0],
        epsilon_high=eps[1],
        delta=delta,
        importance_sampling_level=level,
        max_completion_length=T,
    )
    if loss_type in DAPO_FAMILY:  # TRL: num_items_in_batch / processes * accumulation / steps_per_generation
        options["num_items"] = float(inputs["num_items_in_batch"]) * STEPS / grpo.args.steps_per_generation
    x = logp.detach().clone().requires_grad_(True)
    loss, _ = sgpo_loss(
        x,
        inputs["old_per_token_logps"],
        inputs["advantages"],
        inputs["completion_mask"],
        ref_logp=inputs["ref_per_token_logps"] if beta else None,
        gradient_accumulation_steps=STEPS,
        **options,
    )
    loss.backward()
    assert_close(loss, trl_loss, what="loss")
    assert_close(x.grad, logp.grad, what="dL/dlogp")
    assert logp.grad.abs().max() > 0

    # The trainer with use_sgpo_loss=True: same loss, parameter gradients and logged metrics.
    sg_loss, _, sg_grads, sg_metrics = run_compute_loss(sgpo, inputs)
    assert_close(sg_loss, trl_loss, what="trainer loss")
    assert sg_grads.keys() == trl_grads.keys()
    assert_grads_close(sg_grads, trl_grads, "parameters")
    assert sg_metrics.keys() == trl_metrics.keys(), (sorted(sg_metrics), sorted(trl_metrics))
    for key, values in trl_metrics.items():
        np.testing.assert_allclose(sg_metrics[key], values, rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("loss_type", ("grpo", "dapo", "cispo", "vespo"))
def test_on_policy_token_advantages_and_eval_mode(loss_trainers, loss_type):
    """No old log-probs (TRL uses logp.detach()), (B, T) advantages, and evaluation mode (TRL
    neither divides by the accumulation steps nor rescales num_items there)."""
    grpo, sgpo = loss_trainers
    for trainer in loss_trainers:
        configure(trainer, loss_type, 0.04, "token", None, 0.2, 0.28)
    for training, seed in ((True, 1000), (False, 1001)):
        for trainer in loss_trainers:
            trainer.model.train(training)
        try:
            inputs = make_inputs(grpo, seed, on_policy=True, token_advantages=True)
            trl_loss, logp, trl_grads, trl_metrics = run_compute_loss(grpo, inputs)
            sg_loss, sg_logp, sg_grads, sg_metrics = run_compute_loss(sgpo, inputs)
        finally:
            for trainer in loss_trainers:
                trainer.model.train()
        mode = "train" if training else "eval"
        assert_close(sg_loss, trl_loss, what=f"{mode} loss")
        assert_grads_close(sg_grads, trl_grads, mode)
        assert sg_metrics.keys() == trl_metrics.keys()


# --- advantages: TRL's own code path (_generate_and_score_completions) -------------------------


def reward_a(prompts, completions, a, **kwargs):
    return [None if math.isnan(v) else v for v in a]


def reward_b(prompts, completions, b, **kwargs):
    return [None if math.isnan(v) else v for v in b]


def advantage_rows(seed, num_rows):
    """Rows with rewards drawn so that groups are all-equal, mixed, partly or wholly unscorable."""
    rng = np.random.default_rng(seed)
    a = rng.choice([0.0, 1.0, 0.5], size=num_rows)
    b = rng.normal(0.0, 0.3, size=num_rows)
    a[:4] = 0.0  # group 0: equal rewards in a ...
    b[:4] = 0.1  # ... and in b: zero std
    a[4:8] = np.nan  # group 1: a unscorable, b scores
    a[9], b[9] = np.nan, np.nan  # one unscorable row in group 2
    a[12:16] = np.nan  # group 3: every row unscorable
    b[12:16] = np.nan
    return [{"prompt": f"Start from {i} :", "a": float(a[i]), "b": float(b[i])} for i in range(num_rows)]


@pytest.fixture(scope="module")
def advantage_trainer(tiny_lm, tokenizer, tmp_path_factory):
    rows = advantage_rows(0, 16)
    trainer = GRPOTrainer(
        model=tiny_lm,
        reward_funcs=[reward_a, reward_b],
        args=GRPOConfig(
            **common_args(tmp_path_factory.mktemp("adv"), reward_weights=[1.0, 0.5]),
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.args.max_completion_length = trainer.max_completion_length = 3
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("scale", ("group", "batch", "none"))
@pytest.mark.parametrize("seed", (0, 1))
def test_group_advantages_equal_trl(advantage_trainer, scale, seed):
    trainer = advantage_trainer
    trainer.scale_rewards = scale
    rows = advantage_rows(seed, 16)
    out = trainer._generate_and_score_completions(rows)
    a = np.array([r["a"] for r in rows])
    b = np.array([r["b"] for r in rows])
    total = np.nansum(np.stack([1.0 * a, 0.5 * b]), axis=0)
    total[np.isnan(a) & np.isnan(b)] = np.nan
    expected = sg.group_advantages(total.astype(np.float32), group_size=4, scale=scale)
    got = out["advantages"].numpy()
    np.testing.assert_allclose(expected, got, rtol=1e-5, atol=1e-6)
    assert np.all(expected[12:16] == 0) and expected[9] == 0  # unscorable rows
    assert np.all(expected[:4] == 0)  # zero-std group


# --- the private TRL API --------------------------------------------------------------------------


def test_private_trl_signatures_are_the_recorded_ones():
    for name, recorded in PRIVATE_API.items():
        assert str(inspect.signature(getattr(GRPOTrainer, name))) == recorded, name
    assert private_api_mismatches(GRPOTrainer) == []
    # The overrides keep TRL's signatures.
    for name in ("_calculate_rewards", "_compute_loss"):
        assert inspect.signature(getattr(SGPOTrainer, name)) == inspect.signature(getattr(GRPOTrainer, name))


def test_private_api_check_names_a_changed_method():
    class Changed(GRPOTrainer):
        def _calculate_rewards(self, inputs, prompts, completions):  # one argument fewer
            return None

    problems = private_api_mismatches(Changed)
    assert len(problems) == 1 and "_calculate_rewards" in problems[0]


# --- the fused loss in the real training loop ---------------------------------------------------


def digit_fraction(prompts, completions, **kwargs):
    """A reward that varies between completions of random tokens: the fraction that are numbers."""
    return [sum(t.isdigit() for t in c.split()) / max(len(c.split()), 1) for c in completions]


def train_run(trainer_class, tiny_lm, tokenizer, folder, loss_type, **extra):
    options = common_args(
        folder,
        num_iterations=2,
        max_steps=3,
        logging_steps=1,
        optim="sgd",
        learning_rate=0.5,
        loss_type=loss_type,
        beta=0.04,
        **extra,
    )
    options.update(per_device_train_batch_size=4, max_completion_length=6)
    sgpo = trainer_class is SGPOTrainer
    trainer = trainer_class(
        model=tiny_lm,
        reward_funcs=digit_fraction,
        args=(SGPOConfig if sgpo else GRPOConfig)(**options),
        train_dataset=Dataset.from_list(task(16)),
        processing_class=tokenizer,
        **({"judge": lambda problems, responses, rows: [(-1, 1)] * len(rows)} if sgpo else {}),
    )
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    update = {n: p.detach() - start[n] for n, p in trainer.model.named_parameters()}
    return update, [e for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("loss_type", ("grpo", "dapo", "dr_grpo", "cispo"))
def test_training_with_sgpo_loss_matches_trl(tiny_lm, tokenizer, tmp_path, loss_type):
    """Three optimizer steps (SGD) with gradient accumulation 2, two iterations per generation
    (old log-probs) and a KL term: the same parameter updates and logged values as TRL's loss.
    The SGPO credit is 0 here (sgpo_credit_scale=0), so the rewards are TRL's too; generation is
    seeded identically in both runs."""
    trl_update, trl_logs = train_run(GRPOTrainer, tiny_lm, tokenizer, tmp_path / "a", loss_type)
    sg_update, sg_logs = train_run(
        SGPOTrainer, tiny_lm, tokenizer, tmp_path / "b", loss_type, use_sgpo_loss=True, sgpo_credit_scale=0.0
    )
    assert_grads_close(sg_update, trl_update, "parameter updates")
    assert max(float(u.abs().max()) for u in trl_update.values()) > 1e-3
    assert len(sg_logs) == len(trl_logs) == 3
    for trl_entry, sg_entry in zip(trl_logs, sg_logs):
        for key, value in trl_entry.items():
            if key in ("step_time",) or not isinstance(value, float):
                continue
            assert sg_entry[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert "sgpo/diversified_frac" in sg_logs[0]  # logged on the steps that generate

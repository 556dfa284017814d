"""``loss_mode=sgpo_rs`` against the real verl: ``compute_policy_loss_vanilla`` + ``agg_loss``.

verl's own function run on float64 copies of the inputs is the exact reference (its formulas in
float64 autograd). Tolerances: loss within 1e-6 relative of it (plus 1e-9 absolute for losses near
0), gradient within 1e-6 of max |grad| (absolute), metrics within 1e-6 relative (verl computes the
clip fractions in float32 even on float64 inputs; ours are exact). verl's float32 result is
compared at 1e-5 relative: its own float32 rounding is what separates the two.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

import sgpo_rs.verl as sv  # noqa: E402
from sgpo_rs.verl.policy_loss import AGG_MODES, LOSS_MODE  # noqa: E402
from verl.workers.config.actor import ActorConfig  # noqa: E402

# What verl's new engine may put in config.global_batch_info (None: the local micro-batch).
GLOBAL_INFOS = [
    {},
    {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None, "loss_scale_factor": None},
    {"dp_size": 4, "batch_num_tokens": 700, "global_batch_size": 40, "loss_scale_factor": None},
    {"dp_size": 2, "batch_num_tokens": 333, "global_batch_size": 17, "loss_scale_factor": 96},
]


def actor_config(global_batch_info=None, **clip):
    config = ActorConfig(
        strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=1, **clip
    )
    # verl's engine fills the dict in place (the field itself is frozen).
    config.global_batch_info.update(global_batch_info or {})
    return config


def inputs(rng, rows, length, *, extreme=False, mask_dtype=torch.bool):
    """Log-probs with log ratios across the clip region (and past verl's +-20 clamp with
    ``extreme``), per-token advantages of both signs, a mask with gaps and empty rows."""
    old = rng.normal(-2.0, 1.0, size=(rows, length))
    scale = 30.0 if extreme else 0.3
    logp = old + rng.normal(0.0, scale, size=(rows, length))
    adv = np.repeat(rng.normal(0.0, 1.5, size=(rows, 1)), length, axis=1)
    adv += rng.normal(0.0, 0.1, size=(rows, length))  # token-level advantages (GAE-like)
    mask = rng.random((rows, length)) > 0.2
    mask[rng.random(rows) < 0.2] = False  # empty rows
    return (
        torch.tensor(old, dtype=torch.float32),
        torch.tensor(logp, dtype=torch.float32, requires_grad=True),
        torch.tensor(adv, dtype=torch.float32),
        torch.tensor(mask).to(mask_dtype),
    )


def verl_loss(old, logp, adv, mask, mode, config, dtype):
    leaf = logp.detach().to(dtype).requires_grad_(True)
    loss, metrics = core_algos.compute_policy_loss_vanilla(
        old.to(dtype), leaf, adv.to(dtype), mask, loss_agg_mode=mode, config=config
    )
    loss.backward()
    return float(loss.detach()), leaf.grad.double().numpy(), metrics


def ours(old, logp, adv, mask, mode, config):
    leaf = logp.detach().clone().requires_grad_(True)
    fn = core_algos.get_policy_loss_fn(LOSS_MODE)
    loss, metrics = fn(old, leaf, adv, mask, loss_agg_mode=mode, config=config)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    return float(loss.detach()), leaf.grad.double().numpy(), metrics


def applicable(mode, info):
    """verl refuses dp_size > 1 without the global normaliser the mode needs."""
    dp = info.get("dp_size") or 1
    if dp == 1:
        return True
    if mode == "token-mean":
        return info.get("batch_num_tokens") is not None
    if mode == "token-sum":
        return True
    return info.get("global_batch_size") is not None


CASES = [
    (mode, i, seed)
    for mode in AGG_MODES
    for i, info in enumerate(GLOBAL_INFOS)
    if applicable(mode, info)
    for seed in range(2)
]


@pytest.mark.parametrize("mode,info_index,seed", CASES)
def test_equals_verl_vanilla_for_every_aggregation(mode, info_index, seed):
    rng = np.random.default_rng(seed)
    rows, length = (5, 17) if seed == 0 else (12, 64)
    old, logp, adv, mask = inputs(rng, rows, length, extreme=seed == 1)
    config = actor_config(GLOBAL_INFOS[info_index], clip_ratio=0.2, clip_ratio_low=0.15, clip_ratio_high=0.28)
    exact, exact_grad, exact_metrics = verl_loss(old, logp, adv, mask, mode, config, torch.float64)
    f32, _, _ = verl_loss(old, logp, adv, mask, mode, config, torch.float32)
    loss, grad, metrics = ours(old, logp, adv, mask, mode, config)
    assert abs(loss - exact) <= 1e-6 * abs(exact) + 1e-9, (loss, exact)
    assert abs(loss - f32) <= 1e-5 * abs(exact) + 1e-7, (loss, f32)
    scale = max(np.abs(exact_grad).max(), 1e-30)
    np.testing.assert_allclose(grad, exact_grad, rtol=0, atol=1e-6 * scale)
    assert set(metrics) == set(exact_metrics)
    for key, value in exact_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_dual_clip_and_clip_ratio_defaults():
    """Large negative advantages with big ratios hit the dual clip; clip_ratio_low/high default
    to clip_ratio; clip_ratio_c is read from the config."""
    rng = np.random.default_rng(7)
    old, logp, adv, mask = inputs(rng, 8, 40)
    with torch.no_grad():
        logp += 2.0
        adv -= 3.0
    config = actor_config(clip_ratio=0.3, clip_ratio_c=2.5)
    exact, exact_grad, exact_metrics = verl_loss(old, logp, adv, mask, "token-mean", config, torch.float64)
    loss, grad, metrics = ours(old, logp, adv, mask, "token-mean", config)
    assert exact_metrics["actor/pg_clipfrac_lower"] > 0.3  # the case really dual-clips
    assert abs(loss - exact) <= 1e-6 * abs(exact)
    np.testing.assert_allclose(grad, exact_grad, rtol=0, atol=1e-6 * np.abs(exact_grad).max())
    lower = "actor/pg_clipfrac_lower"
    assert metrics[lower] == pytest.approx(exact_metrics[lower], rel=1e-6)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_tensor_normalisers_and_mask_dtypes(mask_dtype):
    """verl's engine may hand the normalisers as tensors: they are used as tensors (no read)."""
    rng = np.random.default_rng(3)
    old, logp, adv, mask = inputs(rng, 6, 33, mask_dtype=mask_dtype)
    info = {"dp_size": 2, "batch_num_tokens": torch.tensor(250), "global_batch_size": torch.tensor(11)}
    for mode in AGG_MODES:
        config = actor_config(info)
        exact, exact_grad, _ = verl_loss(old, logp, adv, mask, mode, config, torch.float64)
        loss, grad, _ = ours(old, logp, adv, mask, mode, config)
        assert abs(loss - exact) <= 1e-6 * abs(exact) + 1e-9, mode
        np.testing.assert_allclose(grad, exact_grad, rtol=0, atol=1e-6 * max(np.abs(exact_grad).max(), 1e-30))


def test_rollout_is_weights_use_verls_own_loss():
    rng = np.random.default_rng(5)
    old, logp, adv, mask = inputs(rng, 4, 9)
    weights = torch.tensor(rng.random((4, 9)), dtype=torch.float32)
    config = actor_config()
    leaf = logp.detach().clone().requires_grad_(True)
    loss, _ = sv.compute_policy_loss(old, leaf, adv, mask, "token-mean", config, rollout_is_weights=weights)
    expected, _ = core_algos.compute_policy_loss_vanilla(
        old, logp.detach(), adv, mask, "token-mean", config, weights
    )
    assert float(loss.detach()) == float(expected)


@pytest.mark.parametrize(
    "mode,info,config,match",
    [
        ("token-avg", {}, {}, "loss_agg_mode"),
        ("token-mean", {"dp_size": 2}, {}, "batch_num_tokens"),
        ("seq-mean-token-mean", {"dp_size": 2}, {}, "global_batch_size"),
        ("token-mean", {"dp_size": 0}, {}, "dp_size"),
        ("token-mean", {"batch_num_tokens": 0}, {}, "batch_num_tokens"),
        ("seq-mean-token-sum-norm", {"loss_scale_factor": -1.0}, {}, "loss_scale_factor"),
        ("token-mean", {}, {"clip_ratio_c": 1.0}, "clip_ratio_c"),
    ],
)
def test_bad_input_names_the_argument(mode, info, config, match):
    rng = np.random.default_rng(0)
    old, logp, adv, mask = inputs(rng, 3, 5)
    with pytest.raises(ValueError, match=match):
        sv.compute_policy_loss(old, logp, adv, mask, mode, actor_config(info, **config))
    with pytest.raises(ValueError, match="config"):
        sv.compute_policy_loss(old, logp, adv, mask, "token-mean", None)


def test_registered_and_loadable_as_external_lib():
    """Registration is idempotent, and ``external_lib=sgpo_rs.verl`` (verl's own import helper) loads
    it in a fresh worker process with the entry points switched off."""
    assert core_algos.get_policy_loss_fn(LOSS_MODE) is sv.compute_policy_loss
    sv.register_policy_loss()
    assert core_algos.get_policy_loss_fn(LOSS_MODE) is sv.compute_policy_loss
    code = (
        "from verl.trainer.ppo import core_algos\n"
        "assert 'sgpo_rs' not in core_algos.POLICY_LOSS_REGISTRY\n"
        "from verl.utils.import_utils import import_external_libs\n"
        "import_external_libs('sgpo_rs.verl')\n"
        "print(core_algos.get_policy_loss_fn('sgpo_rs').__module__)\n"
    )
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="none")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "sgpo_rs.verl.policy_loss"

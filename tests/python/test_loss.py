"""policy_loss: forward value and metrics against the float64 numpy reference, gradient against
torch autograd (float64) of TRL's / verl's formulas and against finite differences, plus the
contract's invariants (old_logp=None, half precision, poisoned padding, masked grads, grad_scale,
determinism).

Tolerances (stated once, used everywhere unless a test says otherwise):

- loss and metrics (computed in float64 by the library) and grad (float32) against the float64
  references: ``rtol=1e-6, atol=1e-6 * max(1, max|ref|)`` (``reference.assert_close``).
- finite differences: ``rtol=1e-5`` (see ``test_grad_matches_finite_differences``).
- invariants that the contract states as equalities (padding never read, half == float32 path on
  the upcast values, repeated calls, thread counts) are checked bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib

import ml_dtypes
import numpy as np
import pytest
import reference as ref
import sgpo_rs as sg
from reference_torch import torch_grad

LOSS_TYPES = ref.LOSS_TYPES
LEVELS = ("token", "sequence")
SHAPES = [(1, 1), (1, 6), (4, 1), (3, 5), (16, 33), (64, 257)]


HALF_TYPES = [
    pytest.param(np.float16, id="float16"),
    pytest.param(ml_dtypes.bfloat16, id="bfloat16"),
]


# (loss_type, level) cases. Vanilla (verl) has no sequence-level ratio; what the library does with
# it is unspecified, so that combination is left out (reported as an ambiguity).
CASES = [
    pytest.param(lt, lv, id=f"{lt}-{lv}")
    for lt in LOSS_TYPES
    for lv in LEVELS
    if not (lt == "vanilla" and lv == "sequence")
]


def _seed(*parts) -> int:
    """A seed that is stable across processes (str hashes are salted per process)."""
    return zlib.crc32(repr(parts).encode())


def _eps_high(loss_type):
    # CISPO's epsilon_high is an upper bound on the ratio itself (TRL recommends ~5); for the
    # others it is the usual clip width, made asymmetric (DAPO's clip-higher).
    return 4.0 if loss_type == "cispo" else 0.28


def _run_both(lp, old, adv, mask, **kw):
    out = sg.policy_loss(lp, old, adv, mask, **kw)
    loss, metrics = ref.policy_loss(lp, old, adv, mask, **kw)
    return out, loss, metrics


def _check_forward(lp, old, adv, mask, **kw):
    out, loss, metrics = _run_both(lp, old, adv, mask, **kw)
    assert isinstance(out.loss, float)
    assert out.grad.dtype == np.float32 and out.grad.shape == lp.shape
    ref.assert_close(out.loss, loss, what="loss")
    ref.assert_metrics_close(out.metrics, metrics)
    return out


def _check_grad(lp, old, adv, mask, **kw):
    out = sg.policy_loss(lp, old, adv, mask, **kw)
    loss, grad = torch_grad(lp, old, adv, mask, **kw)
    ref.assert_close(out.loss, loss, what="loss (torch)")
    ref.assert_close(out.grad, grad, what="grad")
    return out, grad


def test_torch_transcription_agrees_with_numpy_reference():
    """The two independent oracles agree on the forward value (guards both)."""
    rng = np.random.default_rng(0)
    for lt in LOSS_TYPES:
        for lv in LEVELS:
            lp, old, rf, adv, m = ref.make_loss_inputs(rng, 5, 7, mask_kind="float32")
            kw = dict(loss_type=lt, importance_sampling_level=lv, beta=0.05, ref_logp=rf)
            loss_np, _ = ref.policy_loss(lp, old, adv, m, **kw)
            loss_t, _ = torch_grad(lp, old, adv, m, **kw)
            np.testing.assert_allclose(loss_t, loss_np, rtol=1e-12, atol=1e-12 * max(1, abs(loss_np)))


# --------------------------------------------------------------------------------------------------
# Forward value and metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("loss_type,level", CASES)
def test_forward_matches_reference(loss_type, level, shape, seed):
    rng = np.random.default_rng(_seed("fwd", loss_type, level, shape, seed))
    B, T = shape
    lp, old, _, adv, m = ref.make_loss_inputs(
        rng, B, T, adv2d=seed == 1, mask_kind=ref.MASK_KINDS[seed % len(ref.MASK_KINDS)]
    )
    _check_forward(
        lp,
        old,
        adv,
        m,
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon_high=_eps_high(loss_type),
    )


@pytest.mark.parametrize("agg", [None, *ref.AGG_MODES])
@pytest.mark.parametrize("loss_type,level", CASES)
def test_small_float_mask_weights(loss_type, level, agg):
    """Rows whose float weights sum to less than 1: the max(sum_t M, 1) clamps of TRL (sequence
    ratio, grpo) and verl's unclamped per-row token means differ here."""
    rng = np.random.default_rng(_seed("small", loss_type, level, agg))
    lp, old, rf, adv, _ = ref.make_loss_inputs(rng, 6, 5, ratio_scale=0.5)
    m = ref.make_mask(rng, 6, 5, "small_float32")
    kw = dict(loss_type=loss_type, importance_sampling_level=level, loss_agg_mode=agg, beta=0.05, ref_logp=rf)
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("bias_correction", [True, False], ids=["biascorr", "nobiascorr"])
@pytest.mark.parametrize("estimator", ref.KL_ESTIMATORS)
@pytest.mark.parametrize("loss_type,level", CASES)
def test_forward_with_kl(loss_type, level, estimator, bias_correction):
    rng = np.random.default_rng(_seed("kl", loss_type, level, estimator, bias_correction))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 16, 33, mask_kind="float32")
    _check_forward(
        lp,
        old,
        adv,
        m,
        ref_logp=rf,
        beta=0.04,
        kl_estimator=estimator,
        kl_bias_correction=bias_correction,
        loss_type=loss_type,
        importance_sampling_level=level,
    )


def test_low_var_kl_clamps():
    """verl's low_var_kl clamps ref - logp to +-20 and the estimate to +-10; TRL's k3 does not."""
    lp = np.array([[-1.0, -25.0, -0.5, -3.0]], np.float32)
    rf = np.array([[-30.0, -1.0, -0.5, -6.0]], np.float32)
    m = np.ones_like(lp, dtype=bool)
    adv = np.zeros(1, np.float32)
    for est in ("k3", "low_var_kl"):
        _check_forward(lp, None, adv, m, ref_logp=rf, beta=1.0, kl_estimator=est)
        _check_grad(lp, None, adv, m, ref_logp=rf, beta=1.0, kl_estimator=est)
    out = sg.policy_loss(
        lp, None, adv, m, ref_logp=rf, beta=1.0, kl_estimator="low_var_kl", kl_bias_correction=False
    )
    # x = ref - lp = (-29, 24, 0, -3): kl = (10, 10, 0, e^-3 + 2) (the first two clamped twice), so
    # the gradient d/dlp = 1 - e^x flows only at the last token (and is 0 at x = 0); dapo divides by 4.
    np.testing.assert_allclose(out.loss, (20 + np.exp(-3.0) + 2) / 4, rtol=1e-6)
    np.testing.assert_allclose(out.grad, [[0.0, 0.0, 0.0, (1 - np.exp(-3.0)) / 4]], rtol=1e-6, atol=0)


@pytest.mark.parametrize("agg", ref.AGG_MODES)
@pytest.mark.parametrize("loss_type,level", CASES)
def test_forward_loss_agg_mode(loss_type, level, agg):
    rng = np.random.default_rng(_seed("agg", loss_type, level, agg))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 8, 17, mask_kind="bool")
    m[3] = False  # an empty row: "valid rows" and the grpo/luspo batch means differ here
    kw = dict(loss_type=loss_type, importance_sampling_level=level, loss_agg_mode=agg, beta=0.02, ref_logp=rf)
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)
    if agg == "seq-mean-token-sum-norm":
        _check_forward(lp, old, adv, m, loss_scale_factor=100.0, **kw)
        _check_grad(lp, old, adv, m, loss_scale_factor=100.0, **kw)


@pytest.mark.parametrize(
    "epsilon_low,epsilon_high,delta",
    [
        (0.2, None, None),
        (0.2, 0.28, None),
        (0.1, 0.5, None),
        (0.2, 0.28, 1.5),
        (0.3, 0.2, 1.1),
        (0.0, 0.0, None),
    ],
)
@pytest.mark.parametrize("loss_type,level", [c for c in CASES if c.values[0] != "cispo"])
def test_forward_epsilons_and_delta(loss_type, level, epsilon_low, epsilon_high, delta):
    rng = np.random.default_rng(_seed("eps", loss_type, level, epsilon_low, epsilon_high, delta))
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 16, 33, ratio_scale=0.4)
    kw = dict(
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        delta=delta,
    )
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("epsilon_high", [None, 0.5, 1.0, 5.0])
@pytest.mark.parametrize("level", LEVELS)
def test_cispo_epsilon_high_is_a_ratio_cap(level, epsilon_high):
    rng = np.random.default_rng(_seed("cispo", level, epsilon_high))
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 16, 33, ratio_scale=1.0)
    kw = dict(loss_type="cispo", importance_sampling_level=level, epsilon_high=epsilon_high)
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("num_items", [1.0, 7.5, 1000.0])
@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "vespo"])
def test_num_items(loss_type, num_items):
    rng = np.random.default_rng(_seed("items", loss_type, num_items))
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 6, 11)
    kw = dict(loss_type=loss_type, num_items=num_items, epsilon_high=_eps_high(loss_type))
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("max_completion_length", [None, 11, 64, 1024])
def test_dr_grpo_max_completion_length(max_completion_length):
    rng = np.random.default_rng(_seed("mcl", max_completion_length))
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 6, 11)
    kw = dict(loss_type="dr_grpo", max_completion_length=max_completion_length)
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


def test_sapo_and_vespo_parameters():
    rng = np.random.default_rng(7)
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 12, 9, ratio_scale=0.5, extreme=False)
    for kw in (
        dict(loss_type="sapo", sapo_temperature_pos=0.5, sapo_temperature_neg=2.0),
        dict(loss_type="vespo", vespo_k_pos=1.0, vespo_lambda_pos=1.5, vespo_k_neg=4.0, vespo_lambda_neg=0.5),
    ):
        _check_forward(lp, old, adv, m, **kw)
        _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("clip_ratio_c", [1.5, 3.0, 10.0])
def test_vanilla_clip_ratio_c(clip_ratio_c):
    rng = np.random.default_rng(_seed("c", clip_ratio_c))
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 16, 33)
    kw = dict(loss_type="vanilla", clip_ratio_c=clip_ratio_c, epsilon_high=0.28)
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize(
    "log_ratio,adv,loss,clipfrac_lower",
    [
        (1.0, 1.0, -1.2, 0.0),  # A > 0, r > 1 + eps: -1.2 A
        (-5.0, -1.0, 0.8, 0.0),  # A < 0, r < 1 - eps: -0.8 A
        (5.0, -1.0, 3.0, 1.0),  # A < 0, r = e^5: dual clip at -A c = 3
        (25.0, -1.0, 3.0, 1.0),  # log ratio clamped to 20, dual-clipped
        (0.1, 1.0, -np.exp(0.1), 0.0),  # inside the clip range: -A r
        (-5.0, 1.0, -np.exp(-5.0), 0.0),  # A > 0, r < 1 - eps: -A r is the larger one
    ],
)
def test_vanilla_known_values(log_ratio, adv, loss, clipfrac_lower):
    """verl `compute_policy_loss_vanilla` on one token, values worked out by hand."""
    lp = np.array([[log_ratio - 1.0]])
    old = np.array([[-1.0]])
    out = sg.policy_loss(lp, old, np.array([adv]), np.ones((1, 1), bool), loss_type="vanilla")
    np.testing.assert_allclose(out.loss, loss, rtol=1e-6)
    assert out.metrics["pg_clipfrac_lower"] == clipfrac_lower


@pytest.mark.parametrize("loss_type,agg", [("vanilla", None), ("dapo", "token-mean"), ("grpo", "token-mean")])
def test_token_mean_divides_by_total_mask_weight(loss_type, agg):
    """verl's token-mean is sum(M L) / sum(M) (masked_mean, + 1e-8 only against an all-zero mask),
    also when float weights sum to less than 1; clamping the denominator at 1 is TRL's bnpo/dapo
    rule, not verl's. (The vanilla metrics already divide by sum(M).)"""
    lp = np.array([[-1.0, -2.0], [-0.5, -1.0]])
    old = lp - 0.05
    adv = np.array([1.0, -2.0])
    m = np.array([[0.25, 0.25], [0.1, 0.0]])
    out = sg.policy_loss(lp, old, adv, m, loss_type=loss_type, loss_agg_mode=agg)
    r = np.exp(0.05)
    expected = (-(0.25 + 0.25) * r * 1.0 + 0.1 * r * 2.0) / 0.6
    np.testing.assert_allclose(out.loss, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "level,gap",
    [(level, gap) for level in LEVELS for gap in (1.0, 3.0)]
    + [("token", gap) for gap in (7.0, 15.0, 25.0)]
    + [pytest.param("sequence", gap) for gap in (7.0, 15.0, 25.0)],
)
def test_sequence_level_kl_gradient_precision(level, gap):
    """One token, r = 1 (old_logp=None), A = 0, bias-corrected k3 with ref - logp = gap: the
    gradient d/dlp [kl * r] = r (lp - ref) = -gap (docs/formulas.md, section 2), exactly
    representable. Its two parts kl' r and kl r' are ~e^gap each and cancel, so they must be
    combined in float64 (or analytically, as the token-level path does)."""
    lp = np.array([[-gap]])
    out = sg.policy_loss(
        lp,
        None,
        np.zeros(1),
        np.ones((1, 1), bool),
        beta=1.0,
        ref_logp=np.zeros((1, 1)),
        importance_sampling_level=level,
    )
    np.testing.assert_allclose(out.grad, [[-gap]], rtol=1e-6)


def test_special_shapes():
    """B = 1 and T = 1 are ordinary batches (covered above). T = 0 (no completion token at all) is
    not specified: either a zero loss with an empty (B, 0) grad and TRL's metrics, or a ValueError
    that names logp, is acceptable - never a crash, inf or NaN loss."""
    for lt in LOSS_TYPES:
        for B in (1, 3):
            z = np.zeros((B, 0), np.float32)
            kw = dict(loss_type=lt, epsilon_high=_eps_high(lt))
            if lt == "dr_grpo":
                kw["max_completion_length"] = 8  # the default (T = 0) would divide by zero
            try:
                out = sg.policy_loss(z, z, np.ones(B, np.float32), np.zeros((B, 0), bool), **kw)
            except ValueError as error:
                assert "logp" in str(error)
                continue
            assert out.loss == 0.0 and out.grad.shape == (B, 0) and out.grad.dtype == np.float32
            _, metrics = ref.policy_loss(z, z, np.ones(B, np.float32), np.zeros((B, 0), bool), **kw)
            ref.assert_metrics_close(out.metrics, metrics)


@pytest.mark.parametrize("loss_type,level", CASES)
def test_all_rows_empty(loss_type, level):
    """A batch with no live token: loss 0, grad 0, metrics as TRL computes them."""
    rng = np.random.default_rng(_seed("empty", loss_type, level))
    lp, old, rf, adv, _ = ref.make_loss_inputs(rng, 4, 6)
    m = np.zeros((4, 6), bool)
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.1, ref_logp=rf)
    out = _check_forward(lp, old, adv, m, **kw)
    assert out.loss == 0.0
    assert not out.grad.any()


# --------------------------------------------------------------------------------------------------
# Gradient
# --------------------------------------------------------------------------------------------------

GRAD_CONFIGS = {
    "plain": dict(),
    "kl-k3": dict(beta=0.04, kl_estimator="k3"),
    "kl-k3-nobc": dict(beta=0.04, kl_estimator="k3", kl_bias_correction=False),
    "kl-lowvar": dict(beta=0.1, kl_estimator="low_var_kl"),
    "kl-k1": dict(beta=0.1, kl_estimator="k1"),
    "kl-abs": dict(beta=0.1, kl_estimator="abs", kl_bias_correction=False),
    "kl-k2": dict(beta=0.1, kl_estimator="k2"),
    "delta": dict(delta=1.4, epsilon_high=0.28),
}


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (16, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("config", list(GRAD_CONFIGS))
@pytest.mark.parametrize("loss_type,level", CASES)
def test_grad_matches_torch_autograd(loss_type, level, config, shape, seed):
    rng = np.random.default_rng(_seed("grad", loss_type, level, config, shape, seed))
    B, T = shape
    lp, old, rf, adv, m = ref.make_loss_inputs(
        rng, B, T, adv2d=seed == 1, mask_kind="float32" if seed == 1 else "bool", extreme=seed == 0
    )
    kw = dict(GRAD_CONFIGS[config], loss_type=loss_type, importance_sampling_level=level, ref_logp=rf)
    if loss_type == "cispo":
        kw["epsilon_high"] = 4.0
    _check_grad(lp, old, adv, m, **kw)


@pytest.mark.parametrize("loss_type,level", CASES)
def test_grad_ties_follow_torch(loss_type, level):
    """old_logp=None makes r exactly 1: the clamp bounds and the min/max ties of TRL's formulas are
    hit exactly, so torch's tie rules (no gradient at a clamp bound, 0.5/0.5 split of min/max)
    decide the gradient."""
    rng = np.random.default_rng(_seed("ties", loss_type, level))
    lp, _, rf, adv, m = ref.make_loss_inputs(rng, 5, 6)
    adv[0] = 0.0
    for kw in (
        dict(),
        dict(delta=1.0),  # c1 = clamp(r, max=1): r sits on the bound
        dict(epsilon_low=0.0),  # c2 lower bound = 1 = r
        dict(epsilon_low=0.0, epsilon_high=0.0),
        dict(epsilon_high=1.0),  # cispo: clamp(r, max=1) at the bound (detached anyway)
        dict(beta=0.1, ref_logp=rf),
    ):
        _check_grad(lp, None, adv, m, loss_type=loss_type, importance_sampling_level=level, **kw)


def test_grad_tie_values():
    """The tie rules in numbers: with r = 1 and delta = 1, dapo's -min(c1 A, c2 A) has gradient
    -0.5 A / n (c1 sits on its clamp bound, so only c2's half flows)."""
    lp = np.array([[-1.0, -2.0]], np.float32)
    m = np.ones((1, 2), bool)
    out = sg.policy_loss(lp, None, np.array([2.0], np.float32), m, loss_type="dapo", delta=1.0)
    np.testing.assert_array_equal(out.grad, [[-0.5, -0.5]])
    out = sg.policy_loss(lp, None, np.array([2.0], np.float32), m, loss_type="dapo")
    np.testing.assert_array_equal(out.grad, [[-1.0, -1.0]])


FD_TYPES = [c for c in CASES if c.values[0] not in ("cispo", "vespo")]  # those detach their weights


@pytest.mark.parametrize("config", ["plain", "kl-k3", "kl-k3-nobc", "kl-k2", "kl-lowvar"])
@pytest.mark.parametrize("loss_type,level", FD_TYPES)
def test_grad_matches_finite_differences(loss_type, level, config):
    """Central differences of the library's own loss (float64 inputs; the library computes the loss
    in float64). Log-ratios stay within +-0.1 so every ratio is strictly inside the clip range and no
    kink lies within h. Error budget: truncation O(h^2) ~ 1e-12, cancellation ~ 1e-16 |L| / h ~ 1e-10,
    float32 grad rounding 6e-8 relative: rtol 1e-5 leaves a wide margin."""
    rng = np.random.default_rng(_seed("fd", loss_type, level, config))
    B, T = 3, 4
    lp = -rng.uniform(0.5, 3.0, size=(B, T))
    old = lp - rng.uniform(-0.1, 0.1, size=(B, T))
    rf = lp + rng.choice([-1, 1], size=(B, T)) * rng.uniform(0.05, 1.0, size=(B, T))
    adv = rng.normal(size=B)
    m = np.ones((B, T), bool)
    m[1, 2:] = False
    kw = dict(GRAD_CONFIGS[config], loss_type=loss_type, importance_sampling_level=level, ref_logp=rf)
    grad = sg.policy_loss(lp, old, adv, m, **kw).grad
    fd = np.zeros_like(lp)
    for i in range(B):
        for j in range(T):
            h = 1e-6 * max(1.0, abs(lp[i, j]))
            up, down = lp.copy(), lp.copy()
            up[i, j] += h
            down[i, j] -= h
            fd[i, j] = (
                sg.policy_loss(up, old, adv, m, **kw).loss - sg.policy_loss(down, old, adv, m, **kw).loss
            ) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(fd).max()))
    assert not grad[~m].any() and not fd[~m].any()


# --------------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type,level", CASES)
def test_old_logp_none_is_detached_logp(loss_type, level):
    rng = np.random.default_rng(_seed("none", loss_type, level))
    lp, _, rf, adv, m = ref.make_loss_inputs(rng, 7, 9, mask_kind="float32")
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.05, ref_logp=rf)
    a = sg.policy_loss(lp, None, adv, m, **kw)
    b = sg.policy_loss(lp, lp.copy(), adv, m, **kw)
    ref.assert_close(a.loss, b.loss)
    ref.assert_close(a.grad, b.grad)
    ref.assert_metrics_close(a.metrics, b.metrics)
    _check_grad(lp, None, adv, m, **kw)
    _check_forward(lp, None, adv, m, **kw)


@pytest.mark.parametrize("half", HALF_TYPES)
@pytest.mark.parametrize("loss_type,level", CASES)
def test_half_precision_equals_float32_on_upcast_values(loss_type, level, half):
    rng = np.random.default_rng(_seed("half", loss_type, level, half))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 9, 17)
    lp, old, rf = (x.astype(half) for x in (lp, old, rf))
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.05, ref_logp=rf)
    out = sg.policy_loss(lp, old, adv, m, **kw)
    up = dict(kw, ref_logp=rf.astype(np.float32))
    expect = sg.policy_loss(lp.astype(np.float32), old.astype(np.float32), adv, m, **up)
    assert out.loss == expect.loss
    np.testing.assert_array_equal(out.grad, expect.grad)
    assert out.metrics == expect.metrics
    assert out.grad.dtype == np.float32
    # and both against the references on the upcast values
    _check_forward(lp.astype(np.float32), old.astype(np.float32), adv, m, **up)
    _check_grad(lp.astype(np.float32), old.astype(np.float32), adv, m, **up)


@pytest.mark.parametrize("half", HALF_TYPES)
def test_half_precision_old_logp_none_and_mixed(half):
    rng = np.random.default_rng(3)
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 4, 8)
    h = lp.astype(half)
    a = sg.policy_loss(h, None, adv, m)
    b = sg.policy_loss(h.astype(np.float32), None, adv, m)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.grad, b.grad)
    # half advantages are accepted too (upcast)
    c = sg.policy_loss(h, old.astype(half), adv.astype(half), m)
    d = sg.policy_loss(h.astype(np.float32), old.astype(half).astype(np.float32), adv.astype(half), m)
    assert c.loss == d.loss


@pytest.mark.parametrize("mask_kind", ["bool", "float32"])
@pytest.mark.parametrize("loss_type,level", CASES)
def test_poisoned_padding_is_never_read(loss_type, level, mask_kind):
    rng = np.random.default_rng(_seed("poison", loss_type, level, mask_kind))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 8, 13, adv2d=True, mask_kind=mask_kind)
    dead = np.asarray(m) == 0
    kw = dict(
        loss_type=loss_type, importance_sampling_level=level, beta=0.05, epsilon_high=_eps_high(loss_type)
    )
    clean = sg.policy_loss(lp, old, adv, m, ref_logp=rf, **kw)
    for poison in (np.nan, -np.inf, np.inf, 1e30):
        p_lp, p_old, p_rf, p_adv = (x.copy() for x in (lp, old, rf, adv))
        p_lp[dead] = poison
        p_old[dead] = -poison if not np.isnan(poison) else poison
        p_rf[dead] = poison
        p_adv[dead] = poison
        got = sg.policy_loss(p_lp, p_old, p_adv, m, ref_logp=p_rf, **kw)
        assert got.loss == clean.loss
        np.testing.assert_array_equal(got.grad, clean.grad)
        assert got.metrics.keys() == clean.metrics.keys()
        for key in clean.metrics:
            np.testing.assert_array_equal(got.metrics[key], clean.metrics[key], err_msg=key)


@pytest.mark.parametrize("mask_kind", ref.MASK_KINDS + ("float64",))
@pytest.mark.parametrize("loss_type,level", CASES)
def test_grad_is_zero_on_masked_tokens(loss_type, level, mask_kind):
    rng = np.random.default_rng(_seed("zero", loss_type, level, mask_kind))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 8, 13, mask_kind=mask_kind)
    dead = np.asarray(m) == 0
    for level_kw in (dict(), dict(beta=0.1, ref_logp=rf)):
        out = sg.policy_loss(
            lp, old, adv, m, loss_type=loss_type, importance_sampling_level=level, **level_kw
        )
        assert np.all(out.grad[dead] == 0.0)
        assert np.all(np.isfinite(out.grad))


@pytest.mark.parametrize("grad_scale", [2.0, 0.37, 1e-3, 0.0])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grad_scale_scales_only_grad(loss_type, grad_scale):
    rng = np.random.default_rng(_seed("scale", loss_type, grad_scale))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 6, 10)
    kw = dict(loss_type=loss_type, beta=0.05, ref_logp=rf)
    one = sg.policy_loss(lp, old, adv, m, **kw)
    scaled = sg.policy_loss(lp, old, adv, m, grad_scale=grad_scale, **kw)
    assert scaled.loss == one.loss
    assert scaled.metrics == one.metrics
    # float32 grads: scaling before or after the rounding differs by at most one rounding
    np.testing.assert_allclose(scaled.grad, grad_scale * one.grad.astype(np.float64), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_repeated_calls_are_bit_identical(loss_type):
    rng = np.random.default_rng(_seed("repeat", loss_type))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 64, 257, mask_kind="float32")
    kw = dict(loss_type=loss_type, beta=0.04, ref_logp=rf)
    first = sg.policy_loss(lp, old, adv, m, **kw)
    for _ in range(3):
        again = sg.policy_loss(lp, old, adv, m, **kw)
        assert again.loss == first.loss
        np.testing.assert_array_equal(again.grad, first.grad)
        assert again.metrics == first.metrics


def test_results_do_not_depend_on_thread_count(tmp_path):
    """Fixed reduction order: a 1-thread process gives the same bits as the default pool."""
    script = textwrap.dedent(
        """
        import sys, numpy as np, sgpo_rs as sg
        rng = np.random.default_rng(11)
        B, T = 256, 1031
        lp = -rng.exponential(1.5, size=(B, T)).astype(np.float32)
        old = (lp - rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
        m = rng.random((B, T)) < 0.8
        adv = rng.normal(size=B).astype(np.float32)
        out = [sg.policy_loss(lp, old, adv, m, loss_type=lt).grad for lt in ("dapo", "grpo", "vanilla")]
        losses = [sg.policy_loss(lp, old, adv, m, loss_type=lt).loss for lt in ("dapo", "grpo", "vanilla")]
        r = rng.normal(size=4096 * 8)
        a = sg.group_advantages(r, group_size=8)
        np.savez(sys.argv[1], *out, np.array(losses), a)
        """
    )
    results = []
    for threads in ("1", "2"):
        path = tmp_path / f"out{threads}.npz"
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=120)
        with np.load(path) as data:
            results.append([data[k] for k in sorted(data.files)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 5, 7, adv2d=True, mask_kind="float32")
    copies = [x.copy() for x in (lp, old, rf, adv, m)]
    sg.policy_loss(lp, old, adv, m, ref_logp=rf, beta=0.1)
    for before, after in zip(copies, (lp, old, rf, adv, m)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_float64_inputs(loss_type):
    """float64 log-probs are read as they are (no rounding to float32 first)."""
    rng = np.random.default_rng(_seed("f64", loss_type))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 6, 9, dtype=np.float64, extreme=False)
    kw = dict(loss_type=loss_type, beta=0.05, ref_logp=rf, epsilon_high=_eps_high(loss_type))
    _check_forward(lp, old, adv, m, **kw)
    _check_grad(lp, old, adv, m, **kw)
    # a change below float32 resolution must show up in the loss
    lp2 = lp.copy()
    lp2[np.asarray(m) != 0] += 1e-9
    assert sg.policy_loss(lp2, old, adv, m, **kw).loss != sg.policy_loss(lp, old, adv, m, **kw).loss


def test_python_defaults_are_the_cores():
    """The keyword defaults of sgpo_rs.policy_loss (which sgpo_rs.torch reads too) are the Rust
    engine's LossOptions::default(): the options cross the binding as one mapping, defined once."""
    import inspect

    from sgpo_rs import _core

    signature = inspect.signature(sg.policy_loss)
    python = {
        name: p.default
        for name, p in signature.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("ref_logp", "out")
    }
    assert python == _core.loss_option_defaults()


def test_the_gradient_goes_into_out():
    rng = np.random.default_rng(5)
    logp = rng.normal(-1, 0.3, (4, 33)).astype(np.float32)
    old = (logp + rng.normal(0, 0.1, logp.shape)).astype(np.float32)
    adv = rng.normal(size=4).astype(np.float32)
    mask = rng.random((4, 33)) > 0.3
    fresh = sg.policy_loss(logp, old, adv, mask, beta=0.0)
    out = np.full((4, 33), np.nan, dtype=np.float32)
    reused = sg.policy_loss(logp, old, adv, mask, out=out)
    assert reused.grad is out and np.array_equal(out, fresh.grad) and reused.loss == fresh.loss
    for bad in (np.zeros((4, 33)), np.zeros((4, 32), np.float32), np.zeros((33, 4), np.float32).T):
        with pytest.raises((ValueError, TypeError), match="out"):
            sg.policy_loss(logp, old, adv, mask, out=bad)


def test_sgpo_loss_writes_its_gradient_into_out():
    torch = pytest.importorskip("torch")
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(6)
    logp = torch.from_numpy(rng.normal(-1, 0.3, (3, 17)).astype(np.float32))
    old = logp + 0.05
    adv = torch.from_numpy(rng.normal(size=3).astype(np.float32))
    mask = torch.from_numpy(rng.random((3, 17)) > 0.2)
    x = logp.clone().requires_grad_(True)
    sgpo_loss(x, old, adv, mask)[0].backward()
    y = logp.clone().requires_grad_(True)
    buffer = torch.full((3, 17), float("nan"))
    sgpo_loss(y, old, adv, mask, out=buffer)[0].backward()
    assert torch.equal(x.grad, y.grad) and torch.equal(buffer, x.grad)
    with pytest.raises(ValueError, match="out: expected a contiguous float32 tensor"):
        sgpo_loss(y, old, adv, mask, out=torch.zeros(3, 17, dtype=torch.float64))


def test_loss_type_registry_is_what_the_loss_does():
    """Each registry row matches the loss: the metrics it returns (with ``kl`` first when beta is
    set), its default aggregation's gradient-accumulation rule in ``sgpo_rs.torch``, and the names
    an unknown loss type's error lists. The float64 reference implements every registered type."""
    import sgpo_rs.torch as sgt
    from reference import LOSS_TYPES as REFERENCE_TYPES

    infos = sg.loss_types()
    assert tuple(infos) == sg.LOSS_TYPES == REFERENCE_TYPES
    assert {info.origin for info in infos.values()} == {"trl", "verl"}
    rng = np.random.default_rng(0)
    logp = rng.normal(-1.0, 0.3, size=(3, 6)).astype(np.float32)
    old = logp + rng.normal(0, 0.2, size=logp.shape).astype(np.float32)
    mask = np.ones(logp.shape, dtype=bool)
    for name, info in infos.items():
        out = sg.policy_loss(
            logp, old, np.array([1.0, -0.5, 0.2], np.float32), mask, ref_logp=old, beta=0.04, loss_type=name
        )
        assert list(out.metrics) == ["kl", *info.metrics], name
        assert (name in sgt._NUM_ITEMS_LOSS_TYPES) == (not info.divides_by_gradient_accumulation)
    with pytest.raises(ValueError) as error:
        sg.policy_loss(logp, old, np.zeros(3, np.float32), mask, loss_type="ppo")
    assert all(f'"{name}"' in str(error.value) for name in infos)

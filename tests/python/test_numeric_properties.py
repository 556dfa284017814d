"""Property tests (hypothesis): random small shapes and values for group_advantages and policy_loss
never produce NaN/inf for finite inputs, and match the float64 references.

Tolerances: ``rtol=1e-6`` and ``atol = 1e-6 * max(1, |ref|)`` as elsewhere, plus a condition term
``1e-12 * (sum of |terms|)`` where a result is a sum of terms that may cancel (inputs here reach
log-ratios of +-30, so single terms reach e^60 while their sum can be ~0; a correctly computed float64
sum is accurate to ~1e-16 x n of the terms' magnitude, and 1e-12 leaves room for n and the order).
For advantages, ``eps >= 1e-6`` and ``|r| <= 100`` bound the conditioning of (r - mean) / (std + eps)
to ~1e-16 * 100 * n / 1e-6 < 1e-6 absolute.
"""

from __future__ import annotations

import math

import numpy as np
import reference as ref
import sgpo_rs as sg
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_torch import torch_grad

# Derandomized and without an example database: the same examples on every run and machine, nothing
# written into the repository.
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------------
# group_advantages
# --------------------------------------------------------------------------------------------------

reward_values = st.one_of(
    st.floats(-100.0, 100.0, allow_nan=False, width=64),
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1.00001, 1e-5]),
    st.just(math.nan),
)


@st.composite
def reward_batches(draw):
    size = draw(st.integers(1, 6))
    if draw(st.booleans()):
        n_groups = draw(st.integers(1, 6))
        n = n_groups * size
        layout = dict(group_size=size)
    else:
        n = draw(st.integers(1, 24))
        ids = draw(st.lists(st.sampled_from(["a", "b", "c", "zz", "q1"]), min_size=n, max_size=n))
        layout = dict(group_ids=ids)
    rewards = np.array(draw(st.lists(reward_values, min_size=n, max_size=n)), dtype=np.float64)
    return rewards, layout


@SETTINGS
@given(
    batch=reward_batches(),
    scale=st.sampled_from(["group", "batch", "none"]),
    singleton=st.sampled_from(["zero", "unit"]),
    eps=st.one_of(st.sampled_from([1e-4, 1e-6]), st.floats(1e-6, 1.0)),
)
def test_group_advantages_finite_and_match_reference(batch, scale, singleton, eps):
    rewards, layout = batch
    if scale == "batch":
        singleton = "zero"  # unit singletons are verl's rule; verl has no batch scale
    out = sg.group_advantages(rewards, scale=scale, eps=eps, singleton=singleton, **layout)
    assert out.dtype == np.float32 and out.shape == rewards.shape
    assert np.all(np.isfinite(out))
    assert np.all(out[np.isnan(rewards)] == 0.0)
    ref.assert_close(out, ref.group_advantages(rewards, scale=scale, eps=eps, singleton=singleton, **layout))


@SETTINGS
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=32),
    spread=st.integers(-7, 2),
)
def test_small_spreads_keep_their_scale(values, spread):
    """r = c + d * 10^spread: the advantages do not depend on the offset c (up to its rounding) and
    their unbiased std is std / (std + eps)."""
    d = np.asarray(values) / 1e3
    assume(np.ptp(d) > 1e-3)
    r = 5.0 + d * 10.0**spread
    out = sg.group_advantages(r, group_size=r.size, eps=1e-6)
    ref.assert_close(out, ref.group_advantages(r, group_size=r.size, eps=1e-6))
    s = np.std(r, ddof=1)
    np.testing.assert_allclose(np.std(out.astype(np.float64), ddof=1), s / (s + 1e-6), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# policy_loss
# --------------------------------------------------------------------------------------------------

CONFIGS = [
    (lt, lv) for lt in ref.LOSS_TYPES for lv in ("token", "sequence") if (lt, lv) != ("vanilla", "sequence")
]


@st.composite
def loss_problems(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 6))  # T = 0: test_loss.py::test_special_shapes
    floats = st.floats(-30.0, 0.0, allow_nan=False, width=32)

    def matrix(elements):
        return np.array(draw(st.lists(elements, min_size=B * T, max_size=B * T)), dtype=np.float64).reshape(
            B, T
        )

    lp = matrix(floats).astype(np.float32)
    ratio_range = draw(st.sampled_from([0.125, 1.0, 30.0]))
    log_ratio = matrix(st.floats(-ratio_range, ratio_range, width=32))
    old = (lp - log_ratio).astype(np.float32) if draw(st.booleans()) else None
    rf = matrix(floats).astype(np.float32)
    adv2d = draw(st.booleans())
    adv_el = st.one_of(st.floats(-5.0, 5.0, width=32), st.just(0.0))
    adv = matrix(adv_el) if adv2d else np.array(draw(st.lists(adv_el, min_size=B, max_size=B)))
    adv = adv.astype(np.float32)
    if draw(st.booleans()):
        mask = matrix(st.sampled_from([0.0, 1.0])).astype(bool)
    else:
        mask = matrix(st.sampled_from([0.0, 0.5, 1.0, 1.5])).astype(np.float32)
    loss_type, level = draw(st.sampled_from(CONFIGS))
    kw = dict(loss_type=loss_type, importance_sampling_level=level)
    if draw(st.booleans()):
        kw.update(
            beta=draw(st.sampled_from([0.04, 0.5])),
            ref_logp=rf,
            kl_estimator=draw(st.sampled_from(ref.KL_ESTIMATORS)),
            kl_bias_correction=draw(st.booleans()),
        )
    kw["epsilon_low"] = draw(st.sampled_from([0.2, 0.0, 0.1]))
    kw["epsilon_high"] = draw(st.sampled_from([None, 0.28, 5.0]))
    if loss_type in ref.TRL_CLIP_TYPES and draw(st.booleans()):
        kw["delta"] = draw(st.sampled_from([1.0, 1.5, 3.0]))
    if draw(st.integers(0, 3)) == 0:
        kw["loss_agg_mode"] = draw(st.sampled_from(ref.AGG_MODES))
    if loss_type in ("dapo", "cispo", "vespo") and draw(st.booleans()):
        kw["num_items"] = draw(st.sampled_from([1.0, 3.0, 100.0]))
    if loss_type == "dr_grpo" and (T == 0 or draw(st.booleans())):
        kw["max_completion_length"] = draw(st.integers(1, 16))
    return lp, old, adv, mask, kw


@settings(SETTINGS, max_examples=300)
@given(problem=loss_problems())
def test_policy_loss_finite_and_matches_references(problem):
    lp, old, adv, mask, kw = problem
    out = sg.policy_loss(lp, old, adv, mask, **kw)
    assert math.isfinite(out.loss)
    assert out.grad.dtype == np.float32 and out.grad.shape == lp.shape
    assert np.all(np.isfinite(out.grad))
    assert np.all(out.grad[np.asarray(mask) == 0] == 0.0)
    live_rows = np.asarray(mask, dtype=np.float64).sum(-1) > 0
    for key, value in out.metrics.items():
        if key in ("clip_ratio/low_min", "clip_ratio/high_max") and not live_rows.any():
            continue  # TRL: nanmin/nanmax over rows without tokens is NaN
        assert math.isfinite(value), (key, value)

    loss, metrics, sizes = ref.policy_loss(lp, old, adv, mask, magnitudes=True, **kw)
    assert abs(out.loss - loss) <= 1e-6 * max(1.0, abs(loss)) + 1e-12 * sizes["loss"], (out.loss, loss)
    assert set(out.metrics) == set(metrics)
    for key, value in metrics.items():
        slack = 1e-12 * sizes["kl"] if key == "kl" else 0.0
        if math.isnan(value):
            assert math.isnan(out.metrics[key]), key
        else:
            assert abs(out.metrics[key] - value) <= 1e-6 * max(1.0, abs(value)) + slack, (
                key,
                out.metrics[key],
                value,
            )

    # gradient: torch autograd; the condition term uses the policy and KL parts separately
    _, g = torch_grad(lp, old, adv, mask, **kw)
    _, g_policy = torch_grad(lp, old, adv, mask, **dict(kw, beta=0.0))
    g_kl = g - g_policy
    # torch's own float64 autograd of the bias-corrected k3 KL adds r kl' and r' kl, each of size
    # ~e^|ref - logp|, that cancel to r (logp - ref): its error is ~1e-16 of that size per token.
    # Bound it by the KL gradient computed without the correction (same e^|x| terms, no cancel).
    _, g_uncorrected = torch_grad(lp, old, adv, mask, **dict(kw, kl_bias_correction=False))
    cancel = np.abs(g_uncorrected - g_policy) if kw.get("beta", 0.0) != 0.0 else 0.0
    tol = (
        1e-6 * max(1.0, float(np.abs(g).max(initial=0.0)))
        + 1e-12 * (np.abs(g_policy) + np.abs(g_kl))
        + 1e-14 * cancel
    )
    assert np.all(np.abs(out.grad - g) <= 1e-6 * np.abs(g) + tol)


@SETTINGS
@given(problem=loss_problems(), half=st.sampled_from([np.float16]))
def test_half_inputs_equal_float32_on_upcast_values(problem, half):
    lp, old, adv, mask, kw = problem
    h = dict(kw)
    if "ref_logp" in h:
        h["ref_logp"] = kw["ref_logp"].astype(half)
    lp_h = lp.astype(half)
    old_h = None if old is None else old.astype(half)
    out = sg.policy_loss(lp_h, old_h, adv, mask, **h)
    up = dict(h)
    if "ref_logp" in up:
        up["ref_logp"] = h["ref_logp"].astype(np.float32)
    expect = sg.policy_loss(
        lp_h.astype(np.float32), None if old is None else old_h.astype(np.float32), adv, mask, **up
    )
    assert out.loss == expect.loss or (math.isnan(out.loss) and math.isnan(expect.loss))
    np.testing.assert_array_equal(out.grad, expect.grad)

"""Every bad input raises ValueError or TypeError whose message names the argument; nothing crashes
the interpreter; non-contiguous arrays are handled (same result as contiguous copies)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs import _core

NAN, INF = np.nan, np.inf


def _raises(exc, name, fn):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


# --------------------------------------------------------------------------------------------------
# sgpo_rewards
# --------------------------------------------------------------------------------------------------

R = np.zeros(4)
FE = np.array([0, 1, -1, -2])
NS = np.array([2, 2, 1, 0])


def _rw(**kw):
    args = dict(rewards=R, first_error=FE, num_steps=NS, group_size=2)
    args.update(kw)
    return lambda: sg.sgpo_rewards(**args)


SGPO_CASES = [
    # shapes and lengths
    ("rewards-2d", ValueError, "rewards", _rw(rewards=np.zeros((2, 2)))),
    ("rewards-scalar", ValueError, "rewards", _rw(rewards=0.0)),
    ("rewards-empty", ValueError, "rewards", _rw(rewards=np.zeros(0), first_error=[], num_steps=[])),
    ("rewards-ragged", TypeError, "rewards", _rw(rewards=[[0.0], [0.0, 1.0]])),
    ("rewards-None", TypeError, "rewards", _rw(rewards=None)),
    ("first_error-short", ValueError, "first_error", _rw(first_error=FE[:3])),
    ("first_error-2d", ValueError, "first_error", _rw(first_error=FE.reshape(2, 2))),
    ("num_steps-long", ValueError, "num_steps", _rw(num_steps=np.append(NS, 3))),
    ("correct-short", ValueError, "correct", _rw(correct=[True])),
    ("credit-short", ValueError, "credit", lambda: sg.sgpo_rewards(R, credit=[0.5], group_size=2)),
    ("group_ids-short", ValueError, "group_ids", _rw(group_size=None, group_ids=[0, 0, 1])),
    ("group_ids-2d", ValueError, "group_ids", _rw(group_size=None, group_ids=[[0, 0], [1, 1]])),
    # grouping
    ("group_size-0", ValueError, "group_size", _rw(group_size=0)),
    ("group_size-negative", ValueError, "group_size", _rw(group_size=-2)),
    ("group_size-not-divisor", ValueError, "group_size", _rw(group_size=3)),
    ("group_size-too-big", ValueError, "group_size", _rw(group_size=8)),
    ("group_size-float", TypeError, "group_size", _rw(group_size=2.0)),
    ("group_size-bool", TypeError, "group_size", _rw(group_size=True)),
    ("group_size-str", TypeError, "group_size", _rw(group_size="2")),
    ("group-both", ValueError, "group_", _rw(group_ids=[0, 0, 1, 1])),
    ("group-neither", ValueError, "group_", _rw(group_size=None)),
    ("group_ids-unsortable", TypeError, "group_ids", _rw(group_size=None, group_ids=[None, "a", 1, 2.0])),
    # verdicts
    ("first_error-below-minus-2", ValueError, "first_error", _rw(first_error=[-3, 0, 0, 0])),
    ("first_error-too-large", ValueError, "first_error", _rw(first_error=[2, 0, 0, 0])),
    ("first_error-equal-num_steps", ValueError, "first_error", _rw(first_error=[0, 2, 0, 0])),
    ("first_error-huge", ValueError, "first_error", _rw(first_error=[2**40, 0, 0, 0])),
    ("first_error-fraction", TypeError, "first_error", _rw(first_error=[0.5, 0, 0, 0])),
    ("first_error-nan", TypeError, "first_error", _rw(first_error=[NAN, 0, 0, 0])),
    ("first_error-str", TypeError, "first_error", _rw(first_error=["0", "1", "-1", "-2"])),
    ("num_steps-0-judged", ValueError, "num_steps", _rw(num_steps=[0, 2, 1, 0])),
    ("num_steps-0-no-error-found", ValueError, "num_steps", _rw(num_steps=[2, 2, 0, 0])),
    ("num_steps-negative", ValueError, "num_steps", _rw(num_steps=[2, 2, 1, -1])),
    ("num_steps-complex", TypeError, "num_steps", _rw(num_steps=NS + 0j)),
    ("first_error-without-num_steps", ValueError, "first_error", _rw(num_steps=None)),
    ("num_steps-without-first_error", ValueError, "first_error", _rw(first_error=None)),
    ("no-verdicts-at-all", ValueError, "first_error", _rw(first_error=None, num_steps=None)),
    ("credit-and-first_error", ValueError, "credit", _rw(credit=[0.1] * 4)),
    (
        "credit-negative",
        ValueError,
        "credit",
        lambda: sg.sgpo_rewards(R, credit=[-0.1, 0, 0, 0], group_size=2),
    ),
    ("credit-above-1", ValueError, "credit", lambda: sg.sgpo_rewards(R, credit=[1.5, 0, 0, 0], group_size=2)),
    ("credit-inf", ValueError, "credit", lambda: sg.sgpo_rewards(R, credit=[INF, 0, 0, 0], group_size=2)),
    ("credit-str", TypeError, "credit", lambda: sg.sgpo_rewards(R, credit=["a"] * 4, group_size=2)),
    # values and dtypes
    ("rewards-inf", ValueError, "rewards", _rw(rewards=[0.0, INF, 0.0, 0.0])),
    ("rewards-minus-inf", ValueError, "rewards", _rw(rewards=[0.0, -INF, 0.0, 0.0])),
    ("rewards-str", TypeError, "rewards", _rw(rewards=["a", "b", "c", "d"])),
    ("rewards-object", TypeError, "rewards", _rw(rewards=np.array([0.0, None, 0.0, 0.0], dtype=object))),
    ("rewards-complex", TypeError, "rewards", _rw(rewards=R + 0j)),
    ("correct-float", TypeError, "correct", _rw(correct=[0.5, 0.0, 0.0, 0.0])),
    ("correct-2", TypeError, "correct", _rw(correct=[2, 0, 0, 0])),
    ("correct-str", TypeError, "correct", _rw(correct=["yes"] * 4)),
    ("mode-unknown", ValueError, "mode", _rw(mode="all_wrong")),
    ("credit_scale-negative", ValueError, "credit_scale", _rw(credit_scale=-0.5)),
    ("credit_scale-nan", ValueError, "credit_scale", _rw(credit_scale=NAN)),
    ("credit_scale-inf", ValueError, "credit_scale", _rw(credit_scale=INF)),
]


@pytest.mark.parametrize("exc,name,fn", [c[1:] for c in SGPO_CASES], ids=[c[0] for c in SGPO_CASES])
def test_sgpo_rewards_rejects(exc, name, fn):
    _raises(exc, name, fn)


# --------------------------------------------------------------------------------------------------
# group_advantages / token_advantages
# --------------------------------------------------------------------------------------------------


def _ga(**kw):
    args = dict(rewards=R, group_size=2)
    args.update(kw)
    return lambda: sg.group_advantages(**args)


A2 = np.zeros(2)
M2 = np.ones((2, 3))

ADV_CASES = [
    ("rewards-2d", ValueError, "rewards", _ga(rewards=np.zeros((2, 2)))),
    ("rewards-empty", ValueError, "rewards", _ga(rewards=[])),
    ("rewards-inf", ValueError, "rewards", _ga(rewards=[0.0, INF, 0.0, 0.0])),
    ("rewards-minus-inf", ValueError, "rewards", _ga(rewards=[0.0, -INF, 0.0, 0.0])),
    ("rewards-str", TypeError, "rewards", _ga(rewards=["1", "2", "3", "4"])),
    ("rewards-object", TypeError, "rewards", _ga(rewards=np.array([1.0, {}, 2.0, 3.0], dtype=object))),
    ("rewards-complex", TypeError, "rewards", _ga(rewards=R + 1j)),
    ("rewards-None", TypeError, "rewards", _ga(rewards=None)),
    ("group_size-0", ValueError, "group_size", _ga(group_size=0)),
    ("group_size-negative", ValueError, "group_size", _ga(group_size=-1)),
    ("group_size-not-divisor", ValueError, "group_size", _ga(group_size=3)),
    ("group_size-float", TypeError, "group_size", _ga(group_size=2.5)),
    ("group-both", ValueError, "group_", _ga(group_ids=[0, 0, 1, 1])),
    ("group-neither", ValueError, "group_", _ga(group_size=None)),
    ("group_ids-short", ValueError, "group_ids", _ga(group_size=None, group_ids=["a", "b"])),
    ("group_ids-unsortable", TypeError, "group_ids", _ga(group_size=None, group_ids=[None, "a", 1, 2.0])),
    ("scale-unknown", ValueError, "scale", _ga(scale="std")),
    ("singleton-unknown", ValueError, "singleton", _ga(singleton="one")),
    ("eps-negative", ValueError, "eps", _ga(eps=-1e-4)),
    ("eps-nan", ValueError, "eps", _ga(eps=NAN)),
    ("eps-inf", ValueError, "eps", _ga(eps=INF)),
    # token_advantages
    ("tok-advantages-2d", ValueError, "advantages", lambda: sg.token_advantages(np.zeros((2, 2)), M2)),
    ("tok-mask-1d", ValueError, "mask", lambda: sg.token_advantages(A2, np.ones(2))),
    ("tok-mask-rows", ValueError, "mask", lambda: sg.token_advantages(A2, np.ones((3, 3)))),
    ("tok-mask-negative", ValueError, "mask", lambda: sg.token_advantages(A2, -M2)),
    ("tok-mask-negative-int", ValueError, "mask", lambda: sg.token_advantages(A2, -np.ones((2, 3), np.int8))),
    ("tok-mask-nan", ValueError, "mask", lambda: sg.token_advantages(A2, M2 * NAN)),
    ("tok-mask-inf", ValueError, "mask", lambda: sg.token_advantages(A2, M2 * INF)),
    ("tok-mask-str", TypeError, "mask", lambda: sg.token_advantages(A2, np.full((2, 3), "1"))),
    ("tok-mask-complex", TypeError, "mask", lambda: sg.token_advantages(A2, M2 + 0j)),
    ("tok-mask-object", TypeError, "mask", lambda: sg.token_advantages(A2, np.full((2, 3), None))),
    ("tok-advantages-nan", ValueError, "advantages", lambda: sg.token_advantages([NAN, 0.0], M2)),
    ("tok-advantages-inf", ValueError, "advantages", lambda: sg.token_advantages([0.0, -INF], M2)),
    ("tok-advantages-str", TypeError, "advantages", lambda: sg.token_advantages(["a", "b"], M2)),
    ("tok-advantages-complex", TypeError, "advantages", lambda: sg.token_advantages(A2 + 0j, M2)),
]


@pytest.mark.parametrize("exc,name,fn", [c[1:] for c in ADV_CASES], ids=[c[0] for c in ADV_CASES])
def test_advantages_reject(exc, name, fn):
    _raises(exc, name, fn)


# --------------------------------------------------------------------------------------------------
# policy_loss
# --------------------------------------------------------------------------------------------------

B, T = 2, 3
LP = -np.ones((B, T), np.float32)
ADV = np.ones(B, np.float32)
MASK = np.ones((B, T), bool)


def _at(x, value, where=(0, 1)):
    y = np.array(x, dtype=np.float64 if np.asarray(x).dtype == bool else None, copy=True)
    y[where] = value
    return y


def _pl(**kw):
    args = dict(logp=LP, old_logp=LP, advantages=ADV, mask=MASK)
    args.update(kw)
    return lambda: sg.policy_loss(**args)


LOSS_CASES = [
    # shapes
    ("logp-1d", ValueError, "logp", _pl(logp=LP[0])),
    ("logp-3d", ValueError, "logp", _pl(logp=LP[None])),
    (
        "logp-empty-batch",
        ValueError,
        "logp",
        _pl(logp=LP[:0], old_logp=LP[:0], advantages=ADV[:0], mask=MASK[:0]),
    ),
    ("old_logp-shape", ValueError, "old_logp", _pl(old_logp=LP[:, :2])),
    ("ref_logp-shape", ValueError, "ref_logp", _pl(ref_logp=LP[:1], beta=0.1)),
    ("mask-shape", ValueError, "mask", _pl(mask=MASK[:, :2])),
    ("mask-1d", ValueError, "mask", _pl(mask=MASK[0])),
    ("advantages-length", ValueError, "advantages", _pl(advantages=np.ones(B + 1))),
    ("advantages-2d-shape", ValueError, "advantages", _pl(advantages=np.ones((B, T + 1)))),
    ("advantages-3d", ValueError, "advantages", _pl(advantages=np.ones((B, T, 1)))),
    ("logp-None", TypeError, "logp", _pl(logp=None)),
    ("advantages-None", TypeError, "advantages", _pl(advantages=None)),
    ("mask-None", TypeError, "mask", _pl(mask=None)),
    ("logp-ragged", TypeError, "logp", _pl(logp=[[0.0, 1.0], [0.0]])),
    # non-finite values at unmasked tokens
    *[
        (f"{name}-{tag}", ValueError, name, _pl(**{name: _at(LP, v)}, ref_logp=LP, beta=0.1))
        for name in ("logp", "old_logp")
        for tag, v in (("nan", NAN), ("inf", INF), ("minus-inf", -INF))
    ],
    *[
        (f"ref_logp-{tag}", ValueError, "ref_logp", _pl(ref_logp=_at(LP, v), beta=0.1))
        for tag, v in (("nan", NAN), ("inf", INF), ("minus-inf", -INF))
    ],
    *[
        (f"advantages-{tag}", ValueError, "advantages", _pl(advantages=np.array([v, 1.0])))
        for tag, v in (("nan", NAN), ("inf", INF), ("minus-inf", -INF))
    ],
    *[
        (f"advantages-2d-{tag}", ValueError, "advantages", _pl(advantages=_at(np.ones((B, T)), v)))
        for tag, v in (("nan", NAN), ("inf", INF), ("minus-inf", -INF))
    ],
    ("mask-negative", ValueError, "mask", _pl(mask=_at(MASK, -0.5))),
    ("mask-negative-int", ValueError, "mask", _pl(mask=-np.ones((B, T), np.int64))),
    ("mask-nan", ValueError, "mask", _pl(mask=_at(MASK, NAN))),
    ("mask-inf", ValueError, "mask", _pl(mask=_at(MASK, INF))),
    # dtypes
    ("logp-str", TypeError, "logp", _pl(logp=np.full((B, T), "-1"))),
    ("logp-object", TypeError, "logp", _pl(logp=np.full((B, T), None))),
    ("logp-complex", TypeError, "logp", _pl(logp=LP + 0j)),
    ("logp-int", TypeError, "logp", _pl(logp=np.zeros((B, T), np.int64))),
    ("logp-bool", TypeError, "logp", _pl(logp=MASK)),
    ("old_logp-complex", TypeError, "old_logp", _pl(old_logp=LP + 0j)),
    ("old_logp-str", TypeError, "old_logp", _pl(old_logp=np.full((B, T), "x"))),
    ("ref_logp-str", TypeError, "ref_logp", _pl(ref_logp=np.full((B, T), "x"), beta=0.1)),
    ("ref_logp-object", TypeError, "ref_logp", _pl(ref_logp=np.full((B, T), None), beta=0.1)),
    ("advantages-complex", TypeError, "advantages", _pl(advantages=ADV + 0j)),
    ("advantages-str", TypeError, "advantages", _pl(advantages=np.array(["a", "b"]))),
    ("advantages-object", TypeError, "advantages", _pl(advantages=np.array([1.0, None], dtype=object))),
    ("mask-complex", TypeError, "mask", _pl(mask=MASK + 0j)),
    ("mask-str", TypeError, "mask", _pl(mask=np.full((B, T), "1"))),
    ("mask-object", TypeError, "mask", _pl(mask=np.full((B, T), None))),
    # options
    ("loss_type-unknown", ValueError, "loss_type", _pl(loss_type="ppo")),
    (
        "importance_sampling_level-unknown",
        ValueError,
        "importance_sampling_level",
        _pl(importance_sampling_level="seq"),
    ),
    ("kl_estimator-unknown", ValueError, "kl_estimator", _pl(kl_estimator="k4", beta=0.1, ref_logp=LP)),
    ("loss_agg_mode-unknown", ValueError, "loss_agg_mode", _pl(loss_agg_mode="token-sum")),
    ("beta-without-ref_logp", ValueError, "ref_logp", _pl(beta=0.04)),
    ("beta-nan", ValueError, "beta", _pl(beta=NAN, ref_logp=LP)),
    ("epsilon_low-negative", ValueError, "epsilon_low", _pl(epsilon_low=-0.2)),
    ("epsilon_low-nan", ValueError, "epsilon_low", _pl(epsilon_low=NAN)),
    ("epsilon_high-negative", ValueError, "epsilon_high", _pl(epsilon_high=-0.2)),
    ("epsilon_high-inf", ValueError, "epsilon_high", _pl(epsilon_high=INF)),
    ("delta-negative", ValueError, "delta", _pl(delta=-1.0)),
    ("delta-zero", ValueError, "delta", _pl(delta=0.0)),
    ("num_items-zero", ValueError, "num_items", _pl(num_items=0)),
    ("num_items-negative", ValueError, "num_items", _pl(num_items=-3.0)),
    ("num_items-nan", ValueError, "num_items", _pl(num_items=NAN)),
    (
        "max_completion_length-zero",
        ValueError,
        "max_completion_length",
        _pl(max_completion_length=0, loss_type="dr_grpo"),
    ),
    ("max_completion_length-negative", ValueError, "max_completion_length", _pl(max_completion_length=-8)),
    ("clip_ratio_c-1", ValueError, "clip_ratio_c", _pl(clip_ratio_c=1.0, loss_type="vanilla")),
    ("clip_ratio_c-below-1", ValueError, "clip_ratio_c", _pl(clip_ratio_c=0.5, loss_type="vanilla")),
    ("clip_ratio_c-nan", ValueError, "clip_ratio_c", _pl(clip_ratio_c=NAN, loss_type="vanilla")),
    (
        "loss_scale_factor-zero",
        ValueError,
        "loss_scale_factor",
        _pl(loss_scale_factor=0.0, loss_agg_mode="seq-mean-token-sum-norm"),
    ),
    ("grad_scale-nan", ValueError, "grad_scale", _pl(grad_scale=NAN)),
    ("grad_scale-inf", ValueError, "grad_scale", _pl(grad_scale=INF)),
    (
        "sapo_temperature_pos-zero",
        ValueError,
        "sapo_temperature_pos",
        _pl(sapo_temperature_pos=0.0, loss_type="sapo"),
    ),
    (
        "sapo_temperature_neg-negative",
        ValueError,
        "sapo_temperature_neg",
        _pl(sapo_temperature_neg=-1.0, loss_type="sapo"),
    ),
    ("vespo_k_pos-inf", ValueError, "vespo_k_pos", _pl(vespo_k_pos=INF, loss_type="vespo")),
]


@pytest.mark.parametrize("exc,name,fn", [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES])
def test_policy_loss_rejects(exc, name, fn):
    _raises(exc, name, fn)


FLOAT_ARGS = [
    ("sgpo_rewards", "credit_scale"),
    ("group_advantages", "eps"),
    *[
        ("policy_loss", name)
        for name in (
            "beta",
            "epsilon_low",
            "epsilon_high",
            "delta",
            "num_items",
            "grad_scale",
            "loss_scale_factor",
            "clip_ratio_c",
            "sapo_temperature_pos",
            "vespo_k_pos",
        )
    ],
]


@pytest.mark.parametrize("func,name", FLOAT_ARGS, ids=[f"{f}-{n}" for f, n in FLOAT_ARGS])
def test_float_options_given_a_string(func, name):
    """A string where a float is expected (float("abc") raises a ValueError that names nothing)."""
    if func == "sgpo_rewards":
        fn = _rw(**{name: "abc"})
    elif func == "group_advantages":
        fn = _ga(**{name: "abc"})
    else:
        fn = _pl(**{name: "abc"}, ref_logp=LP)
    _raises((ValueError, TypeError), name, fn)


NON_STR_OPTIONS = [
    ("mode", _rw(mode=None)),
    ("scale", _ga(scale=True)),
    ("singleton", _ga(singleton=1)),
    ("loss_type", _pl(loss_type=None)),
    ("importance_sampling_level", _pl(importance_sampling_level=0)),
    ("kl_estimator", _pl(kl_estimator=3, beta=0.1, ref_logp=LP)),
    ("loss_agg_mode", _pl(loss_agg_mode=1)),
]


@pytest.mark.parametrize("name,fn", NON_STR_OPTIONS, ids=[n for n, _ in NON_STR_OPTIONS])
def test_non_string_options(name, fn):
    _raises((ValueError, TypeError), name, fn)


@pytest.mark.parametrize(
    "name,fn",
    [
        ("group_size", lambda: sg.group_advantages(R, group_size=2**70)),
        ("group_size", _rw(group_size=2**70)),
        ("max_completion_length", _pl(max_completion_length=2**70, loss_type="dr_grpo")),
    ],
    ids=["group_advantages", "sgpo_rewards", "policy_loss"],
)
def test_huge_ints(name, fn):
    _raises((ValueError, TypeError), name, fn)


def test_masked_out_non_finite_values_are_fine():
    """The flip side of the finite checks: padding (mask 0) may hold anything, and ref_logp is not
    read when beta == 0."""
    bad = _at(LP, NAN, (1, 2))
    m = MASK.copy()
    m[1, 2] = False
    clean = sg.policy_loss(LP, LP, ADV, m)
    for kw in (
        dict(logp=bad),
        dict(old_logp=bad),
        dict(ref_logp=bad, beta=0.1),
        dict(advantages=_at(np.ones((B, T)), INF, (1, 2))),
    ):
        args = dict(logp=LP, old_logp=LP, advantages=ADV, mask=m, ref_logp=LP)
        args.update(kw)
        assert np.isfinite(sg.policy_loss(**args).loss)
    assert (
        sg.policy_loss(LP, LP, ADV, MASK, ref_logp=_at(LP, NAN)).loss
        == sg.policy_loss(LP, LP, ADV, MASK).loss
    )
    assert np.isfinite(clean.loss)
    # NaN rewards are unscorable rows, not errors
    assert np.isnan(sg.sgpo_rewards([NAN, 0.0], [0, 0], [1, 1], group_size=2).rewards[0])
    assert sg.group_advantages([NAN, 0.0], group_size=2)[0] == 0.0


# --------------------------------------------------------------------------------------------------
# Non-contiguous arrays: same result as contiguous copies
# --------------------------------------------------------------------------------------------------


def _views(x):
    """Strided, negative-stride and (2-D) Fortran-ordered / transposed views holding x's values."""
    x = np.asarray(x)
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    wide[..., ::2] = x
    out = [wide[..., ::2], np.ascontiguousarray(x[..., ::-1])[..., ::-1]]
    if x.ndim == 2:
        out.append(np.asfortranarray(x))
        out.append(np.ascontiguousarray(x.T).T)
    for v in out:
        np.testing.assert_array_equal(v, x)
    return out


def test_non_contiguous_policy_loss():
    rng = np.random.default_rng(0)
    lp = -rng.exponential(size=(5, 9)).astype(np.float32)
    old = (lp + rng.normal(0, 0.2, size=lp.shape)).astype(np.float32)
    rf = (lp + rng.normal(0, 0.2, size=lp.shape)).astype(np.float32)
    adv = rng.normal(size=5).astype(np.float32)
    adv2 = rng.normal(size=(5, 9)).astype(np.float32)
    m = rng.random(lp.shape) < 0.8
    mf = (m * rng.random(lp.shape)).astype(np.float32)
    for a, mask in ((adv, m), (adv2, mf)):
        base = sg.policy_loss(lp, old, a, mask, ref_logp=rf, beta=0.1)
        for i, (v_lp, v_old, v_rf, v_m) in enumerate(zip(_views(lp), _views(old), _views(rf), _views(mask))):
            for v_a in _views(a):
                got = sg.policy_loss(v_lp, v_old, v_a, v_m, ref_logp=v_rf, beta=0.1)
                assert got.loss == base.loss, i
                np.testing.assert_array_equal(got.grad, base.grad)
                assert got.grad.flags.c_contiguous
    # broadcast (stride-0) arrays: one advantage for all rows, one mask row for all rows
    row = m[0]
    expect = sg.policy_loss(lp, old, np.full(5, 0.5, np.float32), np.tile(row, (5, 1)))
    got = sg.policy_loss(lp, old, np.broadcast_to(np.float32(0.5), (5,)), np.broadcast_to(row, (5, 9)))
    assert got.loss == expect.loss
    np.testing.assert_array_equal(got.grad, expect.grad)
    # half-precision views too
    h = lp.astype(np.float16)
    base = sg.policy_loss(h, None, adv, m)
    for v in _views(h):
        np.testing.assert_array_equal(sg.policy_loss(v, None, adv, m).grad, base.grad)


def test_non_contiguous_rewards_and_advantages():
    rng = np.random.default_rng(1)
    r = rng.integers(0, 2, size=12).astype(np.float64)
    fe = rng.integers(-2, 3, size=12)
    ns = np.full(12, 4)
    ids = np.repeat(np.arange(4), 3)
    base = sg.sgpo_rewards(r, fe, ns, group_size=3)
    base_ids = sg.sgpo_rewards(r, fe, ns, group_ids=ids)
    for v_r, v_fe, v_ns, v_ids in zip(_views(r), _views(fe), _views(ns), _views(ids)):
        out = sg.sgpo_rewards(v_r, v_fe, v_ns, group_size=3)
        np.testing.assert_array_equal(out.rewards, base.rewards)
        np.testing.assert_array_equal(out.diversified, base.diversified)
        np.testing.assert_array_equal(
            sg.sgpo_rewards(v_r, v_fe, v_ns, group_ids=v_ids).rewards, base_ids.rewards
        )
        np.testing.assert_array_equal(
            sg.group_advantages(v_r, group_size=3), sg.group_advantages(r, group_size=3)
        )
        np.testing.assert_array_equal(
            sg.group_advantages(v_r, group_ids=v_ids, singleton="unit"),
            sg.group_advantages(r, group_ids=ids, singleton="unit"),
        )
    a = rng.normal(size=6).astype(np.float32)
    m = rng.random((6, 7)) < 0.6
    base = sg.token_advantages(a, m)
    for v_a in _views(a):
        for v_m in _views(m):
            np.testing.assert_array_equal(sg.token_advantages(v_a, v_m), base)


# --------------------------------------------------------------------------------------------------
# The raw extension module
# --------------------------------------------------------------------------------------------------

F64 = np.zeros(4)
I64 = np.zeros(4, np.int64)
LP32 = np.zeros((B, T), np.float32)
A32 = np.ones(B, np.float32)
LOSS_KW = dict(
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=None,
    delta=None,
    loss_type="dapo",
    importance_sampling_level="token",
    kl_estimator="k3",
    kl_bias_correction=True,
    max_completion_length=None,
    num_items=None,
    grad_scale=1.0,
    loss_agg_mode=None,
    loss_scale_factor=None,
    clip_ratio_c=3.0,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
)


def _ga_core(*args):
    full = (F64, 2, None, "group", 1e-4, "zero")
    return lambda: _core.group_advantages_core(*(args + full[len(args) :]))


def _sr_core(**kw):
    args = dict(
        rewards=F64,
        first_error=I64,
        num_steps=I64 + 1,
        credit=None,
        correct=None,
        group_size=2,
        group_ids=None,
        credit_scale=0.5,
        mode="all_negative",
    )
    args.update(kw)
    return lambda: _core.sgpo_rewards_core(*args.values())


M32 = np.ones((B, T), bool)


def _pl_core(arrays=(LP32, LP32, None, A32, M32), half_dtype="none", **kw):
    return lambda: _core.policy_loss_core(*arrays, half_dtype=half_dtype, options={**LOSS_KW, **kw})


# (id, callable, the argument name the message must contain or None where pyo3's own argument
# conversion answers)
CORE_CASES = [
    ("ga-list", _ga_core([0.0, 0.0, 0.0, 0.0]), "rewards"),
    ("ga-None", _ga_core(None), "rewards"),
    ("ga-float32", _ga_core(np.zeros(4, np.float32)), "rewards"),
    ("ga-int64", _ga_core(I64), "rewards"),
    ("ga-strided", _ga_core(np.zeros(8)[::2]), "rewards"),
    ("ga-fortran-2d", _ga_core(np.asfortranarray(np.zeros((2, 2)))), "rewards"),
    ("ga-2d", _ga_core(np.zeros((2, 2))), "rewards"),
    ("ga-empty", _ga_core(np.zeros(0)), "rewards"),
    ("ga-group_size-str", _ga_core(F64, "2"), None),
    ("ga-group_size-negative", _ga_core(F64, -2), "group_size"),
    ("ga-group_ids-float", _ga_core(F64, None, F64), "group_ids"),
    ("ga-group_ids-short", _ga_core(F64, None, I64[:2]), "group_ids"),
    ("ga-group_ids-strided", _ga_core(F64, None, np.zeros(8, np.int64)[::2]), "group_ids"),
    ("ga-both", _ga_core(F64, 2, I64), "group_"),
    ("ga-neither", _ga_core(F64, None, None), "group_"),
    ("ga-scale-int", _ga_core(F64, 2, None, 3), None),
    ("ga-eps-str", _ga_core(F64, 2, None, "group", "x"), None),
    ("ga-missing-args", lambda: _core.group_advantages_core(F64), None),
    ("ta-float64", lambda: _core.token_advantages_core(np.zeros(2), np.ones((2, 2), bool)), "advantages"),
    ("ta-mask-float16", lambda: _core.token_advantages_core(A32, np.ones((2, 2), np.float16)), "mask"),
    ("ta-mask-int8", lambda: _core.token_advantages_core(A32, np.ones((2, 2), np.int8)), "mask"),
    ("ta-mask-rows", lambda: _core.token_advantages_core(A32, np.ones((3, 2), bool)), "mask"),
    ("ta-mask-1d", lambda: _core.token_advantages_core(A32, np.ones(2, bool)), "mask"),
    ("ta-mask-strided", lambda: _core.token_advantages_core(A32, np.ones((2, 4), bool)[:, ::2]), "mask"),
    ("ta-mask-negative", lambda: _core.token_advantages_core(A32, -np.ones((2, 2), np.float32)), "mask"),
    ("ta-list", lambda: _core.token_advantages_core([0.0, 0.0], [[1, 1], [1, 1]]), "advantages"),
    ("sr-list", _sr_core(rewards=[0.0] * 4), "rewards"),
    ("sr-first_error-float", _sr_core(first_error=F64), "first_error"),
    ("sr-first_error-short", _sr_core(first_error=I64[:2]), "first_error"),
    ("sr-num_steps-int32", _sr_core(num_steps=np.ones(4, np.int32)), "num_steps"),
    ("sr-num_steps-short", _sr_core(num_steps=I64[:2] + 1), "num_steps"),
    ("sr-correct-int", _sr_core(correct=I64), "correct"),
    ("sr-correct-short", _sr_core(correct=np.ones(2, bool)), "correct"),
    ("sr-credit-short", _sr_core(first_error=None, num_steps=None, credit=F64[:2]), "credit"),
    ("sr-credit-and-first_error", _sr_core(credit=F64), "credit"),
    ("sr-nothing", _sr_core(first_error=None, num_steps=None), "first_error"),
    ("sr-mode", _sr_core(mode="bad"), "mode"),
    ("sr-mode-None", _sr_core(mode=None), None),
    ("sr-credit_scale-str", _sr_core(credit_scale="x"), None),
    ("sr-group_ids-strided", _sr_core(group_size=None, group_ids=np.zeros(8, np.int64)[::2]), "group_ids"),
    ("pl-list", _pl_core((LP32.tolist(), LP32, None, A32, np.ones((B, T), bool))), "logp"),
    (
        "pl-mixed-dtypes",
        _pl_core((LP32, LP32.astype(np.float64), None, A32, np.ones((B, T), bool))),
        "old_logp",
    ),
    (
        "pl-advantages-float64",
        _pl_core((LP32, LP32, None, A32.astype(np.float64), np.ones((B, T), bool))),
        "advantages",
    ),
    (
        "pl-advantages-shape",
        _pl_core((LP32, LP32, None, np.ones((B, T + 1), np.float32), np.ones((B, T), bool))),
        "advantages",
    ),
    ("pl-mask-shape", _pl_core((LP32, LP32, None, A32, np.ones((B, T + 1), bool))), "mask"),
    ("pl-mask-float16", _pl_core((LP32, LP32, None, A32, np.ones((B, T), np.float16))), "mask"),
    ("pl-mask-negative", _pl_core((LP32, LP32, None, A32, -np.ones((B, T), np.float32))), "mask"),
    (
        "pl-old-shape",
        _pl_core((LP32, np.zeros((B, T + 1), np.float32), None, A32, np.ones((B, T), bool))),
        "old_logp",
    ),
    ("pl-logp-1d", _pl_core((LP32[0], LP32[0], None, A32, np.ones((B, T), bool))), "logp"),
    (
        "pl-logp-strided",
        _pl_core((np.zeros((B, 2 * T), np.float32)[:, ::2], LP32, None, A32, np.ones((B, T), bool))),
        "logp",
    ),
    (
        "pl-logp-fortran",
        _pl_core(
            (np.asfortranarray(np.zeros((T, T), np.float32)),) * 2
            + (None, np.ones(T, np.float32), np.ones((T, T), bool))
        ),
        "logp",
    ),
    (
        "pl-uint16-without-half",
        _pl_core((np.zeros((B, T), np.uint16),) * 2 + (None, A32, np.ones((B, T), bool))),
        "logp",
    ),
    (
        "pl-half-with-float32-old",
        _pl_core((np.zeros((B, T), np.uint16), LP32, None, A32, np.ones((B, T), bool)), half_dtype="float16"),
        "old_logp",
    ),
    (
        "pl-half-nan-bits",
        _pl_core(
            (np.full((B, T), 0x7E00, np.uint16),) * 2 + (None, A32, np.ones((B, T), bool)),
            half_dtype="float16",
        ),
        "logp",
    ),
    (
        "pl-half-inf-bits",
        _pl_core(
            (np.full((B, T), 0x7F80, np.uint16),) * 2 + (None, A32, np.ones((B, T), bool)),
            half_dtype="bfloat16",
        ),
        "logp",
    ),
    ("pl-beta-without-ref", _pl_core(beta=0.1), "ref_logp"),
    (
        "pl-ref-wrong-dtype",
        _pl_core((LP32, LP32, np.zeros((B, T)), A32, np.ones((B, T), bool)), beta=0.1),
        "ref_logp",
    ),
    ("pl-loss_type-int", _pl_core(loss_type=3), None),
    ("pl-loss_type-unknown", _pl_core(loss_type="x"), "loss_type"),
    (
        "pl-missing-keywords",
        lambda: _core.policy_loss_core(LP32, LP32, None, A32, np.ones((B, T), bool)),
        None,
    ),
    ("pl-max_completion_length-negative", _pl_core(max_completion_length=-5), "max_completion_length"),
    (
        "pl-empty",
        _pl_core(
            (np.zeros((0, T), np.float32),) * 2 + (None, np.zeros(0, np.float32), np.zeros((0, T), bool))
        ),
        "logp",
    ),
    ("pl-grad_scale-str", _pl_core(grad_scale="x"), None),
]


@pytest.mark.parametrize("fn,name", [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_raw_core_rejects(fn, name):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    if name is not None:
        assert name in str(info.value), f"message does not name {name!r}: {info.value}"


def run_battery() -> None:
    """Every bad call of this module, in one process (see test_nothing_crashes_the_interpreter)."""
    cases = [c[-1] for c in SGPO_CASES + ADV_CASES + LOSS_CASES] + [c[1] for c in CORE_CASES]
    cases += [fn for _, fn in NON_STR_OPTIONS]
    cases += [
        lambda: sg.group_advantages(R, group_size=2**70),
        lambda: _core.group_advantages_core(F64, 2**65, None, "group", 1e-4, "zero"),
        _pl_core(max_completion_length=2**70),
        _pl_core(half_dtype="float8"),
        _pl_core(
            (np.zeros((B, T), np.uint16),) * 2 + (None, A32, np.ones((B, T), bool)), half_dtype="bfloat16"
        ),
        _pl_core(num_items=1e-300),
        lambda: _core.policy_loss_core(*(object(),) * 5, half_dtype="none", options=LOSS_KW),
        lambda: _core.sgpo_rewards_core(*(object(),) * 9),
        lambda: _core.token_advantages_core(object(), object()),
        lambda: _core.group_advantages_core(*(object(),) * 6),
    ]
    for fn in cases:
        try:
            fn()
        except Exception:  # only the interpreter surviving matters here
            pass
    print("battery done")


def test_nothing_crashes_the_interpreter():
    """A segfault or abort in any bad call would kill pytest itself; run them all in a child."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_bad_input as t; t.run_battery()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "battery done" in proc.stdout

"""policy_loss's float32 path (float32/bfloat16/float16 inputs of the PPO-clipped losses, TRL's and
verl's vanilla dual-clip loss, at token level) at every SIMD level this CPU has (the portable level
runs the float64 path), against the float64 references.

Bounds tested (the ones ``sgpo_rs.policy_loss``'s docstring states):

- loss: ``|loss - loss64| <= 5e-7 * S`` with ``S`` the aggregation of ``|L|`` (the numpy
  reference's ``magnitudes``), and within 1e-6 relative on inputs shaped like a training batch;
- gradient: within 1e-6 of ``max|grad|`` (absolute) of torch float64 autograd of TRL's formula;
- clip decisions and clip metrics: equal to the float64 path's, also for ratios within float32
  rounding of ``1 +- epsilon`` (and of vanilla's ``clip_ratio_c``, and log ratios at verl's
  clamp of +-20); vanilla's ``ppo_kl`` within 1e-6 relative (it is summed from exact log ratios);
- k3's ``exp(x) - x - 1``: within 1e-6 relative where float32 would cancel (``|x| ~ 1e-4``);
- AVX2 and AVX-512 give bit-identical results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import ml_dtypes
import numpy as np
import pytest
import reference as ref
import sgpo_rs as sg
from sgpo_rs import _core
from test_loss import torch_grad

ORDER = ("portable", "avx2", "avx512")
LEVELS = ORDER[: ORDER.index(_core.cpu_simd_level()) + 1]
CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
# verl's loss_agg_mode values (vanilla's aggregations).
VERL_AGG = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Metrics that count clip decisions: equal to the float64 path's, not just close.
EXACT_METRICS = ("clip_ratio", "pg_clipfrac")
KL = {
    "none": dict(),
    "k3": dict(beta=0.04, kl_estimator="k3"),
    "k3-nobc": dict(beta=0.04, kl_estimator="k3", kl_bias_correction=False),
    "k1": dict(beta=0.1, kl_estimator="k1"),
    "k2": dict(beta=0.1, kl_estimator="k2"),
    "abs": dict(beta=0.1, kl_estimator="abs", kl_bias_correction=False),
}


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


@pytest.fixture(params=LEVELS)
def level(request):
    """Runs the test with the kernels at one SIMD level; the CPU's best again afterwards."""
    assert _core.set_simd_level(request.param) == request.param
    yield request.param
    _core.set_simd_level(None)


def _upcast(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def _on_both_paths(lp, old, adv, mask, **kw):
    """``(out, out64)``: the call on float32 inputs and on the same values in float64, or None
    when the float64 path raises - then the float32 path must raise the very same error."""
    kw64 = dict(kw, ref_logp=_upcast(kw.get("ref_logp")))
    try:
        out64 = sg.policy_loss(lp.astype(np.float64), old.astype(np.float64), adv, mask, **kw64)
    except ValueError as error64:
        with pytest.raises(ValueError) as error:
            sg.policy_loss(lp, old, adv, mask, **kw)
        assert str(error.value) == str(error64)
        return None
    return sg.policy_loss(lp, old, adv, mask, **kw), out64


def _check_against_float64(lp, old, adv, mask, **kw):
    """The float32 path's loss against the numpy reference, its gradient against torch float64
    autograd, its metrics against the float64 path's (clip metrics exactly)."""
    rf = kw.pop("ref_logp", None)
    out = sg.policy_loss(lp, old, adv, mask, ref_logp=rf, **kw)
    lp64, old64, rf64 = _upcast(lp), _upcast(old), _upcast(rf)
    loss64, _, sizes = ref.policy_loss(lp64, old64, adv, mask, ref_logp=rf64, magnitudes=True, **kw)
    assert abs(out.loss - loss64) <= 5e-7 * sizes["loss"] + 1e-300, (out.loss, loss64, sizes)
    _, grad64 = torch_grad(lp64, old64, adv, mask, ref_logp=rf64, **kw)
    grad64 = np.asarray(grad64)
    scale = max(float(np.abs(grad64).max()), 1e-300)
    assert float(np.abs(out.grad - grad64).max()) <= 1e-6 * scale
    on64 = sg.policy_loss(lp64, old64, adv, mask, ref_logp=rf64, **kw)
    assert set(out.metrics) == set(on64.metrics)
    for key, value in on64.metrics.items():
        if key.startswith(EXACT_METRICS):
            np.testing.assert_equal(out.metrics[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(out.metrics[key], value, rtol=1e-6, atol=1e-12, err_msg=key)
    return out


@pytest.mark.parametrize("kl", list(KL))
@pytest.mark.parametrize("loss_type", CLIPPED)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 300), (16, 1000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_float32_path_within_its_bound(level, loss_type, kl, shape):
    rng = np.random.default_rng(_seed("f32", loss_type, kl, shape))
    B, T = shape
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, B, T, adv2d=B % 2 == 1, extreme=T >= 17)
    _check_against_float64(lp, old, adv, m, ref_logp=rf, loss_type=loss_type, **KL[kl])


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kl", ["none", "k3"])
def test_half_inputs_on_the_float32_path(level, half, kl):
    rng = np.random.default_rng(_seed("half", kl))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 6, 333, extreme=False)
    lp, old, rf = (x.astype(half) for x in (lp, old, rf))
    _check_against_float64(lp, old, adv, m, ref_logp=rf, **KL[kl])


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_training_batch_loss_within_1e6_relative(level, beta):
    """Inputs shaped like compare.py's: logp in [-3, 0), old within +-0.3, ref within +-0.5,
    per-row advantages of both signs, right-padded bool mask."""
    rng = np.random.default_rng(7)
    B, T = 32, 2048
    lp = (-3.0 * rng.random((B, T))).astype(np.float32)
    old = (lp + 0.6 * (rng.random((B, T)) - 0.5)).astype(np.float32)
    rf = (lp + (rng.random((B, T)) - 0.5)).astype(np.float32)
    adv = (rng.random(B) * 4.0 - 2.0).astype(np.float32)
    mask = np.arange(T)[None, :] < rng.integers(T // 4, T + 1, size=B)[:, None]
    kw = dict(ref_logp=rf, beta=beta) if beta else dict()
    out = _check_against_float64(lp, old, adv, mask, **kw)
    loss64, _ = ref.policy_loss(
        lp.astype(np.float64),
        old.astype(np.float64),
        adv,
        mask,
        **{**kw, **({"ref_logp": rf.astype(np.float64)} if beta else {})},
    )
    assert abs(out.loss - loss64) <= 1e-6 * abs(loss64)


@pytest.mark.parametrize("delta", [1.5, None])
@pytest.mark.parametrize("bound", [0.8, 1.28, 1.5])
def test_clip_decisions_near_the_bounds_are_float64s(level, bound, delta):
    """Ratios within a few float32 units of a clip bound (including float32's own rounding of the
    bound) are decided as the float64 path decides them: equal clip metrics, and gradients that
    pass or stop at the same tokens (without ``delta`` the kernels take the one-bound form of
    the clipped term for these per-row advantages)."""
    T = 4096
    lp = np.full((2, T), -1.0, dtype=np.float32)
    # old = lp - log(bound) + k ulp: ratios straddling the bound by a few units of float32.
    steps = np.arange(T) - T // 2
    target = np.float32(-1.0 - np.log(bound))
    old = (target + steps.astype(np.float32) * np.spacing(target)).astype(np.float32)[None, :].repeat(2, 0)
    adv = np.array([1.0, -1.0], dtype=np.float32)
    mask = np.ones((2, T), dtype=bool)
    kw = dict(epsilon_low=0.2, epsilon_high=0.28, delta=delta)
    out = sg.policy_loss(lp, old, adv, mask, **kw)
    out64 = sg.policy_loss(lp.astype(np.float64), old.astype(np.float64), adv, mask, **kw)
    for key, value in out64.metrics.items():
        assert out.metrics[key] == value, key
    np.testing.assert_array_equal(out.grad == 0.0, out64.grad == 0.0)
    np.testing.assert_allclose(out.grad, out64.grad, rtol=5e-7, atol=0.0)
    # The two rows' losses nearly cancel: the bound is on the sum of magnitudes.
    lp64, old64 = lp.astype(np.float64), old.astype(np.float64)
    _, _, sizes = ref.policy_loss(lp64, old64, adv, mask, magnitudes=True, **kw)
    assert abs(out.loss - out64.loss) <= 5e-7 * sizes["loss"]


def test_k3_kl_has_no_cancellation_near_zero(level):
    """``x = ref - logp`` of 1e-4: float32's ``exp(x) - x - 1`` would keep no correct digit."""
    rng = np.random.default_rng(3)
    lp = (-3.0 * rng.random((4, 1000))).astype(np.float32)
    rf = (lp + np.float32(1e-4) * rng.standard_normal((4, 1000)).astype(np.float32)).astype(np.float32)
    adv = np.ones(4, dtype=np.float32)
    mask = np.ones((4, 1000), dtype=bool)
    out = sg.policy_loss(lp, lp, adv, mask, ref_logp=rf, beta=0.04)
    _, metrics = ref.policy_loss(
        lp.astype(np.float64), lp.astype(np.float64), adv, mask, ref_logp=rf.astype(np.float64), beta=0.04
    )
    assert metrics["kl"] > 0.0
    assert abs(out.metrics["kl"] - metrics["kl"]) <= 1e-6 * metrics["kl"]


@pytest.mark.parametrize("gap", [30.0, 85.0, 100.0])
def test_large_gaps_fall_back_to_float64(level, gap):
    """Log ratios and KL gaps where float32's exp overflows: same values, or the same error, as
    the float64 path."""
    lp = np.full((2, 40), -1.0, dtype=np.float32)
    old = lp.copy()
    old[:, ::3] -= np.float32(gap)
    rf = lp.copy()
    rf[:, 1::5] += np.float32(gap)
    rf[:, ::9] += np.float32(gap)  # both gaps at some tokens (the float32 KL times r overflows)
    adv = np.array([0.5, -0.5], dtype=np.float32)
    mask = np.ones((2, 40), dtype=bool)
    both = _on_both_paths(lp, old, adv, mask, ref_logp=rf, beta=0.04, grad_scale=1e-30)
    if both is None:
        return
    out, out64 = both
    assert abs(out.loss - out64.loss) <= 5e-7 * abs(out64.loss)
    np.testing.assert_allclose(out.grad, out64.grad, rtol=5e-7, atol=0.0)
    for key, value in out64.metrics.items():
        np.testing.assert_allclose(out.metrics[key], value, rtol=5e-7, err_msg=key)


@pytest.mark.parametrize("delta", [None, 1.5])
@pytest.mark.parametrize("mask_kind", ["bool", "float32"])
@pytest.mark.parametrize("kl", ["none", "k3", "k1"])
def test_row_advantages_of_each_sign_and_zero(level, kl, mask_kind, delta):
    """Per-row advantages of each sign and 0 (the kernels take a one-bound form of the clipped
    term for a row of known sign and no ``delta``), rows whose length is not a multiple of 16,
    wild log ratios, right padding in whole blocks and a gap."""
    rng = np.random.default_rng(_seed("rows", kl, mask_kind, delta))
    B, T = 8, 1000
    lp, old, rf, _, m = ref.make_loss_inputs(rng, B, T, mask_kind=mask_kind, empty_row=False)
    adv = np.array([1.3, -0.7, 0.0, 2.0, -2.0, 0.5, -1e-3, 0.0], dtype=np.float32)
    m[3:6, 700:] = 0  # right padding (whole blocks of padding are skipped)
    _check_against_float64(lp, old, adv, m, ref_logp=rf, delta=delta, **KL[kl])


@pytest.mark.skipif("avx512" not in LEVELS, reason="needs a CPU with AVX-512")
@pytest.mark.parametrize(
    "adv2d, mask_kind", [(True, "float32"), (False, "bool"), (False, "float32"), (True, "bool")]
)
def test_avx2_and_avx512_give_bit_identical_results(adv2d, mask_kind):
    """Both run the same operations in the same order (the portable build rounds each product,
    so it differs within the bounds tested above), with per-token or per-row advantages."""
    rng = np.random.default_rng(11)
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 9, 1001, adv2d=adv2d, mask_kind=mask_kind)
    results = []
    try:
        for name in ("avx2", "avx512"):
            assert _core.set_simd_level(name) == name
            results.append(sg.policy_loss(lp, old, adv, m, ref_logp=rf, beta=0.04))
    finally:
        _core.set_simd_level(None)
    avx2, avx512 = results
    assert avx2.loss == avx512.loss
    assert avx2.metrics == avx512.metrics
    np.testing.assert_array_equal(avx2.grad, avx512.grad)


def test_portable_level_runs_the_float64_path():
    """Without AVX2 the float32 path would be slower than the float64 one, so f32 inputs then
    give exactly what their float64 copies give."""
    rng = np.random.default_rng(5)
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 4, 300)
    up = [x.astype(np.float64) for x in (lp, old, rf)]
    try:
        assert _core.set_simd_level("portable") == "portable"
        out = sg.policy_loss(lp, old, adv, m, ref_logp=rf, beta=0.04)
        out64 = sg.policy_loss(up[0], up[1], adv, m, ref_logp=up[2], beta=0.04)
    finally:
        _core.set_simd_level(None)
    assert out.loss == out64.loss
    assert out.metrics == out64.metrics
    np.testing.assert_array_equal(out.grad, out64.grad)


@pytest.mark.parametrize(
    "kw",
    [dict(epsilon_low=1e-12, epsilon_high=0.0), dict(epsilon_high=0.2, delta=1.2 + 1e-12)],
    ids=["lo-hi", "delta-hi"],
)
def test_bounds_that_float32_would_merge_take_the_float64_path(kw):
    """Clip bounds that differ in float64 but not in float32 would tie in the clipped min where
    float64 does not: those options run in float64 (bit-identical to float64 inputs)."""
    rng = np.random.default_rng(9)
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 3, 200, extreme=False)
    out = sg.policy_loss(lp, old, adv, m, **kw)
    out64 = sg.policy_loss(lp.astype(np.float64), old.astype(np.float64), adv, m, **kw)
    assert out.loss == out64.loss
    np.testing.assert_array_equal(out.grad, out64.grad)


def test_simd_level_env_var_lowers_the_level():
    code = "from sgpo_rs import _core; print(_core.simd_level(), _core.cpu_simd_level())"
    env = dict(os.environ, SGPO_RS_SIMD="portable")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["portable", _core.cpu_simd_level()]
    # A level the CPU lacks, or an unknown name, leaves the CPU's best.
    env["SGPO_RS_SIMD"] = "sse9"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.split()[0] == _core.cpu_simd_level()
    with pytest.raises(ValueError, match="level"):
        _core.set_simd_level("sse9")


# --------------------------------------------------------------------------------------------------
# verl's vanilla loss (dual-clip PPO) on the float32 path.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", VERL_AGG)
@pytest.mark.parametrize("kl", list(KL))
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 300), (16, 1000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vanilla_within_its_bound(level, kl, agg, shape):
    """Per-row advantages (even B) and per-token ones (odd B), wild log ratios (some beyond verl's
    clamp of +-20, many past the dual clip's ``c = 3``), every ``loss_agg_mode``."""
    rng = np.random.default_rng(_seed("vanilla", kl, agg, shape))
    B, T = shape
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, B, T, adv2d=B % 2 == 1, extreme=T >= 17)
    _check_against_float64(lp, old, adv, m, ref_logp=rf, loss_type="vanilla", loss_agg_mode=agg, **KL[kl])


@pytest.mark.parametrize("mask_kind", ["bool", "float32"])
@pytest.mark.parametrize("kl", ["none", "k3", "k1", "k2", "abs"])
@pytest.mark.parametrize("adv2d", [False, True], ids=["row-adv", "token-adv"])
def test_vanilla_advantages_of_each_sign_and_masks(level, adv2d, kl, mask_kind):
    """Advantages of each sign and 0, per row (the kernels' one-bound form with the dual clip for
    ``a < 0``) or per token, bool and float masks, rows not a multiple of 16 long, right padding,
    ratios spread over both clip bounds and ``clip_ratio_c``, with and without a KL."""
    rng = np.random.default_rng(_seed("vanilla-signs", adv2d, kl, mask_kind))
    B, T = 8, 1000
    lp, old, rf, _, m = ref.make_loss_inputs(rng, B, T, mask_kind=mask_kind, empty_row=False, ratio_scale=0.8)
    if adv2d:
        adv = rng.standard_normal((B, T)).astype(np.float32)
        adv[:, ::7] = 0.0
    else:
        adv = np.array([1.3, -0.7, 0.0, 2.0, -2.0, 0.5, -1e-3, 0.0], dtype=np.float32)
    m[3:6, 700:] = 0
    for agg in ("token-mean", "seq-mean-token-mean"):
        out = _check_against_float64(
            lp, old, adv, m, ref_logp=rf, loss_type="vanilla", loss_agg_mode=agg, clip_ratio_c=2.0, **KL[kl]
        )
        assert out.metrics["pg_clipfrac_lower"] > 0.0 and out.metrics["pg_clipfrac"] > 0.0


@pytest.mark.parametrize("adv2d", [False, True], ids=["row-adv", "token-adv"])
@pytest.mark.parametrize("bound", [0.8, 1.28, 3.0, 10.0])
def test_vanilla_clip_decisions_near_the_bounds_are_float64s(level, bound, adv2d):
    """Ratios within a few float32 units of ``1 - eps_low``, ``1 + eps_high`` and the dual clip's
    ``clip_ratio_c`` (3 and 10) are decided as the float64 path decides them: equal
    ``pg_clipfrac`` and ``pg_clipfrac_lower``, gradients that pass or stop at the same tokens."""
    T = 4096
    lp = np.full((2, T), -1.0, dtype=np.float32)
    steps = np.arange(T) - T // 2
    target = np.float32(-1.0 - np.log(bound))
    old = (target + steps.astype(np.float32) * np.spacing(target)).astype(np.float32)[None, :].repeat(2, 0)
    # Second half: many log-probabilities, each with the float32 `old` nearest `lp - log(bound)`,
    # so the exact ratios scatter within a float32 unit of the bound (and many round onto it).
    rng = np.random.default_rng(_seed("vanilla-near", bound))
    lp[:, T // 2 :] = rng.uniform(-3.0, -0.5, size=(2, T // 2)).astype(np.float32)
    old[:, T // 2 :] = (lp[:, T // 2 :].astype(np.float64) - np.log(bound)).astype(np.float32)
    adv = np.array([1.0, -1.0], dtype=np.float32)
    if adv2d:
        adv = np.where(np.arange(T) % 2 == 0, 1.0, -1.0).astype(np.float32)[None, :].repeat(2, 0)
        adv[1] *= -1.0
    mask = np.ones((2, T), dtype=bool)
    kw = dict(
        loss_type="vanilla", epsilon_low=0.2, epsilon_high=0.28, clip_ratio_c=3.0 if bound != 10.0 else 10.0
    )
    out = sg.policy_loss(lp, old, adv, mask, **kw)
    out64 = sg.policy_loss(lp.astype(np.float64), old.astype(np.float64), adv, mask, **kw)
    assert out.metrics["pg_clipfrac"] == out64.metrics["pg_clipfrac"]
    assert out.metrics["pg_clipfrac_lower"] == out64.metrics["pg_clipfrac_lower"]
    np.testing.assert_allclose(out.metrics["ppo_kl"], out64.metrics["ppo_kl"], rtol=1e-12)
    np.testing.assert_array_equal(out.grad == 0.0, out64.grad == 0.0)
    np.testing.assert_allclose(out.grad, out64.grad, rtol=5e-7, atol=0.0)
    lp64, old64 = lp.astype(np.float64), old.astype(np.float64)
    _, _, sizes = ref.policy_loss(lp64, old64, adv, mask, magnitudes=True, **kw)
    assert abs(out.loss - out64.loss) <= 5e-7 * sizes["loss"]


@pytest.mark.parametrize("gap", [19.0, 20.0, 25.0, 85.0, 100.0])
def test_vanilla_log_ratios_at_verls_clamp(level, gap):
    """Log ratios at, just inside and beyond verl's clamp of +-20 (no gradient through the clamp;
    ``ppo_kl`` sees the clamped value) and where float32's exp overflows: the float64 path's
    values, or its error."""
    T = 64
    lp = np.full((2, T), -1.0, dtype=np.float32)
    old = lp.copy()
    k = np.arange(T)
    # gap, and a few float32 units around it, both signs.
    offsets = (k % 8 - 4).astype(np.float32) * np.spacing(np.float32(gap))
    old[:, ::2] -= np.float32(gap) + offsets[::2]
    old[:, 1::4] += np.float32(gap) + offsets[1::4]
    rf = lp.copy()
    rf[:, 1::5] += np.float32(3.0)
    adv = np.array([0.5, -0.5], dtype=np.float32)
    mask = np.ones((2, T), dtype=bool)
    both = _on_both_paths(lp, old, adv, mask, ref_logp=rf, beta=0.04, loss_type="vanilla", grad_scale=1e-6)
    if both is None:
        return
    out, out64 = both
    assert abs(out.loss - out64.loss) <= 5e-7 * abs(out64.loss)
    np.testing.assert_array_equal(out.grad == 0.0, out64.grad == 0.0)
    np.testing.assert_allclose(out.grad, out64.grad, rtol=5e-7, atol=0.0)
    for key, value in out64.metrics.items():
        if key.startswith(EXACT_METRICS):
            assert out.metrics[key] == value, key
        else:
            np.testing.assert_allclose(out.metrics[key], value, rtol=5e-7, err_msg=key)


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_vanilla_half_inputs(level, half):
    rng = np.random.default_rng(_seed("vanilla-half"))
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 6, 333, extreme=False, ratio_scale=0.6)
    lp, old, rf = (x.astype(half) for x in (lp, old, rf))
    _check_against_float64(lp, old, adv, m, ref_logp=rf, loss_type="vanilla", clip_ratio_c=1.5, **KL["k3"])


def test_vanilla_training_batch_loss_within_1e6_relative(level):
    rng = np.random.default_rng(8)
    B, T = 32, 2048
    lp = (-3.0 * rng.random((B, T))).astype(np.float32)
    old = (lp + 2.0 * (rng.random((B, T)) - 0.5)).astype(np.float32)
    rf = (lp + (rng.random((B, T)) - 0.5)).astype(np.float32)
    adv = (rng.random(B) * 4.0 - 2.0).astype(np.float32)
    mask = np.arange(T)[None, :] < rng.integers(T // 4, T + 1, size=B)[:, None]
    kw = dict(loss_type="vanilla", clip_ratio_c=2.0, ref_logp=rf, beta=0.04)
    out = _check_against_float64(lp, old, adv, mask, **kw)
    loss64, _ = ref.policy_loss(
        lp.astype(np.float64), old.astype(np.float64), adv, mask, **{**kw, "ref_logp": rf.astype(np.float64)}
    )
    assert abs(out.loss - loss64) <= 1e-6 * abs(loss64)
    assert out.metrics["pg_clipfrac_lower"] > 0.0


def test_vanilla_dual_clip_next_to_the_low_bound_takes_the_float64_path():
    """A ``clip_ratio_c`` within 1e-5 of ``1 - epsilon_low`` could tie with it in float64 where
    float32 does not: those options run in float64 (bit-identical to float64 inputs)."""
    rng = np.random.default_rng(10)
    lp, old, _, adv, m = ref.make_loss_inputs(rng, 3, 200, extreme=False)
    kw = dict(loss_type="vanilla", epsilon_low=0.0, clip_ratio_c=1.0 + 1e-9)
    out = sg.policy_loss(lp, old, adv, m, **kw)
    out64 = sg.policy_loss(lp.astype(np.float64), old.astype(np.float64), adv, m, **kw)
    assert out.loss == out64.loss
    assert out.metrics == out64.metrics
    np.testing.assert_array_equal(out.grad, out64.grad)


def test_vanilla_portable_level_runs_the_float64_path():
    rng = np.random.default_rng(6)
    lp, old, rf, adv, m = ref.make_loss_inputs(rng, 4, 300)
    up = [x.astype(np.float64) for x in (lp, old, rf)]
    kw = dict(loss_type="vanilla", beta=0.04)
    try:
        assert _core.set_simd_level("portable") == "portable"
        out = sg.policy_loss(lp, old, adv, m, ref_logp=rf, **kw)
        out64 = sg.policy_loss(up[0], up[1], adv, m, ref_logp=up[2], **kw)
    finally:
        _core.set_simd_level(None)
    assert out.loss == out64.loss
    assert out.metrics == out64.metrics
    np.testing.assert_array_equal(out.grad, out64.grad)


@pytest.mark.skipif("avx512" not in LEVELS, reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("kl", ["none", "k3"])
@pytest.mark.parametrize(
    "adv2d, mask_kind", [(True, "float32"), (False, "bool"), (False, "float32"), (True, "bool")]
)
def test_vanilla_avx2_and_avx512_give_bit_identical_results(adv2d, mask_kind, kl):
    rng = np.random.default_rng(12)
    lp, old, rf, adv, m = ref.make_loss_inputs(
        rng, 9, 1001, adv2d=adv2d, mask_kind=mask_kind, ratio_scale=0.8
    )
    results = []
    try:
        for name in ("avx2", "avx512"):
            assert _core.set_simd_level(name) == name
            results.append(
                sg.policy_loss(lp, old, adv, m, ref_logp=rf, loss_type="vanilla", clip_ratio_c=2.0, **KL[kl])
            )
    finally:
        _core.set_simd_level(None)
    avx2, avx512 = results
    assert avx2.loss == avx512.loss
    assert avx2.metrics == avx512.metrics
    np.testing.assert_array_equal(avx2.grad, avx512.grad)

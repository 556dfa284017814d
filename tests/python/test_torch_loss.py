"""sgpo_rs.torch.sgpo_loss: value and logp.grad against the float64 torch transcription of TRL
1.16's `GRPOTrainer._compute_loss` (``reference_torch.trl_value_and_grad``: TRL's options, its
num_items normaliser and gradient accumulation), plus the autograd contract:
gradient accumulation, half precision, no_grad, requires_grad=False, non-contiguous inputs,
torch.compile, zero-copy hand-off, device errors.

Tolerance: the float32 inputs are upcast exactly to float64 for the reference, so both sides do
the same float64 math; what differs is the order of float64 sums (~1e-16 relative) and the
library's float32 outputs (the loss tensor and the gradient are rounded to float32: 2**-24 ~ 6e-8
relative). ``rtol=1e-6`` leaves a 16x margin above float32 rounding; ``atol=1e-6 * max|ref|``
covers entries that are tiny because of cancellation (e.g. the bias-corrected KL gradient
``beta * r * (lp - ref)`` next to a policy term), whose float64 absolute error scales with the
largest entry, not with their own size. A float32 transcription of TRL itself would be off by
~1e-7 relative, so this checks the formula, not TRL's rounding.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sgpo_rs as sg  # noqa: E402
import sgpo_rs.torch as sgt  # noqa: E402
from reference_torch import trl_value_and_grad  # noqa: E402
from sgpo_rs.torch import sgpo_loss  # noqa: E402

# TRL's loss types, from the engine's registry.
LOSS_TYPES = tuple(name for name, info in sg.loss_types().items() if info.origin == "trl")
F64 = torch.float64


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def assert_close(actual, expected, what=""):
    """``rtol=1e-6, atol=1e-6 * max|expected|`` (see the module docstring)."""
    a = torch.as_tensor(actual).detach().to(F64)
    e = torch.as_tensor(expected).detach().to(F64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    scale = float(e.abs().max()) if e.numel() else 0.0
    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

MASK_DTYPES = (torch.bool, torch.int64, torch.float32)


def make_inputs(seed, B=6, T=9, *, mask_dtype=torch.bool, adv_2d=False):
    """float32 (B, T) log-probs with per-row drift (so both token and sequence ratios clip), a
    mask with one empty row, finite junk in the padding, one zero advantage."""
    g = torch.Generator().manual_seed(seed)
    lp = -3.0 * torch.rand(B, T, generator=g) - 0.05
    drift = 0.4 * torch.randn(B, 1, generator=g)
    old = lp + drift + 0.25 * torch.randn(B, T, generator=g)
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[B // 2] = 0
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if adv_2d:
        adv = torch.randn(B, T, generator=g)
    else:
        adv = torch.randn(B, generator=g)
        adv[1] = 0.0
    return lp.float(), old.float(), ref.float(), adv.float(), mask.to(mask_dtype)


def _eps_high(loss_type):
    # CISPO's epsilon_high bounds the ratio itself (TRL suggests ~5); chosen so some ratios pass
    # it. For the others it is DAPO's clip-higher, asymmetric to epsilon_low = 0.2.
    return 1.3 if loss_type == "cispo" else 0.28


def _run(lp, old, ref, adv, mask, **options):
    """sgpo_loss value and logp.grad (backward with grad_output 1)."""
    leaf = lp.detach().clone().requires_grad_(True)
    loss, metrics = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, **options)
    loss.backward()
    return loss, leaf.grad, metrics


# --------------------------------------------------------------------------------------------------
# Parity with TRL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [None, 1.5], ids=["nodelta", "delta"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["beta0", "beta.04"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl(loss_type, beta, level, delta):
    seed = _seed(loss_type, beta, level, delta)
    mask_dtype = MASK_DTYPES[seed % len(MASK_DTYPES)]
    lp, old, ref, adv, mask = make_inputs(seed, mask_dtype=mask_dtype)
    eh = _eps_high(loss_type)
    # TRL always knows max_completion_length; make dr_grpo's differ from the padded T.
    mcl = lp.shape[1] + 3
    options = dict(
        loss_type=loss_type,
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=eh,
        delta=delta,
        importance_sampling_level=level,
        max_completion_length=mcl,
    )
    loss, grad, metrics = _run(lp, old, ref if beta else None, adv, mask, **options)
    ref_loss, ref_grad = trl_value_and_grad(
        lp,
        old,
        ref,
        adv,
        mask,
        loss_type=loss_type,
        beta=beta,
        epsilon=0.2,
        epsilon_high=eh,
        delta=delta,
        importance_sampling_level=level,
        max_completion_length=mcl,
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert grad.dtype == torch.float32 and grad.shape == lp.shape
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    # Same core as the numpy API: identical loss (rounded to float32) and metrics.
    out = sg.policy_loss(
        lp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), ref_logp=ref.numpy() if beta else None, **options
    )
    assert loss.item() == np.float32(out.loss)
    assert metrics == out.metrics
    assert torch.equal(grad, torch.from_numpy(out.grad))
    assert ("kl" in metrics) == (beta != 0.0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_token_advantages_no_bias_correction(loss_type):
    """(B, T) advantages, KL without TRL's importance-sampling correction."""
    lp, old, ref, adv, mask = make_inputs(_seed("adv2d", loss_type), adv_2d=True, mask_dtype=torch.int64)
    eh = _eps_high(loss_type)
    loss, grad, _ = _run(
        lp, old, ref, adv, mask, loss_type=loss_type, beta=0.04, epsilon_high=eh, kl_bias_correction=False
    )
    ref_loss, ref_grad = trl_value_and_grad(
        lp, old, ref, adv, mask, loss_type=loss_type, beta=0.04, epsilon_high=eh, use_bias_correction_kl=False
    )
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_on_policy(loss_type):
    """old_logp=None: TRL uses per_token_logps.detach() (ratio 1, gradient still flows)."""
    lp, _, ref, adv, mask = make_inputs(_seed("onpolicy", loss_type))
    loss, grad, _ = _run(lp, None, ref, adv, mask, loss_type=loss_type, beta=0.04)
    ref_loss, ref_grad = trl_value_and_grad(lp, None, ref, adv, mask, loss_type=loss_type, beta=0.04)
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")


def test_default_options_are_policy_losss():
    lp, old, _, adv, mask = make_inputs(1)
    loss, metrics = sgpo_loss(lp, old, adv, mask)
    out = sg.policy_loss(lp.numpy(), old.numpy(), adv.numpy(), mask.numpy())
    assert loss.item() == np.float32(out.loss) and metrics == out.metrics
    ref_loss, _ = trl_value_and_grad(lp, old, None, adv, mask, loss_type="dapo")  # TRL's default
    assert_close(loss, ref_loss, "loss")


# --------------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_accumulation(loss_type):
    """Two micro-batches, two backward passes into the same leaf: the gradients add, and each
    call is scaled as TRL scales it with current_gradient_accumulation_steps = 2."""
    gas = 2
    a = make_inputs(_seed("gas", loss_type, 0))
    b = make_inputs(_seed("gas", loss_type, 1))
    leaf = a[0].clone().requires_grad_(True)  # same logp for both, different everything else
    folded = loss_type in ("dapo", "cispo", "vespo")
    # TRL's num_items_in_batch spans the generation batch: steps_per_generation = 4 micro-batches
    # (two more of 23 tokens each besides these two), accumulated 2 at a time. sgpo_loss takes
    # the resulting normaliser as num_items.
    spg = 4
    num_items_in_batch = float(a[4].sum() + b[4].sum()) + 2 * 23
    options = dict(loss_type=loss_type, beta=0.04, epsilon_high=_eps_high(loss_type))
    if folded:
        options["num_items"] = num_items_in_batch * gas / spg
    total_ref_grad = torch.zeros(a[0].shape, dtype=F64)
    for _, old, ref, adv, mask in (a, b):
        loss, _ = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, gradient_accumulation_steps=gas, **options)
        loss.backward()
        ref_loss, ref_grad = trl_value_and_grad(
            a[0],
            old,
            ref,
            adv,
            mask,
            loss_type=loss_type,
            beta=0.04,
            epsilon_high=_eps_high(loss_type),
            current_gradient_accumulation_steps=gas,
            steps_per_generation=spg,
            num_items_in_batch=num_items_in_batch,
        )
        assert_close(loss, ref_loss, "loss")
        total_ref_grad += ref_grad
        # Against one step: divided by gas, except where TRL folds gas into num_items.
        single, _ = sgpo_loss(leaf.detach(), old, adv, mask, ref_logp=ref, **options)
        assert_close(loss, single if folded else single / gas, "loss vs gas=1")
    assert_close(leaf.grad, total_ref_grad, "accumulated grad")


@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "vespo"])
def test_gradient_accumulation_needs_num_items_where_trl_folds_it(loss_type):
    lp, old, _, adv, mask = make_inputs(3)
    with pytest.raises(ValueError, match="gradient_accumulation_steps.*num_items"):
        sgpo_loss(lp, old, adv, mask, loss_type=loss_type, gradient_accumulation_steps=2)
    # A verl aggregation mode divides like verl does, num_items or not.
    one, _ = sgpo_loss(lp, old, adv, mask, loss_type=loss_type, loss_agg_mode="token-mean")
    two, _ = sgpo_loss(
        lp, old, adv, mask, loss_type=loss_type, loss_agg_mode="token-mean", gradient_accumulation_steps=2
    )
    assert_close(two, one / 2, "verl mode / gas")


def test_vanilla_divides_by_gradient_accumulation():
    lp, old, _, adv, mask = make_inputs(4)
    leaf = lp.clone().requires_grad_(True)
    one, _ = sgpo_loss(leaf, old, adv, mask, loss_type="vanilla")
    one.backward()
    g1 = leaf.grad.clone()
    leaf.grad = None
    three, _ = sgpo_loss(leaf, old, adv, mask, loss_type="vanilla", gradient_accumulation_steps=3)
    three.backward()
    assert_close(three, one / 3, "loss")
    assert_close(leaf.grad, g1 / 3, "grad")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_gradient_accumulation_steps_is_checked(bad):
    lp, old, _, adv, mask = make_inputs(5)
    with pytest.raises((TypeError, ValueError), match="gradient_accumulation_steps"):
        sgpo_loss(lp, old, adv, mask, loss_type="grpo", gradient_accumulation_steps=bad)


def test_grad_output_scales_the_gradient():
    lp, old, ref, adv, mask = make_inputs(6)
    loss, grad, _ = _run(lp, old, ref, adv, mask, loss_type="grpo", beta=0.04)
    leaf = lp.clone().requires_grad_(True)
    loss2, _ = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, loss_type="grpo", beta=0.04)
    (loss2 * -2.5).backward()
    assert torch.equal(leaf.grad, grad * -2.5)


# --------------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo", "sapo", "vespo"])
def test_half_precision_is_the_float32_path_on_upcast_values(loss_type, half):
    lp, old, ref, adv, mask = make_inputs(_seed("half", loss_type, str(half)))
    lp_h, old_h, ref_h = lp.to(half), old.to(half), ref.to(half)
    kw = dict(loss_type=loss_type, beta=0.04, epsilon_high=_eps_high(loss_type))
    loss_h, grad_h, metrics_h = _run(lp_h, old_h, ref_h, adv, mask, **kw)
    loss_f, grad_f, metrics_f = _run(lp_h.float(), old_h.float(), ref_h.float(), adv, mask, **kw)
    assert loss_h.dtype == torch.float32
    assert grad_h.dtype == half
    assert torch.equal(loss_h, loss_f)
    assert torch.equal(grad_h, grad_f.to(half))
    assert metrics_h == metrics_f


def test_float64_logp():
    lp, old, ref, adv, mask = make_inputs(7)
    loss, grad, _ = _run(
        lp.double(), old.double(), ref.double(), adv.double(), mask, loss_type="grpo", beta=0.04
    )
    ref_loss, ref_grad = trl_value_and_grad(lp, old, ref, adv, mask, loss_type="grpo", beta=0.04)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float64
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")  # float32-accurate, as documented


def test_companions_are_cast_to_logp_dtype():
    lp, old, ref, adv, mask = make_inputs(8)
    lp_h = lp.to(torch.bfloat16)
    a, ga, _ = _run(lp_h, old, ref, adv, mask, loss_type="grpo", beta=0.04)
    b, gb, _ = _run(
        lp_h, old.to(torch.bfloat16), ref.to(torch.bfloat16), adv, mask, loss_type="grpo", beta=0.04
    )
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize(
    "mask_dtype",
    [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.float64],
)
def test_mask_dtypes(mask_dtype):
    lp, old, _, adv, mask = make_inputs(9)
    want, gwant, _ = _run(lp, old, None, adv, mask, loss_type="bnpo")
    got, ggot, _ = _run(lp, old, None, adv, mask.to(mask_dtype), loss_type="bnpo")
    assert torch.equal(got, want) and torch.equal(ggot, gwant)


# --------------------------------------------------------------------------------------------------
# Autograd modes, layouts, compile
# --------------------------------------------------------------------------------------------------


def test_no_grad():
    lp, old, ref, adv, mask = make_inputs(10)
    want, _, want_metrics = _run(lp, old, ref, adv, mask, loss_type="grpo", beta=0.04)
    leaf = lp.clone().requires_grad_(True)
    with torch.no_grad():
        loss, metrics = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, loss_type="grpo", beta=0.04)
    assert not loss.requires_grad and loss.grad_fn is None
    assert torch.equal(loss, want) and metrics == want_metrics


def test_logp_without_requires_grad():
    lp, old, ref, adv, mask = make_inputs(11)
    want, _, _ = _run(lp, old, ref, adv, mask, loss_type="sapo", beta=0.04)
    loss, _ = sgpo_loss(lp, old, adv, mask, ref_logp=ref, loss_type="sapo", beta=0.04)
    assert not loss.requires_grad
    assert torch.equal(loss, want)


def test_only_logp_gets_a_gradient():
    lp, old, ref, adv, mask = make_inputs(12)
    old, ref, adv = (t.clone().requires_grad_(True) for t in (old, ref, adv))
    leaf = lp.clone().requires_grad_(True)
    loss, _ = sgpo_loss(leaf, old, adv, mask.float(), ref_logp=ref, loss_type="grpo", beta=0.04)
    loss.backward()
    assert leaf.grad is not None
    assert old.grad is None and ref.grad is None and adv.grad is None


def test_non_contiguous_inputs():
    lp, old, ref, adv, mask = make_inputs(13, mask_dtype=torch.float32)
    B, T = lp.shape
    lp_t = lp.t().contiguous().requires_grad_(True)  # the leaf is (T, B); logp = its transpose
    wide = torch.zeros(B, 2 * T)
    wide[:, ::2] = old
    old_nc = wide[:, ::2]
    ref_nc = ref.t().contiguous().t()
    adv_nc = torch.stack([adv, adv], 1)[:, 0]
    mask_nc = mask.t().contiguous().t()
    for t in (lp_t.t(), old_nc, ref_nc, adv_nc, mask_nc):
        assert not t.is_contiguous()
    kw = dict(loss_type="grpo", beta=0.04, importance_sampling_level="sequence")
    loss, _ = sgpo_loss(lp_t.t(), old_nc, adv_nc, mask_nc, ref_logp=ref_nc, **kw)
    loss.backward()
    want, gwant, _ = _run(lp, old, ref, adv, mask, **kw)
    assert torch.equal(loss, want)
    assert torch.equal(lp_t.grad.t(), gwant)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    lp, old, ref, adv, mask = make_inputs(14)
    kw = dict(loss_type="dr_grpo", beta=0.04, epsilon_high=0.28, max_completion_length=16)

    def step(x, old, ref, adv, mask):
        logp = x * 0.5 - 0.25
        loss, metrics = sgpo_loss(logp, old, adv, mask, ref_logp=ref, **kw)
        return loss * 2.0 + logp.sum() * 0.0, metrics["clip_ratio/region_mean"]

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend)
    x_e = (2 * lp + 0.5).clone().requires_grad_(True)
    x_c = x_e.detach().clone().requires_grad_(True)
    loss_e, region_e = step(x_e, old, ref, adv, mask)
    loss_e.backward()
    loss_c, region_c = compiled(x_c, old, ref, adv, mask)
    loss_c.backward()
    assert region_c == region_e
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=0)
    torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-6, atol=1e-6 * float(x_e.grad.abs().max()))


# --------------------------------------------------------------------------------------------------
# Zero copy
# --------------------------------------------------------------------------------------------------


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_zero_copy_hand_off(monkeypatch, dtype):
    """The arrays the Rust core receives are the tensors' own memory, and the gradient the
    backward multiplies is the core's output array itself (torch.from_numpy)."""
    lp, old, ref, adv, mask = make_inputs(15, mask_dtype=torch.int64)
    lp, old, ref = lp.to(dtype), old.to(dtype), ref.to(dtype)
    seen = {}
    real = sgt._core.policy_loss_core

    def spy(lp_np, old_np, ref_np, adv_np, mask_np, **kw):
        seen.update(lp=lp_np, old=old_np, ref=ref_np, adv=adv_np, mask=mask_np, kw=kw)
        out = real(lp_np, old_np, ref_np, adv_np, mask_np, **kw)
        seen["grad"] = out[1]
        return out

    monkeypatch.setattr(sgt._core, "policy_loss_core", spy)
    leaf = lp.clone().requires_grad_(True)
    loss, _ = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, loss_type="grpo", beta=0.04)
    for key, tensor in (("lp", leaf), ("old", old), ("ref", ref), ("adv", adv), ("mask", mask)):
        assert _address(seen[key]) == tensor.data_ptr(), key
    assert seen["kw"]["half_dtype"] == ("bfloat16" if dtype == torch.bfloat16 else "none")
    (saved,) = loss.grad_fn.saved_tensors
    assert saved.data_ptr() == _address(seen["grad"])
    loss.backward()
    assert torch.equal(leaf.grad, saved.to(dtype))


def test_non_contiguous_input_is_copied_once(monkeypatch):
    lp, old, _, adv, mask = make_inputs(16)
    seen = {}
    real = sgt._core.policy_loss_core

    def spy(lp_np, *args, **kw):
        seen["lp"] = lp_np
        return real(lp_np, *args, **kw)

    monkeypatch.setattr(sgt._core, "policy_loss_core", spy)
    src = lp.t().contiguous()
    sgpo_loss(src.t(), old, adv, mask)
    assert seen["lp"].flags.c_contiguous
    assert not np.shares_memory(seen["lp"], src.numpy())


# --------------------------------------------------------------------------------------------------
# Errors and devices
# --------------------------------------------------------------------------------------------------


def test_unknown_option_is_named():
    lp, old, _, adv, mask = make_inputs(17)
    with pytest.raises(TypeError, match="epsilon_hi"):
        sgpo_loss(lp, old, adv, mask, epsilon_hi=0.3)
    with pytest.raises(ValueError, match="loss_type"):
        sgpo_loss(lp, old, adv, mask, loss_type="ppo")
    with pytest.raises(TypeError, match="logp"):
        sgpo_loss(lp.numpy(), old, adv, mask)
    with pytest.raises(TypeError, match="logp"):
        sgpo_loss(lp.to(torch.int32), old, adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        sgpo_loss(lp, old, adv[:-1], mask)


def test_non_cpu_tensor_is_named():
    """The device check without a GPU: meta tensors are refused like CUDA ones, by name."""
    lp, old, _, adv, mask = make_inputs(18)
    with pytest.raises(RuntimeError, match="advantages"):
        sgpo_loss(lp, old, adv.to("meta"), mask)
    with pytest.raises(RuntimeError, match="logp"):
        sgpo_loss(lp.to("meta"), None, adv, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_devices_raise_naming_the_argument():
    lp, old, _, adv, mask = make_inputs(19)
    with pytest.raises(RuntimeError, match=r"mask: expected a tensor on cpu"):
        sgpo_loss(lp, old, adv, mask.cuda())
    with pytest.raises(RuntimeError, match=r"old_logp: expected a tensor on cuda"):
        sgpo_loss(lp.cuda(), old, adv.cuda(), mask.cuda())

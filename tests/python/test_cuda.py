"""The CUDA path.

Without a GPU (CI): every kernel compiles with NVRTC for sm_80 and sm_90 through the library's
own code path, without a diagnostic; the package reports why CUDA is unusable instead of failing.

With a GPU (scripts/gpu_check.sh): every kernel against its CPU twin (the Rust CPU path, itself
tested against float64 references) and against float64 torch references, on fresh random inputs
each run, with poisoned outputs (the caching allocator is filled with NaN first, so an element a
kernel forgets to write shows up), masks with gaps, empty rows, extreme log-ratios, several shapes
including long rows and a 152k vocabulary, bit-identical reruns, and bad inputs raising the CPU
path's errors.

Tolerances: the loss kernel computes every token in float64 like the CPU path, so loss, metrics
and gradient agree to float32 rounding (rtol 1e-6, atol 1e-6 * max(1, max|ref|)). The selective
log-softmax accumulates in float32 (the CPU path in float64): log-probabilities agree to
atol 2e-5 + rtol 1e-5 (a float32 sum over 152k terms carries ~1e-5 relative rounding), gradients
to 1e-6 absolute (each is a probability times the upstream gradient).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs import _core, _cuda

torch = pytest.importorskip("torch")

HAS_GPU = torch.cuda.is_available() and _cuda.availability().get("usable", False)
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and driver")
SEED = int(os.environ.get("SGPO_RS_CUDA_SEED", str(np.random.SeedSequence().entropy % 2**31)))


# --- no GPU needed ------------------------------------------------------------------------------


def test_every_kernel_compiles_for_sm80_and_sm90_without_diagnostics():
    if not _cuda.built():
        pytest.skip("this build has no CUDA path")
    if _cuda.load_nvrtc() is None and not _cuda.availability()["nvrtc"]:
        if os.environ.get("SGPO_RS_REQUIRE_NVRTC") == "1":
            pytest.fail("NVRTC is required here (SGPO_RS_REQUIRE_NVRTC=1) but was not found")
        pytest.skip("no libnvrtc (pip install nvidia-cuda-nvrtc)")
    for arch in (80, 90):
        built = _core.cuda_compile_all(arch, verbose=True)
        assert {name for name, _, _ in built} == {"logprob.cu", "loss.cu", "groups.cu"}
        for name, size, log in built:
            assert size > 10_000, f"{name} sm_{arch}: a {size}-byte CUBIN"
            lower = log.lower()
            assert "warning" not in lower and "error" not in lower, f"{name} sm_{arch}:\n{log}"
            # ptxas reports every kernel: no local-memory spills.
            spills = [line for line in log.splitlines() if "spill" in line]
            assert spills and all("0 bytes spill stores, 0 bytes spill loads" in line for line in spills), log


def test_a_compile_error_is_a_runtime_error_not_a_crash():
    if not _cuda.built() or not _cuda.availability()["nvrtc"]:
        pytest.skip("needs NVRTC")
    with pytest.raises(RuntimeError, match="sm_1"):
        _core.cuda_compile_all(1)  # no such architecture


def test_availability_says_why_not():
    found = _cuda.availability()
    assert isinstance(found["usable"], bool)
    if not found["usable"]:
        assert found["reason"]


def test_info_reports_the_cuda_path(capsys):
    from sgpo_rs.cli import main

    assert main(["info"]) == 0
    assert "cuda path:" in capsys.readouterr().out


# --- helpers for the GPU tests ------------------------------------------------------------------


def poison_allocator(nbytes: int) -> None:
    """Fills free blocks of torch's caching allocator with NaN, so the next allocations of up to
    ``nbytes`` start as NaN instead of zeros left by earlier work."""
    x = torch.full((nbytes // 4 + 1024,), float("nan"), dtype=torch.float32, device="cuda")
    del x


def close(got, ref, rtol=1e-6, what=""):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


# --- selective log-softmax ----------------------------------------------------------------------

LOGIT_SHAPES = [(1, 1), (5, 7), (33, 1000), (64, 32001), (3, 152064), (2048, 129)]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
def test_selective_log_softmax_matches_float64_and_the_cpu_path(dtype, shape):
    from sgpo_rs.torch import selective_log_softmax

    rng = torch.Generator().manual_seed(SEED + shape[0] * 7 + shape[1])
    n, v = shape
    logits = (torch.randn(n, v, generator=rng) * 3).to(dtype)
    logits[0, : min(v - 1, 3)] = float("-inf")  # banned tokens
    targets = torch.randint(0, v, (n,), generator=rng)
    targets[0] = v - 1
    for temperature in (1.0, 0.7):
        z = logits.double() / temperature
        ref_logp = torch.log_softmax(z, -1).gather(-1, targets[:, None])[:, 0]
        p = torch.softmax(z, -1)
        ref_h = -(p * torch.where(p > 0, torch.log_softmax(z, -1), torch.zeros_like(z))).sum(-1)
        poison_allocator(n * v * 4)
        x = logits.cuda().requires_grad_(True)
        logp, ent = selective_log_softmax(x, targets.cuda(), temperature, return_entropy=True)
        np.testing.assert_allclose(logp.cpu().numpy(), ref_logp.numpy(), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(ent.cpu().numpy(), ref_h.numpy(), rtol=1e-5, atol=2e-5)
        cpu_logp, cpu_h = selective_log_softmax(logits, targets, temperature, return_entropy=True)
        np.testing.assert_allclose(logp.cpu().numpy(), cpu_logp.numpy(), rtol=1e-5, atol=2e-5)
        g = torch.randn(n, generator=rng)
        gh = torch.randn(n, generator=rng)
        (logp * g.cuda()).sum().add((ent * gh.cuda()).sum()).backward()
        zr = z.clone().requires_grad_(True)
        lp64 = torch.log_softmax(zr, -1)
        ent64 = -(lp64.exp() * torch.where(torch.isinf(lp64), torch.zeros_like(lp64), lp64)).sum(-1)
        (lp64.gather(-1, targets[:, None])[:, 0] * g.double()).sum().add(
            (ent64 * gh.double()).sum()
        ).backward()
        ref_grad = zr.grad / temperature  # d/dlogits = d/dz / T
        assert x.grad.dtype == dtype and x.grad.shape == logits.shape
        tol = 1e-6 if dtype == torch.float32 else 1e-2  # half outputs round to 8 or 11 bits
        np.testing.assert_allclose(x.grad.double().cpu().numpy(), ref_grad.numpy(), rtol=tol, atol=tol)


@gpu
def test_selective_log_softmax_reruns_are_bit_identical_and_3d_works():
    from sgpo_rs.torch import selective_log_softmax

    logits = torch.randn(4, 9, 5003, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 5003, (4, 9), device="cuda")
    a = selective_log_softmax(logits, targets)
    b = selective_log_softmax(logits, targets)
    assert a.shape == (4, 9) and torch.equal(a, b)


@gpu
def test_selective_log_softmax_backward_in_place_and_unaligned_rows():
    logits = torch.randn(7, 1001, device="cuda")
    view = logits[:, 1:]  # rows start off a 16-byte boundary: the scalar path
    targets = torch.randint(0, 1000, (7,), device="cuda")
    logp, _ = _cuda.selective_logprobs(view, targets, 1.0, False)
    ref = torch.log_softmax(view.double(), -1).gather(-1, targets[:, None])[:, 0]
    np.testing.assert_allclose(logp.cpu().numpy(), ref.cpu().numpy(), rtol=1e-5, atol=2e-5)
    g = torch.randn(7, device="cuda")
    out = _cuda.selective_logprobs_backward(logits, targets, 1.0, g, None)
    dense = logits.clone()
    in_place = _cuda.selective_logprobs_backward(dense, targets, 1.0, g, None, in_place=True)
    assert in_place.data_ptr() == dense.data_ptr()
    assert torch.equal(in_place, out)


@gpu
def test_selective_log_softmax_bad_inputs_raise():
    from sgpo_rs.torch import selective_log_softmax

    logits = torch.randn(3, 10, device="cuda")
    with pytest.raises(ValueError, match="targets"):
        selective_log_softmax(logits, torch.tensor([0, 10, 1], device="cuda"))
    bad = logits.clone()
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"logits: expected finite values, found nan at \(1, 4\)"):
        selective_log_softmax(bad, torch.tensor([0, 1, 2], device="cuda"))
    bad = logits.clone()
    bad[2] = float("-inf")
    with pytest.raises(ValueError, match="logits: row 2"):
        selective_log_softmax(bad, torch.tensor([0, 1, 2], device="cuda"))


# --- fused policy loss --------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo", "vanilla"]


def loss_inputs(rng: np.random.Generator, batch: int, length: int, spread: float = 1.0):
    logp = rng.normal(-1.0, 0.5, (batch, length)).astype(np.float32)
    old = (logp + rng.normal(0.0, 0.3 * spread, (batch, length))).astype(np.float32)
    ref = (logp + rng.normal(0.0, 0.3 * spread, (batch, length))).astype(np.float32)
    adv = rng.normal(0.0, 1.0, batch).astype(np.float32)
    lengths = rng.integers(0, length + 1, batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    mask &= rng.random((batch, length)) > 0.1  # gaps
    mask[0] = False  # an empty row
    # Poison the padding: it must never be read into a result.
    logp[~mask] = np.nan
    old[~mask] = np.inf
    ref[~mask] = -np.inf
    return logp, old, ref, adv, mask


@gpu
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_matches_the_cpu_path(loss_type, level, beta):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + LOSS_TYPES.index(loss_type) * 10 + int(beta * 100))
    for batch, length, per_token, mask_dtype, epsilon_high, delta in [
        (16, 37, False, torch.bool, None, None),
        (9, 2500, True, torch.float32, 0.28, 1.5),
        (4, 65536, False, torch.bool, 0.28, None),
    ]:
        logp, old, ref, adv, mask = loss_inputs(rng, batch, length)
        a = np.repeat(adv[:, None], length, 1) * rng.uniform(0.5, 1.5, (batch, length)) if per_token else adv
        a = a.astype(np.float32)
        options = dict(
            loss_type=loss_type,
            beta=beta,
            importance_sampling_level=level,
            epsilon_high=epsilon_high,
            delta=delta if loss_type != "vanilla" else None,
        )
        cpu = sg.policy_loss(logp, old, a, mask, ref_logp=ref, **options)
        poison_allocator(batch * length * 8)
        lp = torch.from_numpy(logp).cuda().requires_grad_(True)
        m = torch.from_numpy(mask).cuda().to(mask_dtype)
        loss, metrics = sgpo_loss(
            lp,
            torch.from_numpy(old).cuda(),
            torch.from_numpy(a).cuda(),
            m,
            ref_logp=torch.from_numpy(ref).cuda(),
            **options,
        )
        loss.backward()
        what = f"{loss_type} {level} beta={beta} ({batch}, {length})"
        close(loss.item(), cpu.loss, what=what)
        grad = lp.grad.cpu().numpy()
        assert np.isfinite(grad).all(), what
        assert (grad[~mask] == 0).all(), what
        close(grad, cpu.grad, what=what)
        assert metrics.keys() == cpu.metrics.keys(), what
        for key, value in cpu.metrics.items():
            if np.isnan(value):
                assert np.isnan(metrics[key]), f"{what} {key}"
            else:
                close(metrics[key], value, what=f"{what} {key}")


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_policy_loss_half_inputs_equal_the_float32_path_on_upcast_values(dtype):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 99)
    logp, old, ref, adv, mask = loss_inputs(rng, 32, 300)
    half = [torch.from_numpy(x).to(dtype).cuda() for x in (logp, old, ref)]
    up = [x.float() for x in half]
    m = torch.from_numpy(mask).cuda()
    a = torch.from_numpy(adv).cuda()
    lp_h = half[0].clone().requires_grad_(True)
    lp_f = up[0].clone().requires_grad_(True)
    loss_h, _ = sgpo_loss(lp_h, half[1], a, m, ref_logp=half[2], beta=0.04, loss_type="grpo")
    loss_f, _ = sgpo_loss(lp_f, up[1], a, m, ref_logp=up[2], beta=0.04, loss_type="grpo")
    loss_h.backward()
    loss_f.backward()
    assert loss_h.item() == loss_f.item()
    assert torch.equal(lp_h.grad, lp_f.grad.to(dtype))


@gpu
def test_policy_loss_is_bit_identical_across_runs_and_extreme_ratios_stay_finite():
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 7)
    logp, old, ref, adv, mask = loss_inputs(rng, 64, 4096, spread=20.0)  # log ratios up to ~+-60
    args = [torch.from_numpy(x).cuda() for x in (logp, old, adv, mask)]
    results = []
    for _ in range(2):
        lp = args[0].clone().requires_grad_(True)
        loss, metrics = sgpo_loss(lp, args[1], args[2], args[3], loss_type="vanilla")
        loss.backward()
        results.append((loss.item(), lp.grad.clone(), metrics))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    cpu = sg.policy_loss(logp, old, adv, mask, loss_type="vanilla")
    close(results[0][0], cpu.loss)


@gpu
def test_policy_loss_bad_inputs_name_the_argument():
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 3)
    logp, old, ref, adv, mask = loss_inputs(rng, 4, 50)
    mask[2, 5] = True
    logp[2, 5] = np.nan
    args = [torch.from_numpy(x).cuda() for x in (logp, old, adv, mask)]
    with pytest.raises(ValueError, match=r"logp: expected finite values, found nan at \(2, 5\)"):
        sgpo_loss(*args)
    logp[2, 5] = -1.0
    weights = torch.from_numpy(mask.astype(np.float32)).cuda()
    weights[1, 3] = -1.0
    with pytest.raises(ValueError, match=r"mask: expected finite weights >= 0, got -1.0 at \(1, 3\)"):
        sgpo_loss(torch.from_numpy(logp).cuda(), args[1], args[2], weights)
    with pytest.raises(ValueError, match="ref_logp"):
        sgpo_loss(torch.from_numpy(logp).cuda(), args[1], args[2], args[3], beta=0.1)
    with pytest.raises(TypeError, match="logp"):
        sgpo_loss(torch.from_numpy(logp).double().cuda(), None, args[2], args[3])


# --- rewards and advantages ---------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("mode", ["all_negative", "all_incorrect"])
def test_sgpo_rewards_and_advantages_match_the_cpu_path(mode):
    rng = np.random.default_rng(SEED + 11)
    for rows, group_size in [(8, 4), (1024, 8), (4096, 16)]:
        rewards = rng.choice([0.0, 0.0, 0.0, 1.0, np.nan], rows)
        num_steps = rng.integers(1, 9, rows)
        first_error = np.minimum(rng.integers(-2, 9, rows), num_steps - 1)
        ids = rng.permutation(np.repeat(np.arange(rows // group_size), group_size))
        for groups in (dict(group_size=group_size), dict(group_ids=ids)):
            cpu = sg.sgpo_rewards(rewards, first_error, num_steps, mode=mode, **groups)
            gpu_groups = groups if "group_size" in groups else dict(group_ids=torch.from_numpy(ids).cuda())
            out = sg.sgpo_rewards(
                torch.from_numpy(rewards).cuda(),
                torch.from_numpy(first_error).cuda(),
                torch.from_numpy(num_steps).cuda(),
                mode=mode,
                **gpu_groups,
            )
            np.testing.assert_array_equal(out.rewards.cpu().numpy(), cpu.rewards)
            np.testing.assert_array_equal(out.credit.cpu().numpy(), cpu.credit)
            np.testing.assert_array_equal(out.all_negative.cpu().numpy(), cpu.all_negative)
            np.testing.assert_array_equal(out.diversified.cpu().numpy(), cpu.diversified)
            for key in ("num_groups", "all_negative_groups", "diversified_groups", "judge_missing_groups"):
                assert out.stats[key] == cpu.stats[key], key
            close(out.stats["mean_credit"], cpu.stats["mean_credit"])
            for scale, eps, singleton in [
                ("group", 1e-4, "zero"),
                ("batch", 1e-4, "zero"),
                ("none", 1e-6, "unit"),
            ]:
                ref = sg.group_advantages(cpu.rewards, scale=scale, eps=eps, singleton=singleton, **groups)
                got = sg.group_advantages(
                    out.rewards, scale=scale, eps=eps, singleton=singleton, **gpu_groups
                )
                close(got.cpu().numpy(), ref, what=f"{scale} {singleton}")


@gpu
def test_token_advantages_and_bad_verdicts():
    adv = torch.randn(300, device="cuda")
    mask = torch.rand(300, 77, device="cuda") > 0.3
    out = sg.token_advantages(adv, mask)
    assert torch.equal(out, adv[:, None] * mask.float())
    with pytest.raises(ValueError, match="first_error"):
        sg.sgpo_rewards(
            torch.zeros(4, device="cuda"),
            torch.tensor([0, 5, 0, 0]),
            torch.tensor([3, 3, 3, 3]),
            group_size=2,
        )
    with pytest.raises(ValueError, match="rewards"):
        sg.group_advantages(torch.tensor([0.0, float("inf")], device="cuda"), group_size=2)


@gpu
def test_selective_log_softmax_reads_trl_style_sliced_logits_in_place():
    from sgpo_rs.torch import selective_log_softmax

    full = torch.randn(3, 11, 4099, device="cuda", dtype=torch.bfloat16)
    view = full[:, :-1]  # (B, T, V) with a batch stride of 11 rows: TRL's logits[:, :-1]
    assert not view.is_contiguous()
    x, rows, vocab, row_stride, group_rows, group_stride = _cuda._logits_layout(view)
    assert x.data_ptr() == full.data_ptr() and (rows, group_rows, group_stride) == (30, 10, 11 * 4099)
    targets = torch.randint(0, 4099, (3, 10), device="cuda")
    leaf = view.detach().requires_grad_(True)
    logp = selective_log_softmax(leaf, targets)
    ref = torch.log_softmax(view.double(), -1).gather(-1, targets[..., None])[..., 0]
    np.testing.assert_allclose(logp.cpu().numpy(), ref.cpu().numpy(), rtol=1e-5, atol=2e-5)
    logp.sum().backward()
    dense = selective_log_softmax(view.contiguous().requires_grad_(True), targets)
    assert torch.equal(logp, dense)
    assert leaf.grad.shape == view.shape


@gpu
def test_large_logits_keep_their_precision():
    # Logits of 1e4: the log-probability is a small difference of large numbers.
    logits = torch.tensor([[1e4, 1e4 - 0.5, 1e4 - 3.0], [30.0, 15.0, -5.0]], device="cuda")
    targets = torch.tensor([1, 0], device="cuda")
    logp, _ = _cuda.selective_logprobs(logits, targets, 1.0, False)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None])[:, 0]
    np.testing.assert_allclose(logp.cpu().numpy(), ref.cpu().numpy(), rtol=1e-6, atol=1e-7)
    # A confident target keeps its tiny gradient 1 - p (3.06e-7 here), not 0.
    d = _cuda.selective_logprobs_backward(logits, targets, 1.0, torch.ones(2, device="cuda"), None)
    expected = -torch.expm1(ref[1]).item()
    assert abs(d[1, 0].item() - expected) < 1e-12 + 1e-6 * expected


@gpu
def test_uint8_weights_and_huge_log_ratios_match_the_cpu_path():
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 21)
    logp, old, ref, adv, mask = loss_inputs(rng, 6, 40)
    weights = (mask * rng.integers(1, 4, mask.shape)).astype(np.uint8)  # weights 0..3
    old[mask] -= rng.choice([0.0, 800.0], mask.sum())  # log ratios past exp's range
    for loss_type in ("dapo", "sapo", "vanilla"):
        lp = torch.from_numpy(logp).cuda().requires_grad_(True)
        args = [torch.from_numpy(x).cuda() for x in (old, adv, weights)]
        try:
            cpu = sg.policy_loss(logp, old, adv, weights, loss_type=loss_type)
        except ValueError as error:  # the CPU path refuses an overflowing result: so must the GPU
            with pytest.raises(ValueError, match=str(error).split(":")[0]):
                sgpo_loss(lp, *args, loss_type=loss_type)
            continue
        loss, _ = sgpo_loss(lp, *args, loss_type=loss_type)
        loss.backward()
        close(loss.item(), cpu.loss, what=loss_type)
        close(lp.grad.cpu().numpy(), cpu.grad, what=loss_type)


@gpu
def test_numpy_level_functions_dispatch_cuda_tensors():
    rng = np.random.default_rng(SEED + 31)
    logp, old, ref, adv, mask = loss_inputs(rng, 8, 100)
    cpu = sg.policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
    out = sg.policy_loss(
        *(torch.from_numpy(x).cuda() for x in (logp, old, adv, mask)),
        ref_logp=torch.from_numpy(ref).cuda(),
        beta=0.04,
        loss_type="grpo",
    )
    assert out.grad.is_cuda
    close(out.loss, cpu.loss)
    close(out.grad.cpu().numpy(), cpu.grad)
    logits = rng.normal(0, 2, (6, 301)).astype(np.float32)
    targets = rng.integers(0, 301, 6)
    lp_cpu, h_cpu = sg.selective_logprobs(logits, targets, temperature=0.9, entropy=True)
    lp, h = sg.selective_logprobs(
        torch.from_numpy(logits).cuda(), torch.from_numpy(targets).cuda(), temperature=0.9, entropy=True
    )
    np.testing.assert_allclose(lp.cpu().numpy(), lp_cpu, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(h.cpu().numpy(), h_cpu, rtol=1e-5, atol=2e-5)
    g = rng.normal(size=6).astype(np.float32)
    d_cpu = sg.selective_logprobs_backward(logits, targets, g, temperature=0.9)
    d = sg.selective_logprobs_backward(
        torch.from_numpy(logits).cuda(),
        torch.from_numpy(targets).cuda(),
        torch.from_numpy(g).cuda(),
        temperature=0.9,
    )
    np.testing.assert_allclose(d.cpu().numpy(), d_cpu, rtol=1e-6, atol=1e-6)

"""The CUDA path.

Without a GPU (CI): every kernel compiles with NVRTC for sm_80 and sm_90 through the library's
own code path, without a diagnostic; the package reports why CUDA is unusable instead of failing.

Every GPU test is parametrised over ``device`` in ("cpu", "cuda"): the "cuda" case needs a GPU
(it skips without one), the "cpu" case runs the same body on CPU tensors in CI, where the public
functions dispatch to the Rust CPU path - so an error in the test code itself shows up without a
GPU, and the comparisons against float64 references are checked on the CPU path too (those
against "the CPU path" are then trivially true). What only exists on CUDA (the poisoned
allocator, direct calls into ``sgpo_rs._cuda``, in-place backward, the kernels' view layout,
CUDA's dtype restrictions) stays behind ``device == "cuda"``.

With a GPU (scripts/gpu_check.sh): every kernel against its CPU twin (the Rust CPU path, itself
tested against float64 references) and against float64 torch references, on fresh random inputs
each run, with poisoned outputs (the caching allocator is filled with NaN first, so an element a
kernel forgets to write shows up), masks with gaps, empty rows, extreme log-ratios, several shapes
including long rows and a 152k vocabulary, bit-identical reruns, and bad inputs raising the CPU
path's errors (a flagged status reruns the call through the CPU engine, so the messages are the
CPU path's, character for character).

Tolerances: the loss kernel computes every token in float64 like the CPU path except its
exponentials (float32 with the argument's rounding folded back in: 2.4e-7 relative), so loss,
metrics and gradient agree to float32 rounding (rtol 1e-6, atol 1e-6 * max(1, max|ref|)). The
selective log-softmax sums each 16-byte pack of exponentials in float32 and the packs in float64
(the CPU path sums in float64 throughout): log-probabilities agree to atol 2e-5 + rtol 1e-5,
gradients to 1e-6 absolute (each is a probability times the upstream gradient).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs import _core, _cuda

torch = pytest.importorskip("torch")

HAS_GPU = torch.cuda.is_available() and _cuda.availability().get("usable", False)
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and driver")
# The GPU tests' bodies also run on CPU tensors (the public functions dispatch on the device).
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]
SEED = int(os.environ.get("SGPO_RS_CUDA_SEED", str(np.random.SeedSequence().entropy % 2**31)))


# --- no GPU needed ------------------------------------------------------------------------------

SPILL_AMOUNT = re.compile(r"(\d+) bytes spill (stores|loads)")


def spill_problems(log: str) -> list:
    """The lines of an NVRTC verbose log that mention spills and do not say "0 bytes spill stores"
    and "0 bytes spill loads". ptxas reports them per kernel in its "Function properties" line
    (NVRTC 13.2), some versions on the "Used N registers" resource line, and NVRTC 13.0's verbose
    log has no spill lines at all: every spill line present is parsed, none is required."""
    problems = []
    for line in log.splitlines():
        if "spill" not in line.lower():
            continue
        amounts = {kind: int(count) for count, kind in SPILL_AMOUNT.findall(line)}
        if set(amounts) != {"stores", "loads"} or any(amounts.values()):
            problems.append(line)
    return problems


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
            # No local-memory spills wherever ptxas reports them (NVRTC 13.0's log may not).
            assert not spill_problems(log), f"{name} sm_{arch}: {spill_problems(log)}\n{log}"


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


def poison_allocator(device: str, nbytes: int) -> None:
    """Fills free blocks of torch's CUDA caching allocator with NaN, so the next allocations of up
    to ``nbytes`` start as NaN instead of zeros left by earlier work. A no-op on CPU."""
    if device != "cuda":
        return
    x = torch.full((nbytes // 4 + 1024,), float("nan"), dtype=torch.float32, device="cuda")
    del x


def host(x) -> np.ndarray:
    """A tensor (on any device, requiring grad or not) or an array as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def logprobs_of(device: str, logits, targets) -> object:
    """The log-probabilities at temperature 1: the CUDA kernel itself (``_cuda``) on CUDA, the
    public function (the CPU path) on CPU."""
    if device == "cuda":
        return _cuda.selective_logprobs(logits, targets, 1.0, False)[0]
    return sg.selective_logprobs(logits, targets)[0]


def dlogits_of(device: str, logits, targets, grad_logp) -> object:
    """``selective_logprobs_backward`` at temperature 1 without an entropy gradient: ``_cuda`` on
    CUDA, the public function on CPU (a numpy array there)."""
    if device == "cuda":
        return _cuda.selective_logprobs_backward(logits, targets, 1.0, grad_logp, None)
    return sg.selective_logprobs_backward(logits, targets, grad_logp)


def close(got, ref, rtol=1e-6, what=""):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


# --- selective log-softmax ----------------------------------------------------------------------

LOGIT_SHAPES = [(1, 1), (5, 7), (33, 1000), (64, 32001), (3, 152064), (2048, 129)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
def test_selective_log_softmax_matches_float64_and_the_cpu_path(dtype, shape, device):
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
        poison_allocator(device, n * v * 4)
        x = logits.to(device, copy=True).requires_grad_(True)  # a fresh leaf, also on CPU
        logp, ent = selective_log_softmax(x, targets.to(device), temperature, return_entropy=True)
        np.testing.assert_allclose(host(logp), host(ref_logp), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(host(ent), host(ref_h), rtol=1e-5, atol=2e-5)
        cpu_logp, cpu_h = selective_log_softmax(logits, targets, temperature, return_entropy=True)
        np.testing.assert_allclose(host(logp), host(cpu_logp), rtol=1e-5, atol=2e-5)
        g = torch.randn(n, generator=rng)
        gh = torch.randn(n, generator=rng)
        (logp * g.to(device)).sum().add((ent * gh.to(device)).sum()).backward()
        zr = z.clone().requires_grad_(True)
        lp64 = torch.log_softmax(zr, -1)
        ent64 = -(lp64.exp() * torch.where(torch.isinf(lp64), torch.zeros_like(lp64), lp64)).sum(-1)
        (lp64.gather(-1, targets[:, None])[:, 0] * g.double()).sum().add(
            (ent64 * gh.double()).sum()
        ).backward()
        ref_grad = zr.grad / temperature  # d/dlogits = d/dz / T
        assert x.grad.dtype == dtype and x.grad.shape == logits.shape
        tol = 1e-6 if dtype == torch.float32 else 1e-2  # half outputs round to 8 or 11 bits
        np.testing.assert_allclose(host(x.grad.double()), host(ref_grad), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_selective_log_softmax_reruns_are_bit_identical_and_3d_works(device):
    from sgpo_rs.torch import selective_log_softmax

    logits = torch.randn(4, 9, 5003, device=device, dtype=torch.bfloat16)
    targets = torch.randint(0, 5003, (4, 9), device=device)
    a = selective_log_softmax(logits, targets)
    b = selective_log_softmax(logits, targets)
    assert a.shape == (4, 9) and torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_selective_log_softmax_backward_in_place_and_unaligned_rows(device):
    logits = torch.randn(7, 1001, device=device)
    view = logits[:, 1:]  # rows start off a 16-byte boundary: the scalar path
    targets = torch.randint(0, 1000, (7,), device=device)
    logp = logprobs_of(device, view, targets)
    ref = torch.log_softmax(view.double(), -1).gather(-1, targets[:, None])[:, 0]
    np.testing.assert_allclose(host(logp), host(ref), rtol=1e-5, atol=2e-5)
    g = torch.randn(7, device=device)
    out = dlogits_of(device, logits, targets, g)
    assert host(out).shape == tuple(logits.shape)
    if device == "cuda":  # the in-place backward is the CUDA path's own (TRL's memory saver)
        dense = logits.clone()
        in_place = _cuda.selective_logprobs_backward(dense, targets, 1.0, g, None, in_place=True)
        assert in_place.data_ptr() == dense.data_ptr()
        assert torch.equal(in_place, out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
def test_completion_logprobs_match_the_sliced_op(device, inplace):
    """The full logits in: on CUDA the backward writes the completion positions through the
    logits view's own layout into a full-size gradient (or the logits themselves)."""
    from sgpo_rs.torch import completion_logprobs, selective_log_softmax

    logits = torch.randn(3, 17, 4099, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, 4099, (3, 12), device=device)
    g = torch.randn(3, 12, device=device)
    a = logits.clone().requires_grad_(True)
    logp = completion_logprobs(a, ids, 0.9, inplace=inplace)
    (logp * g).sum().backward()
    b = logits.clone().requires_grad_(True)
    want = selective_log_softmax(b[:, :-1][:, -12:], ids, 0.9)
    (want * g).sum().backward()
    assert torch.equal(logp, want)
    assert torch.equal(a.grad, b.grad)
    assert not a.grad[:, :4].any() and not a.grad[:, 16:].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["padded_vocab", "sequence_first", "vocab_strided"])
@pytest.mark.parametrize("inplace", [False, True])
def test_completion_logprobs_take_logits_in_any_layout(device, layout, inplace):
    """On CUDA the backward writes the completion rows through the gradient's own addressing,
    whatever the logits' strides (a padded vocabulary's slice, a sequence-first buffer, a
    vocabulary dimension that is not contiguous, which is read from a copy)."""
    from sgpo_rs.torch import completion_logprobs, selective_log_softmax

    views = {
        "padded_vocab": ((2, 9, 4104), lambda x: x[..., :4099]),
        "sequence_first": ((9, 2, 4099), lambda x: x.transpose(0, 1)),
        "vocab_strided": ((4099, 2, 9), lambda x: x.permute(1, 2, 0)),
    }
    shape, view = views[layout]
    base = torch.randn(*shape, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, 4099, (2, 6), device=device)
    g = torch.randn(2, 6, device=device)
    a = view(base.clone()).requires_grad_(True)
    (completion_logprobs(a, ids, 0.9, inplace=inplace) * g).sum().backward()
    b = view(base.clone()).contiguous().requires_grad_(True)
    (selective_log_softmax(b[:, :-1][:, -6:], ids, 0.9) * g).sum().backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_selective_log_softmax_bad_inputs_raise(device):
    from sgpo_rs.torch import selective_log_softmax

    logits = torch.randn(3, 10, device=device)
    with pytest.raises(ValueError, match="targets"):
        selective_log_softmax(logits, torch.tensor([0, 10, 1], device=device))
    bad = logits.clone()
    bad[1, 4] = float("nan")
    # On CUDA too the message is the CPU engine's (a flagged status reruns the call there).
    with pytest.raises(ValueError, match=r"logits: expected finite values, found NaN at \(1, 4\)"):
        selective_log_softmax(bad, torch.tensor([0, 1, 2], device=device))
    bad = logits.clone()
    bad[2] = float("-inf")
    with pytest.raises(ValueError, match="logits: row 2"):
        selective_log_softmax(bad, torch.tensor([0, 1, 2], device=device))


# --- fused policy loss --------------------------------------------------------------------------

LOSS_TYPES = list(sg.LOSS_TYPES)  # the engine's registry


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


def on(device: str, array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor on ``device``, never sharing memory with it (also on CPU)."""
    return torch.from_numpy(array).to(device, copy=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_matches_the_cpu_path(loss_type, level, beta, device):
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
        poison_allocator(device, batch * length * 8)
        lp = on(device, logp).requires_grad_(True)
        m = on(device, mask).to(mask_dtype)
        loss, metrics = sgpo_loss(
            lp,
            on(device, old),
            on(device, a),
            m,
            ref_logp=on(device, ref),
            **options,
        )
        loss.backward()
        what = f"{loss_type} {level} beta={beta} ({batch}, {length})"
        close(loss.item(), cpu.loss, what=what)
        grad = host(lp.grad)
        assert np.isfinite(grad).all(), what
        assert (grad[~mask] == 0).all(), what
        close(grad, cpu.grad, what=what)
        assert metrics.keys() == cpu.metrics.keys(), what
        for key, value in cpu.metrics.items():
            if np.isnan(value):
                assert np.isnan(metrics[key]), f"{what} {key}"
            else:
                close(metrics[key], value, what=f"{what} {key}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_policy_loss_half_inputs_equal_the_float32_path_on_upcast_values(dtype, device):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 99)
    logp, old, ref, adv, mask = loss_inputs(rng, 32, 300)
    half = [torch.from_numpy(x).to(dtype).to(device) for x in (logp, old, ref)]
    up = [x.float() for x in half]
    m = on(device, mask)
    a = on(device, adv)
    lp_h = half[0].clone().requires_grad_(True)
    lp_f = up[0].clone().requires_grad_(True)
    loss_h, _ = sgpo_loss(lp_h, half[1], a, m, ref_logp=half[2], beta=0.04, loss_type="grpo")
    loss_f, _ = sgpo_loss(lp_f, up[1], a, m, ref_logp=up[2], beta=0.04, loss_type="grpo")
    loss_h.backward()
    loss_f.backward()
    assert loss_h.item() == loss_f.item()
    assert torch.equal(lp_h.grad, lp_f.grad.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_policy_loss_is_bit_identical_across_runs_and_extreme_ratios_stay_finite(device):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 7)
    logp, old, ref, adv, mask = loss_inputs(rng, 64, 4096, spread=20.0)  # log ratios up to ~+-60
    args = [on(device, x) for x in (logp, old, adv, mask)]
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


@pytest.mark.parametrize("device", DEVICES)
def test_policy_loss_bad_inputs_name_the_argument(device):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 3)
    logp, old, ref, adv, mask = loss_inputs(rng, 4, 50)
    mask[2, 5] = True
    logp[2, 5] = np.nan
    args = [on(device, x) for x in (logp, old, adv, mask)]
    with pytest.raises(ValueError, match=r"logp: expected finite values, found NaN at \(2, 5\)"):
        sgpo_loss(*args)
    logp[2, 5] = -1.0
    weights = on(device, mask.astype(np.float32))
    weights[1, 3] = -1.0
    with pytest.raises(ValueError, match=r"mask: expected finite weights >= 0, got -1 at \(1, 3\)"):
        sgpo_loss(on(device, logp), args[1], args[2], weights)
    with pytest.raises(ValueError, match="ref_logp"):
        sgpo_loss(on(device, logp), args[1], args[2], args[3], beta=0.1)
    if device == "cuda":  # float64 log-probabilities are fine on CPU; the CUDA kernels refuse them
        with pytest.raises(TypeError, match="logp"):
            sgpo_loss(on(device, logp).double(), None, args[2], args[3])


# --- rewards and advantages ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["all_negative", "all_incorrect"])
@pytest.mark.parametrize(
    "rule", [{}, {"preset": "paper"}, {"rule": "logistic", "beta": 40.0, "gamma": 0.2, "credit_scale": 0.3}]
)
def test_sgpo_rewards_and_advantages_match_the_cpu_path(rule, mode, device):
    rng = np.random.default_rng(SEED + 11)
    for rows, group_size in [(8, 4), (1024, 8), (4096, 16)]:
        rewards = rng.choice([0.0, 0.0, 0.0, 1.0, np.nan], rows)
        num_steps = rng.integers(1, 9, rows)
        first_error = np.minimum(rng.integers(-2, 9, rows), num_steps - 1)
        ids = rng.permutation(np.repeat(np.arange(rows // group_size), group_size))
        for groups in (dict(group_size=group_size), dict(group_ids=ids)):
            cpu = sg.sgpo_rewards(rewards, first_error, num_steps, mode=mode, **groups, **rule)
            gpu_groups = groups if "group_size" in groups else dict(group_ids=on(device, ids))
            # On CPU the numpy-level functions return numpy arrays for CPU tensors.
            out = sg.sgpo_rewards(
                on(device, rewards),
                on(device, first_error),
                on(device, num_steps),
                mode=mode,
                **gpu_groups,
                **rule,
            )
            np.testing.assert_array_equal(host(out.rewards), cpu.rewards)
            np.testing.assert_array_equal(host(out.credit), cpu.credit)
            np.testing.assert_array_equal(host(out.all_negative), cpu.all_negative)
            np.testing.assert_array_equal(host(out.diversified), cpu.diversified)
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
                close(host(got), ref, what=f"{scale} {singleton}")


@pytest.mark.parametrize("device", DEVICES)
def test_token_advantages_and_bad_verdicts(device):
    adv = torch.randn(300, device=device)
    mask = torch.rand(300, 77, device=device) > 0.3
    out = sg.token_advantages(adv, mask)  # a CUDA tensor on CUDA, a numpy array on CPU
    expected = host(adv[:, None] * mask.float())
    assert host(out).dtype == expected.dtype and np.array_equal(host(out), expected)
    if device == "cuda":
        assert torch.equal(out, adv[:, None] * mask.float())
    with pytest.raises(ValueError, match="first_error"):
        sg.sgpo_rewards(
            torch.zeros(4, device=device),
            torch.tensor([0, 5, 0, 0]),
            torch.tensor([3, 3, 3, 3]),
            group_size=2,
        )
    with pytest.raises(ValueError, match="rewards"):
        sg.group_advantages(torch.tensor([0.0, float("inf")], device=device), group_size=2)


@pytest.mark.parametrize("device", DEVICES)
def test_selective_log_softmax_reads_trl_style_sliced_logits_in_place(device):
    from sgpo_rs.torch import selective_log_softmax

    full = torch.randn(3, 11, 4099, device=device, dtype=torch.bfloat16)
    view = full[:, :-1]  # (B, T, V) with a batch stride of 11 rows: TRL's logits[:, :-1]
    assert not view.is_contiguous()
    if device == "cuda":  # how the CUDA kernels address the view (the CPU path copies it)
        # (the core derives rows 30, groups of 10 rows, 11 * 4099 elements apart: a Rust test)
        x = _cuda._logits_view(view)
        assert x.data_ptr() == full.data_ptr() and x.shape == view.shape
    targets = torch.randint(0, 4099, (3, 10), device=device)
    leaf = view.detach().requires_grad_(True)
    logp = selective_log_softmax(leaf, targets)
    ref = torch.log_softmax(view.double(), -1).gather(-1, targets[..., None])[..., 0]
    np.testing.assert_allclose(host(logp), host(ref), rtol=1e-5, atol=2e-5)
    logp.sum().backward()
    dense = selective_log_softmax(view.contiguous().requires_grad_(True), targets)
    assert torch.equal(logp, dense)
    assert leaf.grad.shape == view.shape


@pytest.mark.parametrize("device", DEVICES)
def test_large_logits_keep_their_precision(device):
    # Logits of 1e4: the log-probability is a small difference of large numbers.
    logits = torch.tensor([[1e4, 1e4 - 0.5, 1e4 - 3.0], [30.0, 15.0, -5.0]], device=device)
    targets = torch.tensor([1, 0], device=device)
    logp = logprobs_of(device, logits, targets)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None])[:, 0]
    np.testing.assert_allclose(host(logp), host(ref), rtol=1e-6, atol=1e-7)
    # A confident target keeps its tiny gradient 1 - p (3.06e-7 here), not 0.
    d = host(dlogits_of(device, logits, targets, torch.ones(2, device=device)))
    expected = -torch.expm1(ref[1]).item()
    assert abs(float(d[1, 0]) - expected) < 1e-12 + 1e-6 * expected


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_weights_and_huge_log_ratios_match_the_cpu_path(device):
    from sgpo_rs.torch import sgpo_loss

    rng = np.random.default_rng(SEED + 21)
    logp, old, ref, adv, mask = loss_inputs(rng, 6, 40)
    weights = (mask * rng.integers(1, 4, mask.shape)).astype(np.uint8)  # weights 0..3
    old[mask] -= rng.choice([0.0, 800.0], mask.sum())  # log ratios past exp's range
    for loss_type in ("dapo", "sapo", "vanilla"):
        lp = on(device, logp).requires_grad_(True)
        args = [on(device, x) for x in (old, adv, weights)]
        try:
            cpu = sg.policy_loss(logp, old, adv, weights, loss_type=loss_type)
        except ValueError as error:  # the CPU path refuses an overflowing result: so must the GPU
            with pytest.raises(ValueError, match=str(error).split(":")[0]):
                sgpo_loss(lp, *args, loss_type=loss_type)
            continue
        loss, _ = sgpo_loss(lp, *args, loss_type=loss_type)
        loss.backward()
        close(loss.item(), cpu.loss, what=loss_type)
        close(host(lp.grad), cpu.grad, what=loss_type)


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_level_functions_dispatch_cuda_tensors(device):
    rng = np.random.default_rng(SEED + 31)
    logp, old, ref, adv, mask = loss_inputs(rng, 8, 100)
    cpu = sg.policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
    out = sg.policy_loss(
        *(on(device, x) for x in (logp, old, adv, mask)),
        ref_logp=on(device, ref),
        beta=0.04,
        loss_type="grpo",
    )
    if device == "cuda":  # CUDA tensors in, CUDA tensors out (CPU tensors give numpy arrays)
        assert out.grad.is_cuda
    close(out.loss, cpu.loss)
    close(host(out.grad), cpu.grad)
    logits = rng.normal(0, 2, (6, 301)).astype(np.float32)
    targets = rng.integers(0, 301, 6)
    lp_cpu, h_cpu = sg.selective_logprobs(logits, targets, temperature=0.9, entropy=True)
    lp, h = sg.selective_logprobs(on(device, logits), on(device, targets), temperature=0.9, entropy=True)
    np.testing.assert_allclose(host(lp), lp_cpu, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(host(h), h_cpu, rtol=1e-5, atol=2e-5)
    g = rng.normal(size=6).astype(np.float32)
    d_cpu = sg.selective_logprobs_backward(logits, targets, g, temperature=0.9)
    d = sg.selective_logprobs_backward(
        on(device, logits),
        on(device, targets),
        on(device, g),
        temperature=0.9,
    )
    np.testing.assert_allclose(host(d), d_cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
def test_token_advantages_every_alignment(device, mask_dtype):
    # Rows of 1, 3, 77 (heads and tails of every length before the 16-byte boundaries), 4096
    # (aligned rows), and a mask that is a view starting one element in (not co-aligned).
    rng = torch.Generator().manual_seed(SEED + 41)
    for rows, length in [(5, 1), (7, 3), (300, 77), (64, 4096)]:
        adv = torch.randn(rows, generator=rng).to(device)
        wide = (torch.rand(rows, length + 1, generator=rng) * 3).floor().to(mask_dtype).to(device)
        for mask in (
            wide[:, :length].contiguous(),
            wide.reshape(-1)[1 : 1 + rows * length].reshape(rows, length),
        ):
            out = sg.token_advantages(adv, mask)
            expected = host(adv[:, None] * mask.float())
            np.testing.assert_array_equal(host(out), expected, err_msg=f"{rows}x{length} {mask_dtype}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_with_the_forwards_row_statistics_equals_the_recomputing_backward(device, dtype):
    # The autograd op saves the forward's row statistics; the numpy-level backward recomputes
    # them. Both must give the same gradient bit for bit, with and without the entropy term.
    from sgpo_rs.torch import selective_log_softmax

    rng = torch.Generator().manual_seed(SEED + 43)
    for n, v in [(9, 1001), (17, 32000)]:
        logits = (torch.randn(n, v, generator=rng) * 2).to(dtype).to(device)
        targets = torch.randint(0, v, (n,), generator=rng).to(device)
        g = torch.randn(n, generator=rng).to(device)
        gh = torch.randn(n, generator=rng).to(device)
        for entropy in (False, True):
            x = logits.detach().clone().requires_grad_(True)
            if entropy:
                logp, ent = selective_log_softmax(x, targets, 0.8, return_entropy=True)
                (logp * g).sum().add((ent * gh).sum()).backward()
            else:
                (selective_log_softmax(x, targets, 0.8) * g).sum().backward()
            if device == "cuda":
                again = _cuda.selective_logprobs_backward(logits, targets, 0.8, g, gh if entropy else None)
            else:
                import ml_dtypes

                values = host(logits.float())
                out = np.asarray(
                    sg.selective_logprobs_backward(
                        values if dtype == torch.float32 else values.astype(ml_dtypes.bfloat16),
                        host(targets),
                        host(g),
                        grad_entropy=host(gh) if entropy else None,
                        temperature=0.8,
                    )
                )
                again = torch.from_numpy(out.astype(np.float32)).to(dtype)
            what = f"{n}x{v} {dtype} entropy={entropy}"
            if device == "cpu" and dtype == torch.bfloat16:
                # The CPU path's saved and recomputed statistics round differently (its fast
                # path sums in other lanes): equal to bfloat16 rounding.
                np.testing.assert_allclose(
                    host(x.grad.float()), host(again.float()), rtol=1e-2, atol=1e-6, err_msg=what
                )
            else:
                assert torch.equal(x.grad, again), what


@gpu
def test_the_kernels_are_capturable_in_a_cuda_graph_with_checks_off():
    # With check=False nothing waits for the stream, so a training step can capture the launch
    # sequences in a CUDA graph; a replay must give what an eager call gives, bit for bit.
    from sgpo_rs.torch import _options as loss_options

    rng = np.random.default_rng(SEED + 51)
    logp, old, ref, adv, mask = loss_inputs(rng, 8, 256)
    lp, o, r, a, m = (torch.from_numpy(x).cuda() for x in (logp, old, ref, adv, mask))
    opts = loss_options(dict(beta=0.04, loss_type="grpo"))
    logits = torch.randn(6, 5003, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 5003, (6,), device="cuda")
    g = torch.randn(6, device="cuda")

    def step():
        loss, grad, _ = _cuda.policy_loss(lp, o, r, a, m, opts, check=False)
        logp_t, _, stats = _cuda.selective_logprobs(logits, targets, 0.9, False, check=False, keep_stats=True)
        dlogits = _cuda.selective_logprobs_backward(logits, targets, 0.9, g, None, check=False, stats=stats)
        return loss, grad, logp_t, dlogits

    eager = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_check_false_waits_for_nothing_and_gives_the_same_numbers(device):
    # check=False: no device-to-host read on the hot path (torch's sync debug mode turns any such
    # read into an error), the metrics stay on the device, and every number equals check=True's.
    # On the CPU the flag changes nothing.
    from sgpo_rs.torch import selective_log_softmax, sgpo_loss

    rng = np.random.default_rng(SEED + 61)
    # Everything is on the device before the sync debug mode starts (a host-to-device copy waits).
    lp0, o, r, a, m = (on(device, x) for x in loss_inputs(rng, 6, 130))
    logits = torch.randn(4, 33, 1001, device=device)
    targets = torch.randint(0, 1001, (4, 33), device=device)

    def step(check: bool):
        lp = lp0.clone().requires_grad_(True)
        loss, metrics = sgpo_loss(lp, o, a, m, ref_logp=r, beta=0.04, check=check)
        loss.backward()
        x = logits.clone().requires_grad_(True)
        out = selective_log_softmax(x, targets, 0.8, check=check)
        out.sum().backward()
        return loss.detach(), lp.grad, metrics, out.detach(), x.grad

    want = step(True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = step(False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in got[2].values())
    else:
        got = step(False)
    for g, w in zip(got[:2] + got[3:], want[:2] + want[3:]):
        assert torch.equal(g, w)
    assert {k: float(v) for k, v in got[2].items()} == want[2]
    with pytest.raises(TypeError, match="check"):
        sgpo_loss(lp0, None, a, m, check="no")

"""The fused selective log-softmax against torch in float64: values, entropy and gradients.

Tolerance: outputs are float32 computed from float64 sums, so they sit within a float32 rounding
(6e-8 relative) of the float64 reference, plus, on the AVX2 path, the error of float32
exponentials (about 3 ulp = 4e-7 relative per term and in the sum, so about 4e-7 absolute in
``logp = (z_y - m) - ln s`` and in the entropy, and 4e-7 relative in each gradient element's
probability); we allow rtol 1e-6 and atol 1e-6 * max|ref| (the atol covers gradient elements that
are tiny next to the row's largest). Measured errors stay under a tenth of that. Half-precision logits are
compared against the reference on their exact float64 upcast, so the same tolerance holds; only
gradients cast back to bfloat16/float16 by the torch op are compared at the half's rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs.logprob import selective_logprobs_backward

torch = pytest.importorskip("torch")
from sgpo_rs.torch import selective_log_softmax  # noqa: E402

RTOL = 1e-6


def assert_close(got, ref, rtol=RTOL):
    got = torch.as_tensor(np.asarray(got)).double() if not isinstance(got, torch.Tensor) else got.double()
    ref = ref.double()
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(got)), "non-finite values differ"
    assert torch.equal(got[~finite], ref[~finite])
    if finite.any():
        scale = ref[finite].abs().max().item()
        torch.testing.assert_close(got[finite], ref[finite], rtol=rtol, atol=rtol * max(scale, 1e-30))


def reference(logits, targets, temperature, g=None, g_h=None):
    """torch float64: logp, entropy and (if g given) dlogits of sum(g * logp + g_h * H)."""
    x = logits.detach().double().requires_grad_(g is not None)
    logsm = torch.log_softmax(x / temperature, dim=-1)
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = logsm.exp()
    entropy = -(p * logsm.masked_fill(p == 0, 0.0)).sum(-1)
    grad = None
    if g is not None:
        total = (g.double() * logp).sum()
        if g_h is not None:
            total = total + (g_h.double() * entropy).sum()
        (grad,) = torch.autograd.grad(total, x)
    return logp.detach(), entropy.detach(), grad


def make(shape, dtype, scale=5.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits, targets


def numpy_logits(logits):
    if logits.dtype == torch.bfloat16:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return logits.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return logits.numpy()


SHAPES = [(3, 1), (5, 7), (2, 3, 7), (4, 1000), (3, 32000), (2, 152064)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_numpy_values_and_gradient(shape, temperature):
    logits, targets = make(shape, torch.float32)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(shape[:-1], generator=gen)
    g_h = torch.randn(shape[:-1], generator=gen)
    ref_lp, ref_h, ref_grad = reference(logits, targets, temperature, g, g_h)
    logp, entropy = sg.selective_logprobs(
        logits.numpy(), targets.numpy(), temperature=temperature, entropy=True
    )
    assert logp.dtype == np.float32 and logp.shape == shape[:-1] and entropy.shape == shape[:-1]
    assert_close(logp, ref_lp)
    assert_close(entropy, ref_h)
    dlogits = selective_logprobs_backward(
        logits.numpy(), targets.numpy(), g.numpy(), g_h.numpy(), temperature=temperature
    )
    assert dlogits.dtype == np.float32 and dlogits.shape == shape
    assert_close(dlogits, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(6, 7), (2, 3, 500), (2, 32000)], ids=str)
def test_dtypes_against_their_float64_upcast(dtype, shape):
    logits, targets = make(shape, dtype, scale=3.0)
    ref_lp, ref_h, ref_grad = reference(logits, targets, 1.3, torch.ones(shape[:-1]), None)
    logp, entropy = sg.selective_logprobs(
        numpy_logits(logits), targets.numpy(), temperature=1.3, entropy=True
    )
    assert_close(logp, ref_lp)
    assert_close(entropy, ref_h)
    dlogits = selective_logprobs_backward(
        numpy_logits(logits), targets.numpy(), np.ones(shape[:-1], np.float32), temperature=1.3
    )
    assert_close(dlogits, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_torch_op_values_and_gradients(dtype, temperature):
    shape = (2, 4, 3000)
    logits, targets = make(shape, dtype, scale=4.0, seed=3)
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(shape[:-1], generator=gen)
    g_h = torch.randn(shape[:-1], generator=gen)
    ref_lp, ref_h, ref_grad = reference(logits, targets, temperature, g, g_h)

    x = logits.clone().requires_grad_(True)
    logp, entropy = selective_log_softmax(x, targets, temperature, return_entropy=True)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert_close(logp, ref_lp)
    assert_close(entropy, ref_h)
    ((logp * g).sum() + (entropy * g_h).sum()).backward()
    assert x.grad.dtype == dtype
    if dtype in (torch.float32, torch.float64):
        assert_close(x.grad, ref_grad)
    else:  # the float32 gradient rounded to the logits' half dtype
        assert_close(x.grad, ref_grad.to(dtype), rtol=1e-2)

    x = logits.clone().requires_grad_(True)
    logp = selective_log_softmax(x, targets, temperature)
    (logp * g).sum().backward()
    _, _, ref_grad = reference(logits, targets, temperature, g, None)
    if dtype in (torch.float32, torch.float64):
        assert_close(x.grad, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_writes_the_logits_dtype(dtype):
    """The core's ``out_dtype`` path: float32/float64 as computed, halves as torch's
    round-to-nearest-even of the float32 gradient (the target's element is rounded once from
    float64, so it may sit one half-ulp step away)."""
    from sgpo_rs import _core
    from sgpo_rs.torch import _logits_numpy

    logits, targets = make((5, 4099), dtype, scale=4.0, seed=7)
    gen = torch.Generator().manual_seed(8)
    g = torch.randn(5, generator=gen).numpy()
    g_h = torch.randn(5, generator=gen).numpy()
    x, half = _logits_numpy(logits)
    t = targets.numpy()
    run = lambda out: _core.selective_logprobs_backward_core(  # noqa: E731
        x, t, g, g_h, half_dtype=half, temperature=0.8, out_dtype=out
    )
    d32 = torch.from_numpy(run("float32"))
    name = str(dtype).removeprefix("torch.")
    got = torch.from_numpy(run(name))
    if dtype in (torch.bfloat16, torch.float16):
        assert got.dtype == torch.int16
        got = got.view(dtype)
        expected = d32.to(dtype)
        rows = torch.arange(5)
        differ = (got != expected).nonzero().tolist()
        assert all(j == targets[i].item() for i, j in differ), differ
        assert_close(got[rows, targets], expected[rows, targets], rtol=1e-2)
    elif dtype == torch.float64:
        assert got.dtype == torch.float64
        assert_close(got, d32.double())
    else:
        assert torch.equal(got, d32)
    _, _, ref_grad = reference(logits, targets, 0.8, torch.from_numpy(g), torch.from_numpy(g_h))
    assert_close(d32, ref_grad)
    with pytest.raises(ValueError, match="out_dtype"):
        run("int8")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("return_entropy", [False, True])
def test_saved_stats_give_the_same_gradient(dtype, return_entropy):
    """The torch op's backward reuses the forward's per-row stats; the gradient is bit-identical
    to one that recomputes them."""
    from sgpo_rs import _core
    from sgpo_rs.torch import _logits_numpy

    logits, targets = make((3, 2, 3001), dtype, scale=4.0, seed=11)
    gen = torch.Generator().manual_seed(12)
    g = torch.randn(3, 2, generator=gen)
    g_h = torch.randn(3, 2, generator=gen)
    x = logits.clone().requires_grad_(True)
    out = selective_log_softmax(x, targets, 0.9, return_entropy=return_entropy)
    if return_entropy:
        ((out[0] * g).sum() + (out[1] * g_h).sum()).backward()
    else:
        (out * g).sum().backward()
    xn, half = _logits_numpy(logits)
    gh = g_h.reshape(-1).numpy() if return_entropy else None
    name = str(dtype).removeprefix("torch.")
    fresh = _core.selective_logprobs_backward_core(
        xn,
        targets.reshape(-1).numpy(),
        g.reshape(-1).numpy(),
        gh,
        half_dtype=half,
        temperature=0.9,
        out_dtype=name,
    )
    fresh = torch.from_numpy(fresh)
    if dtype in (torch.bfloat16, torch.float16):
        fresh = fresh.view(dtype)
    assert torch.equal(x.grad, fresh.reshape(x.shape))
    with pytest.raises(ValueError, match="stats"):
        _core.selective_logprobs_backward_core(
            xn,
            targets.reshape(-1).numpy(),
            g.reshape(-1).numpy(),
            None,
            half_dtype=half,
            temperature=0.9,
            stats=np.zeros((6, 3)),
        )


def test_torch_matches_trl_selective_log_softmax():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    logits, targets = make((3, 50, 1000), torch.float32)
    ours = selective_log_softmax(logits, targets)
    theirs = trl_utils.selective_log_softmax(logits, targets)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_extreme_logits(temperature):
    logits, targets = make((4, 2000), torch.float32, scale=1.0)
    logits[:, ::2] = 1e4
    logits[:, 1::2] = -1e4
    logits[0, 5] = 1e4 - 3.0
    logits[1] = torch.linspace(-1e4, 1e4, 2000)
    targets[0] = 5
    g = torch.ones(4)
    ref_lp, ref_h, ref_grad = reference(logits, targets, temperature, g, g)
    logp, entropy = sg.selective_logprobs(
        logits.numpy(), targets.numpy(), temperature=temperature, entropy=True
    )
    assert_close(logp, ref_lp)
    assert_close(entropy, ref_h)
    dlogits = selective_logprobs_backward(
        logits.numpy(), targets.numpy(), g.numpy(), g.numpy(), temperature=temperature
    )
    assert_close(dlogits, ref_grad)


def test_negative_infinity_is_a_token_of_probability_zero():
    logits, targets = make((3, 100), torch.float32)
    logits[:, :50] = -float("inf")
    targets[0] = 10  # a banned target: logp = -inf
    targets[1] = 60
    ref_lp, ref_h, _ = reference(logits, targets, 1.0)
    logp, entropy = sg.selective_logprobs(logits.numpy(), targets.numpy(), entropy=True)
    assert logp[0] == -np.inf
    assert_close(logp, ref_lp)
    assert_close(entropy, ref_h)
    g = torch.ones(3)
    _, _, ref_grad = reference(logits, targets, 1.0, g)
    dlogits = selective_logprobs_backward(logits.numpy(), targets.numpy(), g.numpy(), g.numpy())
    assert np.all(np.isfinite(dlogits))
    assert_close(dlogits[:, :50], torch.zeros(3, 50) + ref_grad[:, :50])
    assert dlogits[0, 10] == 1.0


def test_bad_inputs_name_the_argument():
    logits = np.zeros((2, 5), np.float32)
    targets = np.array([0, 4])
    with pytest.raises(ValueError, match="targets"):
        sg.selective_logprobs(logits, np.array([0, 5]))
    with pytest.raises(ValueError, match="targets"):
        sg.selective_logprobs(logits, np.array([-1, 0]))
    with pytest.raises(ValueError, match="targets"):
        sg.selective_logprobs(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets"):
        sg.selective_logprobs(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits"):
        sg.selective_logprobs(np.zeros(5, np.float32), np.array(0))
    with pytest.raises(ValueError, match="logits"):
        sg.selective_logprobs(np.zeros((2, 0), np.float32), targets)
    with pytest.raises(TypeError, match="logits"):
        sg.selective_logprobs(np.zeros((2, 5), np.int64), targets)
    bad = logits.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"logits.*\(1, 3\)"):
        sg.selective_logprobs(bad, targets)
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match="logits"):
        sg.selective_logprobs(bad, targets)
    with pytest.raises(ValueError, match="logits"):
        sg.selective_logprobs(np.full((2, 5), -np.inf, np.float32), targets)
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            sg.selective_logprobs(logits, targets, temperature=temperature)
    with pytest.raises(TypeError, match="temperature"):
        sg.selective_logprobs(logits, targets, temperature="1")
    with pytest.raises(ValueError, match="grad_logp"):
        selective_logprobs_backward(logits, targets, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="grad_logp"):
        selective_logprobs_backward(logits, targets, np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="grad_entropy"):
        selective_logprobs_backward(logits, targets, np.ones(2), np.ones((2, 1)))

    t_logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="targets"):
        selective_log_softmax(t_logits, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="targets"):
        selective_log_softmax(t_logits, torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="targets"):
        selective_log_softmax(t_logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(t_logits, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="logits"):
        selective_log_softmax(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        selective_log_softmax(torch.zeros(5), torch.tensor(0))
    with pytest.raises(TypeError, match="logits"):
        selective_log_softmax(torch.zeros(2, 5, dtype=torch.int32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        selective_log_softmax(torch.zeros(2, 0), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="logits"):
        selective_log_softmax(torch.zeros(2, 5, device="meta"), torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_raise_naming_targets():
    with pytest.raises(RuntimeError, match="targets"):
        selective_log_softmax(torch.zeros(2, 5, device="cuda"), torch.tensor([0, 1]))


def test_non_contiguous_and_no_grad():
    logits, targets = make((8, 300), torch.float32)
    view = logits.t().contiguous().t()  # non-contiguous, same values
    assert not view.is_contiguous()
    with torch.no_grad():
        logp = selective_log_softmax(view, targets)
    ref_lp, _, _ = reference(logits, targets, 1.0)
    assert_close(logp, ref_lp)


# --- completion_logprobs: the full logits in, the completion positions' log-probabilities out ----


def sliced(logits, ids, temperature, return_entropy):
    """TRL's way: slice in autograd, then the log-softmax of the completion positions."""
    return selective_log_softmax(logits[:, :-1][:, -ids.shape[1] :], ids, temperature, return_entropy)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length,count", [(9, 8), (12, 5), (2, 1)])
@pytest.mark.parametrize("inplace", [False, True])
def test_completion_logprobs_equal_the_sliced_op_bit_for_bit(dtype, length, count, inplace):
    from sgpo_rs.torch import completion_logprobs

    logits, _ = make((3, length, 37), dtype, seed=length + count)
    ids = torch.randint(0, 37, (3, count), generator=torch.Generator().manual_seed(7))
    g, gh = torch.randn(3, count, dtype=torch.float64).float(), torch.randn(3, count).float()
    a = logits.clone().requires_grad_(True)
    logp, entropy = completion_logprobs(a, ids, 0.7, return_entropy=True, inplace=inplace)
    b = logits.clone().requires_grad_(True)
    want_logp, want_entropy = sliced(b, ids, 0.7, True)
    assert torch.equal(logp, want_logp) and torch.equal(entropy, want_entropy)
    ((logp * g).sum() + (entropy * gh).sum()).backward()
    ((want_logp * g).sum() + (want_entropy * gh).sum()).backward()
    # Zeros at the prompt positions and the last one, exactly where the sliced op's autograd
    # puts them.
    assert a.grad.shape == logits.shape and a.grad.dtype == logits.dtype
    assert torch.equal(a.grad, b.grad)
    assert not a.grad[:, : length - 1 - count].any() and not a.grad[:, length - 1 :].any()


def test_completion_logprobs_inplace_returns_the_logits_as_their_gradient():
    from sgpo_rs.torch import completion_logprobs

    logits, _ = make((2, 6, 11), torch.float32)
    ids = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_(True)
    storage = x.data_ptr()
    completion_logprobs(x, ids, inplace=True).sum().backward()
    assert x.grad.data_ptr() == storage  # no allocation of the logits' size
    y = logits.clone().requires_grad_(True)
    sliced(y, ids, 1.0, False).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_completion_logprobs_without_grad_and_its_bad_inputs():
    from sgpo_rs.torch import completion_logprobs

    logits, _ = make((2, 6, 11), torch.float32)
    ids = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(completion_logprobs(logits, ids), sliced(logits, ids, 1.0, False))
    with pytest.raises(ValueError, match=r"logits: expected a 3-D \(B, L, V\) tensor"):
        completion_logprobs(logits[0], ids)
    with pytest.raises(ValueError, match=r"completion_ids: expected shape \(B, T\) with B = 2"):
        completion_logprobs(logits, ids[:1])
    with pytest.raises(ValueError, match="completion_ids: expected T < L = 6"):
        completion_logprobs(logits, torch.zeros(2, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        completion_logprobs(logits.requires_grad_(True), torch.full((2, 3), 11))
    with pytest.raises(TypeError, match="inplace"):
        completion_logprobs(logits, ids, inplace="yes")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_trl_sliced_view_is_read_in_place(dtype):
    """``logits[:, :-1]`` reaches the core as it lies (no copy of the logits' size), with values
    and gradients bit for bit those of its contiguous copy."""
    from sgpo_rs.torch import _logits_numpy

    full, _ = make((3, 9, 101), dtype, seed=3)
    view = full[:, :-1]
    x, _ = _logits_numpy(view)
    assert np.shares_memory(
        x, full.view(torch.int16).numpy() if dtype in (torch.bfloat16, torch.float16) else full.numpy()
    )
    targets = torch.randint(0, 101, (3, 8), generator=torch.Generator().manual_seed(5))
    a = full.clone().requires_grad_(True)
    logp, entropy = selective_log_softmax(a[:, :-1], targets, 0.8, True)
    b = view.contiguous().requires_grad_(True)
    want_logp, want_entropy = selective_log_softmax(b, targets, 0.8, True)
    assert torch.equal(logp, want_logp) and torch.equal(entropy, want_entropy)
    g = torch.randn(3, 8)
    ((logp + entropy) * g).sum().backward()
    ((want_logp + want_entropy) * g).sum().backward()
    assert torch.equal(a.grad[:, :-1], b.grad) and not a.grad[:, -1].any()


def test_the_core_writes_into_a_gradient_laid_out_like_the_logits_and_refuses_overlap():
    from sgpo_rs import _core

    full = np.random.default_rng(0).normal(size=(2, 6, 33)).astype(np.float32)
    view = full[:, :-1]
    t = np.arange(10, dtype=np.int64) % 33
    g = np.ones(10, dtype=np.float32)
    out_full = np.full_like(full, np.nan)
    got = _core.selective_logprobs_backward_core(
        view, t, g, None, half_dtype="none", temperature=1.0, out=out_full[:, :-1]
    )
    assert got.base is out_full or np.shares_memory(got, out_full)
    dense = _core.selective_logprobs_backward_core(
        np.ascontiguousarray(view).reshape(10, 33), t, g, None, half_dtype="none", temperature=1.0
    )
    np.testing.assert_array_equal(out_full[:, :-1].reshape(10, 33), dense)
    assert np.isnan(out_full[:, -1]).all()  # the last position is no row: untouched
    # The same array twice: numpy's borrow rules refuse it; two arrays over one buffer (as two
    # torch tensors over one storage give): the core's own check does.
    with pytest.raises(ValueError, match="out: the array is borrowed elsewhere"):
        _core.selective_logprobs_backward_core(view, t, g, None, half_dtype="none", temperature=1.0, out=view)
    storage = torch.from_numpy(full)
    with pytest.raises(ValueError, match="out: expected memory apart from the logits"):
        _core.selective_logprobs_backward_core(
            storage[:, :-1].numpy(),
            t,
            g,
            None,
            half_dtype="none",
            temperature=1.0,
            out=storage[:, 1:].numpy(),
        )
    with pytest.raises(TypeError, match="out"):
        _core.selective_logprobs_backward_core(
            view, t, g, None, half_dtype="none", temperature=1.0, out=np.zeros((2, 5, 33))
        )


@pytest.mark.parametrize(
    "layout",
    ["padded_vocab", "sequence_first", "vocab_strided"],
    ids=["padded", "seq-first", "vocab-strided"],
)
@pytest.mark.parametrize("inplace", [False, True])
def test_completion_logprobs_take_logits_in_any_layout(layout, inplace):
    """Logits that are not a dense (B, L, V) tensor: a padded vocabulary's slice, a sequence-first
    buffer viewed batch-first, a vocabulary dimension that is not contiguous."""
    from sgpo_rs.torch import completion_logprobs

    gen = torch.Generator().manual_seed(11)
    if layout == "padded_vocab":
        base = torch.randn(2, 7, 40, generator=gen)

        def view(x):
            return x[..., :33]
    elif layout == "sequence_first":
        base = torch.randn(7, 2, 33, generator=gen)

        def view(x):
            return x.transpose(0, 1)
    else:
        base = torch.randn(33, 2, 7, generator=gen)

        def view(x):
            return x.permute(1, 2, 0)

    ids = torch.randint(0, 33, (2, 4), generator=gen)
    g = torch.randn(2, 4, generator=gen)
    a = view(base.clone()).requires_grad_(True)  # the layout itself, a leaf
    assert not a.is_contiguous()
    (completion_logprobs(a, ids, 0.9, inplace=inplace) * g).sum().backward()
    b = view(base.clone()).contiguous().requires_grad_(True)
    (sliced(b, ids, 0.9, False) * g).sum().backward()
    assert torch.equal(a.grad, b.grad)

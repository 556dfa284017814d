"""PyTorch autograd over the fused GRPO-family loss (``sgpo_rs.policy_loss``).

    from sgpo_rs.torch import sgpo_loss

    loss, metrics = sgpo_loss(per_token_logps, old_per_token_logps, advantages, completion_mask,
                              loss_type="grpo", beta=0.04, ref_logp=ref_per_token_logps,
                              gradient_accumulation_steps=steps)
    loss.backward()                      # per_token_logps.grad = dL/dlogp

This module needs torch and is only imported on request (``import sgpo_rs`` never imports torch).
One Rust call computes the loss, ``dL/dlogp`` and the metrics in a single pass (with the GIL
released); the backward is one multiplication by ``grad_output``.

CPU tensors run the Rust CPU kernels; CUDA tensors run the CUDA kernels (``kernels/*.cu``,
compiled with NVRTC on first use) on torch's current stream, on the tensors' own memory. Tensors
are never moved between devices behind your back: mixing devices raises a ``RuntimeError``.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _arrays, _core, _cuda
from .loss import OPTION_CHECKS, checked_options, loss_types, policy_loss

__all__ = ["SGPOLoss", "sgpo_loss"]

# Loss types whose TRL aggregation divides by `num_items` instead of dividing by the
# gradient-accumulation steps (TRL folds the steps into that normaliser), from the registry.
_NUM_ITEMS_LOSS_TYPES = tuple(
    name for name, info in loss_types().items() if not info.divides_by_gradient_accumulation
)

# The option names and defaults of `sgpo_rs.policy_loss` (the single source of truth); each option
# is checked by `sgpo_rs.loss.checked_options`, as `policy_loss` checks it.
_POLICY_LOSS_SIGNATURE = inspect.signature(policy_loss)
_DEFAULTS: Dict[str, Any] = {
    name: p.default
    for name, p in _POLICY_LOSS_SIGNATURE.parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("ref_logp", "out")
}


assert set(OPTION_CHECKS) == set(_DEFAULTS), "sgpo_rs.torch is out of date with sgpo_rs.policy_loss"

_LOGP_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_HALF_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64)


def _options(options: Dict[str, Any]) -> Dict[str, Any]:
    """`options` with the defaults of `sgpo_rs.policy_loss` filled in, each checked."""
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise TypeError(
            f"sgpo_loss: unexpected option {unknown[0]!r}; the options are those of "
            f"sgpo_rs.policy_loss: {', '.join(_DEFAULTS)}"
        )
    merged = {**_DEFAULTS, **options}
    return checked_options(merged)


def _check_device(name: str, tensor: torch.Tensor, device: Optional[torch.device] = None) -> None:
    """CPU, or CUDA when this build has the CUDA path; and ``device`` when given (the first
    input's: nothing is copied between devices)."""
    if device is not None and tensor.device != device:
        raise RuntimeError(
            f"{name}: expected a tensor on {device} like logp, got one on {tensor.device} "
            f"(sgpo-rs does not copy between devices for you)"
        )
    if tensor.device.type == "cpu":
        return
    if tensor.device.type == "cuda":
        if not _cuda.built():
            raise RuntimeError(
                f"{name}: is a CUDA tensor ({tensor.device}), and this build of sgpo-rs has no CUDA path. "
                f"Pass CPU tensors (sgpo-rs does not copy between devices for you)."
            )
        return
    raise RuntimeError(f"{name}: expected a CPU or CUDA tensor, got a tensor on {tensor.device}")


def _tensor(name: str, value: Any, device: torch.device) -> torch.Tensor:
    """A detached tensor on ``device`` (numpy arrays and lists are wrapped for CPU work, without a
    copy if possible)."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception as error:
            raise TypeError(f"{name}: expected a tensor, got {type(value).__name__} ({error})") from None
    _check_device(name, value, device)
    return value.detach()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor: no copy when contiguous, else one copy (`.contiguous()`)."""
    return tensor.contiguous().numpy()


def _logprobs(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """float32/float64 as they are; bfloat16/float16 as their int16 bits (the core reads the
    dtype from `half_dtype`). A companion of another dtype is cast to logp's (one copy)."""
    if tensor.dtype not in _LOGP_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float64, float16 or bfloat16, got {tensor.dtype}")
    tensor = tensor.detach()
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if dtype in _HALF_NAMES:
        tensor = tensor.contiguous().view(torch.int16)
    return _numpy(tensor)


def _mask(tensor: torch.Tensor) -> np.ndarray:
    """bool, uint8, int32, int64, float32, float64 as they are; other integers as int64 and
    float16/bfloat16 as float32 (one copy)."""
    if tensor.dtype not in _MASK_DTYPES:
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.to(torch.float32)
        elif not tensor.dtype.is_floating_point and not tensor.dtype.is_complex:
            tensor = tensor.to(torch.int64)
        else:
            raise TypeError(f"mask: expected bool, integer or float values, got dtype {tensor.dtype}")
    return _numpy(tensor)


def _advantages(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"advantages: expected real numbers, got dtype {tensor.dtype}")
    return _numpy(tensor.to(torch.float32))


def _gas_divisor(gradient_accumulation_steps: Any, options: Dict[str, Any]) -> int:
    """What the loss and the gradient are divided by for gradient accumulation (TRL's rule)."""
    steps = _arrays.integer("gradient_accumulation_steps", gradient_accumulation_steps)
    if options["loss_agg_mode"] is None and options["loss_type"] in _NUM_ITEMS_LOSS_TYPES:
        if steps > 1 and options["num_items"] is None:
            raise ValueError(
                f"gradient_accumulation_steps: with loss_type={options['loss_type']!r} TRL does not divide "
                f"the loss by the accumulation steps but folds them into num_items (num_items_in_batch / "
                f"num_processes * gradient_accumulation_steps / steps_per_generation); pass num_items "
                f"(tokens of the accumulation window on this process), or gradient_accumulation_steps=1"
            )
        return 1
    return steps


def _forward(
    logp: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    ref_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    options: Dict[str, Any],
    divisor: int,
    out: Optional[torch.Tensor] = None,
    check: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """One call of the Rust core; `options` already checked. Returns `(loss, grad, metrics)`: a
    0-dim float32 loss and the float32 gradient on logp's device (written into `out` when given),
    both already divided by `divisor`."""
    dtype = logp.dtype
    kwargs = dict(options)
    kwargs["grad_scale"] = options["grad_scale"] / divisor
    if logp.device.type == "cuda":
        loss, grad, metrics = _cuda.policy_loss(
            logp, old_logp, ref_logp, advantages, mask, kwargs, check=check, out=out
        )
        return (loss if divisor == 1 else loss / divisor), grad, metrics
    lp = _logprobs("logp", logp, dtype)
    old = None if old_logp is None else _logprobs("old_logp", old_logp, dtype)
    ref = None if ref_logp is None else _logprobs("ref_logp", ref_logp, dtype)
    loss, grad, metrics = _core.policy_loss_core(
        lp,
        old,
        ref,
        _advantages(advantages),
        _mask(mask),
        half_dtype=_HALF_NAMES.get(dtype, "none"),
        options=kwargs,
        out=None if out is None else out.detach().numpy(),
    )
    loss_t = torch.tensor(float(loss) / divisor, dtype=torch.float32)
    return loss_t, out if out is not None else torch.from_numpy(grad), dict(metrics)


class SGPOLoss(torch.autograd.Function):
    """``loss = SGPOLoss.apply(logp, old_logp, ref_logp, advantages, mask, options, divisor, metrics)``.

    The low-level autograd node behind :func:`sgpo_loss` (use that instead): ``options`` is the
    full, checked option dict of ``sgpo_rs.policy_loss``, ``divisor`` the gradient-accumulation
    divisor, and ``metrics`` a dict that the forward fills. Only ``logp`` gets a gradient.

    The forward computes ``dL/dlogp`` together with the loss (float32, from ``torch.from_numpy``
    over the core's output, no copy) and saves it; the backward returns
    ``(grad * grad_output).to(logp.dtype)``. It is once differentiable (no double backward).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logp: torch.Tensor,
        old_logp: Optional[torch.Tensor],
        ref_logp: Optional[torch.Tensor],
        advantages: torch.Tensor,
        mask: torch.Tensor,
        options: Dict[str, Any],
        divisor: int,
        metrics: Dict[str, Any],
        out: Optional[torch.Tensor] = None,
        check: bool = True,
    ) -> torch.Tensor:
        loss, grad, values = _forward(
            logp, old_logp, ref_logp, advantages, mask, options, divisor, out, check
        )
        metrics.update(values)
        ctx.save_for_backward(grad)
        ctx.logp_dtype = logp.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # One elementwise pass: the product is computed in float32 and rounded once into logp's
        # dtype on write (what `(grad * grad_output).to(dtype)` gives, without its second kernel).
        dlogp = torch.empty(grad.shape, dtype=ctx.logp_dtype, device=grad.device)
        torch.mul(grad, grad_output, out=dlogp)
        return dlogp, None, None, None, None, None, None, None, None, None


@torch.compiler.disable
def sgpo_loss(
    logp: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: Optional[torch.Tensor] = None,
    gradient_accumulation_steps: int = 1,
    out: Optional[torch.Tensor] = None,
    check: bool = True,
    **options: Any,
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """TRL 1.16's ``_compute_loss`` (and verl's vanilla loss) as one autograd op, on CPU or CUDA
    tensors.

    Returns ``(loss, metrics)``: ``loss`` is a 0-dim float32 tensor on ``logp``'s device whose
    backward gives ``logp.grad = grad_output * dL/dlogp`` (cast to ``logp.dtype``); ``metrics`` is
    the dict of ``sgpo_rs.policy_loss`` (``clip_ratio/low_mean``, ..., ``kl`` when ``beta != 0``).

    Arguments are those of :func:`sgpo_rs.policy_loss`, as tensors: ``logp``, ``old_logp``
    (``None``: on-policy, ratio 1 with gradient, TRL's ``per_token_logps.detach()``) and
    ``ref_logp`` are ``(B, T)``; ``advantages`` is ``(B,)`` or ``(B, T)``; ``mask`` is ``(B, T)``
    bool, integer or float weights. ``**options`` are the keyword options of
    ``sgpo_rs.policy_loss`` with its defaults (``loss_type="dapo"``, ``beta=0.0``,
    ``epsilon_low=0.2``, ``epsilon_high=None`` (= ``epsilon_low``), ``delta=None``,
    ``importance_sampling_level="token"``, ``kl_estimator="k3"``, ``kl_bias_correction=True``,
    ``max_completion_length=None`` (= ``T``), ``num_items=None`` (= ``max(sum M, 1)``),
    ``grad_scale=1.0`` (multiplies the gradient only), ...); see that docstring for every loss
    formula, aggregation and the gradient's tie rules. Only ``logp`` is differentiated:
    ``old_logp``, ``ref_logp``, ``advantages`` and ``mask`` never receive gradients (TRL detaches
    them too).

    ``gradient_accumulation_steps`` (TRL's ``current_gradient_accumulation_steps``, default 1)
    divides the loss and the gradient, as TRL does in training mode, for grpo, sapo, bnpo,
    dr_grpo, luspo, verl's vanilla and any ``loss_agg_mode`` (verl divides by its accumulation
    count). For dapo, cispo and vespo TRL does not divide: it folds the steps into the
    normaliser, ``num_items = num_items_in_batch / num_processes * gradient_accumulation_steps /
    steps_per_generation``, so there the steps are not applied and ``num_items`` must be passed
    when they exceed 1 (a ``ValueError`` otherwise: each micro-batch's own token mean would add
    up to ``steps`` times the window's loss). Use 1 for evaluation (TRL does not divide there).

    Dtypes and copies: float32/float64 tensors reach the Rust core through ``.numpy()`` (shared
    memory, no copy); bfloat16/float16 as their bits (``.view(torch.int16)``, no copy) and are
    upcast in registers. ``old_logp``/``ref_logp`` of another dtype than ``logp`` are cast to it
    (one copy). Masks of dtype bool, uint8, int32, int64, float32, float64 are read as they are
    (other integers: int64, half floats: float32, one copy); advantages are float32 (a copy unless
    they already are). A non-contiguous tensor is made contiguous first (one copy). The gradient
    is float32 (``torch.from_numpy`` over the core's output, no copy), multiplied by
    ``grad_output`` and cast to ``logp.dtype`` in the backward, so a float64 ``logp`` gets a
    float32-accurate gradient. Precision on the CPU is that of :func:`sgpo_rs.policy_loss`
    (float64 per token, or for float32/bfloat16/float16 inputs of the PPO-clipped losses, verl's
    vanilla included, at token level on a CPU with AVX2 float32 per token within the error bound
    stated there; sums in float64 either way).

    ``out``: a contiguous float32 tensor of ``logp``'s shape and device that the gradient is
    written into (and kept for the backward: reuse it for the next step only after this one's
    backward), sparing a fresh 4 bytes per token each step.

    Works under ``torch.no_grad()`` and with a ``logp`` that does not require grad (the loss has
    no graph then), and inside ``torch.compile``: the call is excluded from tracing
    (``torch.compiler.disable``), so dynamo graph-breaks around it (``fullgraph=True`` cannot
    hold it) and the op runs eagerly.

    CUDA tensors (float32, bfloat16 or float16 log-probabilities; bool, uint8 or float32 masks, other
    masks converted to float32) run the fused CUDA kernel on torch's current stream: the same
    formulas in float64 per token, deterministic reductions, the gradient written once. Reading
    the metrics (and checking the inputs: a NaN at an unmasked token raises ``ValueError`` as on
    the CPU) waits for that stream once per call. ``check=False`` (CUDA only) skips that read:
    nothing waits for the stream (the step can be captured in a CUDA graph), the metrics are
    0-dim float64 CUDA tensors to read when convenient, and invalid inputs give NaN instead of an
    error, as in torch. Shapes, dtypes and devices are still checked before the launch. On the
    CPU ``check`` changes nothing (the inputs are always checked).
    """
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"logp: expected a torch.Tensor, got {type(logp).__name__}")
    _check_device("logp", logp)
    checked = _options(options)
    divisor = _gas_divisor(gradient_accumulation_steps, checked)
    old = None if old_logp is None else _tensor("old_logp", old_logp, logp.device)
    ref = None if ref_logp is None else _tensor("ref_logp", ref_logp, logp.device)
    adv = _tensor("advantages", advantages, logp.device)
    m = _tensor("mask", mask, logp.device)
    if logp.device.type == "cuda" and logp.dtype == torch.float64:
        raise TypeError("logp: expected dtype float32, bfloat16 or float16 on CUDA, got torch.float64")
    if logp.dtype not in _LOGP_DTYPES:
        raise TypeError(f"logp: expected dtype float32, float64, float16 or bfloat16, got {logp.dtype}")
    if out is not None and (
        not isinstance(out, torch.Tensor)
        or out.dtype != torch.float32
        or tuple(out.shape) != tuple(logp.shape)
        or not out.is_contiguous()
        or out.device != logp.device
    ):
        raise ValueError(
            f"out: expected a contiguous float32 tensor of shape {tuple(logp.shape)} on {logp.device}"
        )
    check = _arrays.flag("check", check)
    metrics: Dict[str, Any] = {}
    loss = SGPOLoss.apply(logp, old, ref, adv, m, checked, divisor, metrics, out, check)
    return loss, metrics


# --- Fused selective log-softmax (``sgpo_rs.selective_logprobs``) -------------------------------

__all__ += ["SelectiveLogSoftmax", "selective_log_softmax"]

_LOGITS_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _logits_numpy(logits: torch.Tensor) -> Tuple[np.ndarray, str]:
    """Logits as numpy without a copy: ``(N, V)`` or ``(B, T, V)`` with rows of adjacent logits
    at any row strides (TRL's ``logits[:, :-1]`` is read in place; the core reads the rows where
    they lie), float32/float64 as they are, bfloat16/float16 as their int16 bits, plus the half
    dtype the core reads them as. Only a vocabulary dimension that is not contiguous is copied."""
    x = logits.detach()
    if x.dim() not in (2, 3):
        x = x.reshape(-1, x.shape[-1])
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    if x.dtype in _HALF_NAMES:
        return x.view(torch.int16).numpy(), _HALF_NAMES[x.dtype]
    return x.numpy(), "none"


def _out_numpy(out: torch.Tensor) -> np.ndarray:
    """A CPU gradient buffer as the numpy array the core writes into (half types as int16 bits)."""
    return (out.view(torch.int16) if out.dtype in _HALF_NAMES else out).numpy()


def _check_targets(targets: torch.Tensor, lead: Tuple[int, ...]) -> None:
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets: expected integer token ids, got dtype {targets.dtype}")
    if tuple(targets.shape) != lead:
        raise ValueError(
            f"targets: expected shape {lead} (the leading shape of logits), got {tuple(targets.shape)}"
        )


def _targets_numpy(targets: torch.Tensor, lead: Tuple[int, ...]) -> np.ndarray:
    _check_targets(targets, lead)
    return _numpy(targets.detach().reshape(-1).to(torch.int64))


def _grad_numpy(grad: torch.Tensor) -> np.ndarray:
    return _numpy(grad.detach().reshape(-1).to(torch.float32))


class SelectiveLogSoftmax(torch.autograd.Function):
    """``logp[, entropy] = SelectiveLogSoftmax.apply(logits, targets, temperature, return_entropy)``.

    The autograd node behind :func:`selective_log_softmax` (use that instead). The forward saves
    ``logits`` (a reference, no copy) and each row's max and exponential sums (32 bytes per row)
    and returns float32 outputs; the backward reuses those sums (one pass over the logits) and
    writes ``dlogits`` once in Rust, directly in the logits' dtype (bfloat16/float16 rounded to
    nearest even, as torch's casts). Once differentiable (no double backward).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        return_entropy: bool,
        check: bool = True,
    ) -> Any:
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        ctx.return_entropy = return_entropy
        ctx.check = check
        return _logprobs_forward(ctx, logits, targets)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor):  # type: ignore[override]
        logits, targets = ctx.saved_tensors
        return _logprobs_backward(ctx, logits, targets, grads), None, None, None, None


def _logprobs_forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> Any:
    """The forward of the log-softmax ops: ``logp`` (and the entropies) of ``logits`` at
    ``targets``, keeping each row's statistics in ``ctx.stats`` for the backward (``ctx`` holds
    the temperature, ``return_entropy`` and ``check``)."""
    lead = tuple(logits.shape[:-1])
    if logits.device.type == "cuda":
        _check_targets(targets, lead)
        # ``stats`` (float32 (N, 3): each row's max, log-sum and entropy) lets the backward
        # read the logits once instead of twice.
        logp_t, ent_t, ctx.stats = _cuda.selective_logprobs(
            logits, targets, ctx.temperature, ctx.return_entropy, check=ctx.check, keep_stats=True
        )
        return (logp_t, ent_t) if ctx.return_entropy else logp_t
    x, half = _logits_numpy(logits)
    t = _targets_numpy(targets, lead)
    # ``stats`` (float64 (N, 4): each row's max and exponential sums) lets the backward skip
    # its own pass over the logits.
    logp, ent, ctx.stats = _core.selective_logprobs_core(
        x, t, half_dtype=half, temperature=ctx.temperature, entropy=ctx.return_entropy, stats=True
    )
    logp_t = torch.from_numpy(logp).reshape(lead)
    if ctx.return_entropy:
        return logp_t, torch.from_numpy(ent).reshape(lead)
    return logp_t


def _logprobs_backward(
    ctx: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    grads: Tuple[torch.Tensor, ...],
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``dlogits`` from the forward's saved statistics; written into ``out`` (a tensor of the
    logits' shape) when given, else a new tensor."""
    gh = grads[1] if ctx.return_entropy else None
    if logits.device.type == "cuda":
        return _cuda.selective_logprobs_backward(
            logits, targets, ctx.temperature, grads[0], gh, check=ctx.check, stats=ctx.stats, out=out
        )
    if out is not None and out.data_ptr() == logits.data_ptr():
        # In place: the core reads every row before it writes, so into a buffer of its own first.
        return out.copy_(_cpu_logprobs_backward(logits, targets, ctx.temperature, grads[0], gh, ctx.stats))
    return _cpu_logprobs_backward(logits, targets, ctx.temperature, grads[0], gh, ctx.stats, out=out)


def _cpu_logprobs_backward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    grad_logp: torch.Tensor,
    grad_entropy: Optional[torch.Tensor],
    stats: Optional[np.ndarray] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``dlogits`` of CPU tensors, in the logits' dtype and shape, from the Rust core (``stats``:
    the forward's saved row sums, or None to recompute them), written into ``out`` when given (a
    tensor of the logits' shape whose rows keep apart, such as the matching view of a full-size
    gradient; its other elements are left as they are)."""
    x, half = _logits_numpy(logits)
    t = _targets_numpy(targets, tuple(logits.shape[:-1]))
    g = _grad_numpy(grad_logp)
    gh = None if grad_entropy is None else _grad_numpy(grad_entropy)
    dlogits = _core.selective_logprobs_backward_core(
        x,
        t,
        g,
        gh,
        half_dtype=half,
        temperature=temperature,
        out_dtype=str(logits.dtype).removeprefix("torch."),
        stats=stats,
        out=None if out is None else _out_numpy(out),
    )
    if out is not None:
        return out
    dlogits_t = torch.from_numpy(dlogits)
    if logits.dtype in _HALF_NAMES:  # int16 bits of the half type
        dlogits_t = dlogits_t.view(logits.dtype)
    return dlogits_t.reshape(logits.shape)


def _logprob_arguments(
    logits: torch.Tensor, targets: torch.Tensor, temperature: Any, return_entropy: Any, check: Any
) -> Tuple[float, bool, bool]:
    """The log-softmax ops' checks: ``logits`` and ``targets`` as tensors on one device, the
    logits' dtype and shape; returns the checked ``temperature``, ``return_entropy`` and
    ``check``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    _check_device("logits", logits)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    _check_device("targets", targets, logits.device)
    if logits.device.type == "cuda" and logits.dtype == torch.float64:
        raise TypeError("logits: expected dtype float32, bfloat16 or float16 on CUDA, got torch.float64")
    if logits.dtype not in _LOGITS_DTYPES:
        raise TypeError(f"logits: expected dtype float32, float64, float16 or bfloat16, got {logits.dtype}")
    if logits.dim() not in (2, 3):
        raise ValueError(
            f"logits: expected a 2-D (N, V) or 3-D (B, T, V) tensor, got shape {tuple(logits.shape)}"
        )
    if logits.shape[-1] == 0:
        raise ValueError(f"logits: expected a vocabulary of at least 1, got shape {tuple(logits.shape)}")
    temperature = _arrays.real("temperature", temperature)
    return_entropy = _arrays.flag("return_entropy", return_entropy)
    check = _arrays.flag("check", check)
    return temperature, return_entropy, check


@torch.compiler.disable
def selective_log_softmax(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    check: bool = True,
) -> Any:
    """``log_softmax(logits / temperature, -1).gather(-1, targets[..., None])[..., 0]`` fused, as
    an autograd op on CPU or CUDA tensors (TRL's ``selective_log_softmax`` with the temperature
    folded in).

    ``logits`` is ``(N, V)`` or ``(B, T, V)`` float32, float64, bfloat16 or float16; ``targets`` is
    an integer tensor of the leading shape. Returns the float32 log-probabilities of the leading
    shape, or ``(logp, entropy)`` with ``return_entropy=True`` (both differentiable). Nothing of
    size ``(N, V)`` is allocated in the forward; the backward allocates only the gradient, written
    once in the logits' dtype.

    Copies: none for CPU tensors whose rows are runs of adjacent logits, at any row strides (so
    TRL's ``logits[:, :-1]`` is read where it lies; bfloat16/float16 as their bits via
    ``.view(torch.int16)``); only a vocabulary dimension that is not contiguous is copied. A ``-inf``
    logit is a token of probability 0; NaN/``+inf`` logits, targets outside ``[0, V)`` and a
    ``temperature`` that is not finite and > 0 raise ``ValueError``.

    CUDA tensors (float32, bfloat16 or float16 logits) run the fused CUDA kernels on torch's
    current stream: one block per row, an online log-sum-exp in float32 over 16-byte loads, and a
    backward that writes ``dlogits`` once, in the logits' dtype. Checking the inputs waits for the
    stream once per call (forward and backward); ``check=False`` skips that wait (invalid inputs
    then give NaN or undefined values, as in torch; shapes, dtypes and devices are still checked).
    """
    temperature, return_entropy, check = _logprob_arguments(
        logits, targets, temperature, return_entropy, check
    )
    return SelectiveLogSoftmax.apply(logits, targets, temperature, return_entropy, check)


__all__ += ["CompletionLogprobs", "completion_logprobs"]


class CompletionLogprobs(torch.autograd.Function):
    """``logp[, entropy] = CompletionLogprobs.apply(logits, completion_ids, temperature,
    return_entropy, check, inplace)``: the autograd node behind :func:`completion_logprobs` (use
    that instead)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        completion_ids: torch.Tensor,
        temperature: float,
        return_entropy: bool,
        check: bool,
        inplace: bool,
    ) -> Any:
        ctx.save_for_backward(logits, completion_ids)
        ctx.temperature = temperature
        ctx.return_entropy = return_entropy
        ctx.check = check
        ctx.inplace = inplace
        return _logprobs_forward(ctx, _completion_positions(logits, completion_ids), completion_ids)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor):  # type: ignore[override]
        logits, completion_ids = ctx.saved_tensors
        length, count = logits.shape[1], completion_ids.shape[1]
        # The full-size gradient, written once: the completion positions by the kernel, the
        # prompt positions and the last one (which predicts nothing here) zeroed. With
        # ``inplace`` it is the logits' own memory (where their vocabulary dimension is
        # contiguous); otherwise a contiguous tensor, whatever the logits' strides (a padded
        # vocabulary's slice, a sequence-first layout), which the backward writes through its
        # own row addressing.
        if ctx.inplace and (logits.shape[-1] <= 1 or logits.stride(-1) == 1):
            dlogits = logits.detach()
        else:
            dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dlogits[:, : length - 1 - count].zero_()
        dlogits[:, length - 1 :].zero_()
        view = _completion_positions(logits, completion_ids)
        _logprobs_backward(
            ctx, view, completion_ids, grads, out=_completion_positions(dlogits, completion_ids)
        )
        return dlogits, None, None, None, None, None


def _completion_positions(logits: torch.Tensor, completion_ids: torch.Tensor) -> torch.Tensor:
    """The positions of ``logits`` (B, L, V) that predict the last T = ``completion_ids.shape[1]``
    tokens: ``logits[:, L - 1 - T : L - 1]`` (a view, no copy)."""
    length, count = logits.shape[1], completion_ids.shape[1]
    return logits[:, length - 1 - count : length - 1]


@torch.compiler.disable
def completion_logprobs(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    check: bool = True,
    inplace: bool = False,
) -> Any:
    """The log-probabilities of the completion tokens from a causal LM's logits, as TRL computes
    them: ``selective_log_softmax(logits[:, :-1][:, -T:] / temperature, completion_ids)`` with
    ``T = completion_ids.shape[1]``, fused and without the slice in autograd.

    ``logits`` is ``(B, L, V)`` as the model returns it (position ``t`` predicts token ``t + 1``;
    with TRL's ``logits_to_keep=T + 1``, ``L = T + 1``), float32, float64, bfloat16 or float16;
    ``completion_ids`` is an integer ``(B, T)`` tensor with ``T < L``. Returns float32 ``(B, T)``
    log-probabilities, or ``(logp, entropy)`` with ``return_entropy=True``; values and gradients
    are :func:`selective_log_softmax`'s on the sliced logits.

    What the fusion saves: sliced in autograd, the gradient of ``logits[:, :-1]`` reaches the
    logits through a zero-filled full-size tensor and a copy (two more passes over a tensor of
    the logits' size). Here the backward writes the full-size gradient once: the completion
    positions by the log-softmax backward, the other positions as zeros. With ``inplace=True`` it
    writes into ``logits`` itself and returns that as the gradient (no allocation of the logits'
    size; where their vocabulary dimension is contiguous, as a model's output is); the logits'
    values are then gone, so use it only when nothing else reads them after
    the backward (Liger-Kernel's GRPO loss offers the same). ``check``: as for
    :func:`selective_log_softmax`.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(completion_ids, torch.Tensor):
        raise TypeError(f"completion_ids: expected a torch.Tensor, got {type(completion_ids).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"logits: expected a 3-D (B, L, V) tensor, got shape {tuple(logits.shape)}")
    if completion_ids.dim() != 2 or completion_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"completion_ids: expected shape (B, T) with B = {logits.shape[0]} like logits, "
            f"got {tuple(completion_ids.shape)}"
        )
    if completion_ids.shape[1] >= logits.shape[1]:
        raise ValueError(
            f"completion_ids: expected T < L = {logits.shape[1]} (the last position predicts no "
            f"completion token), got T = {completion_ids.shape[1]}"
        )
    inplace = _arrays.flag("inplace", inplace)
    view = _completion_positions(logits, completion_ids)
    if not torch.is_grad_enabled() or not logits.requires_grad:
        return selective_log_softmax(view, completion_ids, temperature, return_entropy, check)
    temperature, return_entropy, check = _logprob_arguments(
        view, completion_ids, temperature, return_entropy, check
    )
    return CompletionLogprobs.apply(logits, completion_ids, temperature, return_entropy, check, inplace)

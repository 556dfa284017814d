"""The CUDA path from Python: torch CUDA tensors in, torch CUDA tensors out.

Every output is allocated with torch on the input's device; the Rust core launches the kernels of
``kernels/*.cu`` (compiled with NVRTC on first use, once per device and process) on torch's
current stream, on the tensors' own memory (``data_ptr()``: no copies). Each tensor is handed
over as a description (pointer, dtype, shape, strides, device) that the core checks - with the
CPU path's shape rules and messages, and the device, layout and size of every buffer - before
anything is launched; what stays here is allocation through torch and the current stream.

The kernels write input errors (NaN at an unmasked token, a target outside the vocabulary) into a
16-byte status buffer; ``check=True`` (the default) reads it after the launches - one small
device-to-host copy, which waits for the stream - and, when it is set, reruns the call on host
copies of the inputs through the CPU engine, which raises its own error (so the message is the
CPU path's; the copy happens on the error path only). ``check=False`` keeps everything
asynchronous (then invalid inputs give NaN or undefined values, as in torch).

libnvrtc is found in the ``nvidia-cuda-nvrtc`` package that CUDA builds of torch install (or at
``$SGPO_RS_NVRTC``), preferring the CUDA major version torch was built with, and loaded before the
first compile (``sgpo_rs._nvrtc``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from . import _core, _nvrtc


def load_nvrtc() -> Optional[str]:
    """Loads libnvrtc from the Python environment (the one of torch's CUDA major first, see
    ``sgpo_rs._nvrtc``), globally, so the core's loader finds it by its soname. Returns its path,
    or None when the system's library path has to provide it."""
    return _nvrtc.load()


def built() -> bool:
    """Whether this build of the extension contains the CUDA path."""
    return bool(getattr(_core, "cuda_built", False))


def availability() -> Dict[str, Any]:
    """What the CUDA path can use on this machine, and why not (``reason``) where it cannot."""
    if not built():
        return {"built": False, "usable": False, "reason": "this build of sgpo-rs has no CUDA path"}
    nvrtc_path = load_nvrtc()
    found = dict(_core.cuda_availability())
    found["built"] = True
    found["nvrtc_path"] = nvrtc_path
    found["usable"] = bool(found["nvrtc"] and found["driver"] and found["device_count"] > 0)
    if found["usable"]:
        found["devices"] = [_core.cuda_device(i) for i in range(found["device_count"])]
    return found


def _require() -> None:
    if not built():
        raise RuntimeError("CUDA tensors: this build of sgpo-rs has no CUDA path; pass CPU tensors")
    load_nvrtc()


def is_cuda(x: Any) -> bool:
    """True for a torch tensor on a CUDA device (torch is not imported for anything else)."""
    device = getattr(x, "device", None)
    return type(x).__module__.startswith("torch") and getattr(device, "type", None) == "cuda"


def _stream_handle(device: Any) -> int:
    """torch's current stream on ``device`` (0 off CUDA, where the core refuses the tensors)."""
    import torch

    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _describe(t: Optional[Any]) -> Optional[Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str]]:
    """A tensor as the core's CUDA binding takes it: ``(data_ptr, dtype, shape, strides,
    device)``. The core checks every such description (device, dtype, shape, layout, buffer
    sizes) before it launches anything."""
    if t is None:
        return None
    return (t.data_ptr(), str(t.dtype)[6:], tuple(t.shape), t.stride(), str(t.device))


def _engine_error(what: str, bits: int, rerun: Any) -> Exception:
    """The CPU engine's own error for inputs a kernel flagged: ``rerun`` repeats the call on host
    copies of the caller's inputs (the error path only: a clean call never copies), so a message
    is the same on both devices. A kernel that flags what the CPU accepts is a bug, reported as
    such."""
    try:
        rerun()
    except (ValueError, TypeError) as error:
        return error
    return RuntimeError(
        f"{what}: the CUDA kernel reported status {bits:#x} for inputs the CPU path accepts; "
        f"please report this"
    )


def _new_status(device: Any) -> Any:
    import torch

    # [bits: u32, unused: u32, ~first: u64], all zeros when clean: a memset on the stream, with no
    # host-to-device copy (which would wait for the stream).
    return torch.zeros(2, dtype=torch.int64, device=device)


def _status_bits(words: Any) -> int:
    """The error bits of a status buffer's words (on the host or the device: reading a device one
    waits for the stream). Which input is wrong is the CPU engine's to say (``_engine_error``),
    so the first-index word is not read."""
    return int(words[0]) & 0xFFFFFFFF


def _mask_input(mask: Any) -> Any:
    """A mask as the kernels read it: bool as its bytes, uint8 as is, other real dtypes as float32
    weights (the core checks the dtype it gets)."""
    import torch

    if mask.dtype == torch.bool:
        return mask.contiguous().view(torch.uint8)
    if mask.dtype == torch.uint8:
        return mask.contiguous()
    if mask.dtype.is_complex:
        raise TypeError(f"mask: expected bool, integer or float values, got dtype {mask.dtype}")
    return mask.contiguous().to(torch.float32)


def _advantages_input(advantages: Any) -> Any:
    """Advantages as the kernels read them: contiguous float32 (real dtypes only, as on the CPU)."""
    import torch

    if advantages.dtype.is_complex or advantages.dtype == torch.bool:
        raise TypeError(f"advantages: expected real numbers, got dtype {advantages.dtype}")
    return advantages.detach().to(torch.float32).contiguous()


# --- selective log-softmax ----------------------------------------------------------------------


def _logits_view(logits: Any) -> Any:
    """``logits`` as the kernels read it in place: a 2-D ``(N, V)`` or 3-D ``(B, T, V)`` view with
    any row strides (TRL's ``logits[:, :-1]`` is not copied); only a vocabulary dimension that is
    not contiguous is copied."""
    x = logits.detach()
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() not in (2, 3):
        x = x.reshape(-1, x.shape[-1])
    return x


def _rows(x: Any) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else int(x.shape[:-1].numel())


def _per_row(x: Optional[Any], dtype: Any) -> Optional[Any]:
    return None if x is None else x.detach().reshape(-1).to(dtype).contiguous()


def selective_logprobs(
    logits: Any, targets: Any, temperature: float, entropy: bool, check: bool = True, keep_stats: bool = False
) -> Any:
    """``(logp, entropy | None)``, float32 with the leading shape of ``logits``; with
    ``keep_stats``, ``(logp, entropy | None, stats)`` where ``stats`` (float32 ``(N, 3)``: each
    row's max, log-sum and entropy) lets :func:`selective_logprobs_backward` skip its own pass
    over the logits."""
    import torch

    _require()
    lead = tuple(logits.shape[:-1])
    x = _logits_view(logits)
    rows = _rows(x)
    t = _per_row(targets, torch.int64)
    logp = torch.empty(rows, dtype=torch.float32, device=x.device)
    ent = torch.empty(rows, dtype=torch.float32, device=x.device) if entropy else None
    stats = torch.empty((rows, 3), dtype=torch.float32, device=x.device) if keep_stats else None
    status = _new_status(x.device)
    _core.cuda_selective_logprobs(
        _stream_handle(x.device),
        _describe(x),
        _describe(t),
        float(temperature),
        _describe(logp),
        _describe(ent),
        _describe(status),
        _describe(stats),
    )
    if check:
        bits = _status_bits(status)
        if bits:
            raise _engine_error(
                "selective log-softmax",
                bits,
                lambda: _cpu_selective_logprobs(logits, targets, temperature, entropy),
            )
    result = (logp.reshape(lead), None if ent is None else ent.reshape(lead))
    return result + (stats,) if keep_stats else result


def selective_logprobs_backward(
    logits: Any,
    targets: Any,
    temperature: float,
    grad_logp: Optional[Any],
    grad_entropy: Optional[Any],
    in_place: bool = False,
    check: bool = True,
    stats: Optional[Any] = None,
    out: Optional[Any] = None,
) -> Any:
    """``dlogits`` in the logits' dtype and shape (written into ``logits`` itself with ``in_place``,
    or into ``out``: the logits tensor itself, or a tensor of its shape and strides elsewhere).
    ``stats``: the forward's saved row statistics of these logits at this temperature
    (``selective_logprobs(..., keep_stats=True)``), which spare the kernel a pass over the logits.
    Non-finite upstream gradients are found by the kernel and raised with the status read."""
    import torch

    _require()
    x = _logits_view(logits)
    rows = _rows(x)
    t = _per_row(targets, torch.int64)
    g = _per_row(grad_logp, torch.float32)
    gh = _per_row(grad_entropy, torch.float32)
    if g is None:
        g = torch.zeros(rows, dtype=torch.float32, device=x.device)
    if in_place and x.data_ptr() != logits.data_ptr():
        raise ValueError("logits: an in-place backward needs logits whose last dimension is contiguous")
    given = out
    if out is None:
        out = x if in_place else torch.empty((rows, x.shape[-1]), dtype=x.dtype, device=x.device)
    status = _new_status(x.device)
    _core.cuda_selective_logprobs_backward(
        _stream_handle(x.device),
        _describe(x),
        _describe(t),
        float(temperature),
        _describe(g),
        _describe(gh),
        _describe(out),
        _describe(status),
        _describe(stats),
    )
    if check:
        bits = _status_bits(status)
        if bits:
            raise _engine_error(
                "selective log-softmax backward",
                bits,
                lambda: _cpu_selective_logprobs_backward(logits, targets, temperature, g, gh),
            )
    if given is not None:
        return given
    return logits if in_place else out.reshape(logits.shape)


def _cpu_selective_logprobs(logits: Any, targets: Any, temperature: float, entropy: bool) -> None:
    from . import torch as sg_torch

    x = logits.detach().cpu()
    sg_torch.selective_log_softmax(x, targets.detach().cpu().reshape(x.shape[:-1]), temperature, entropy)


def _cpu_selective_logprobs_backward(logits: Any, targets: Any, temperature: float, g: Any, gh: Any) -> None:
    from . import torch as sg_torch

    x = logits.detach().cpu()
    lead = tuple(x.shape[:-1])
    host = [None if v is None else v.cpu().reshape(lead) for v in (targets.detach(), g, gh)]
    sg_torch._cpu_logprobs_backward(x, host[0], temperature, host[1], host[2])


# --- policy loss --------------------------------------------------------------------------------


def policy_loss(
    logp: Any,
    old_logp: Optional[Any],
    ref_logp: Optional[Any],
    advantages: Any,
    mask: Any,
    options: Dict[str, Any],
    check: bool = True,
    out: Optional[Any] = None,
) -> Tuple[Any, Any, Dict[str, float]]:
    """``(loss, grad, metrics)``: a 0-dim float32 loss and the float32 ``(B, T)`` gradient on the
    device, and the metrics: floats read with the status (``check``), or else 0-dim float64
    device tensors (views of the kernel's output; nothing waits for the stream). Shapes, dtypes
    and devices are checked by the core (the CPU path's rules and messages) before anything is
    launched."""
    import torch

    _require()
    lp = logp.detach().contiguous()
    batch, length = tuple(lp.shape) if lp.dim() == 2 else (0, 0)
    old = None if old_logp is None else old_logp.detach().to(lp.dtype).contiguous()
    ref = None if ref_logp is None else ref_logp.detach().to(lp.dtype).contiguous()
    m = _mask_input(mask.detach())
    adv = _advantages_input(advantages)
    if out is None:
        grad = torch.empty((batch, length), dtype=torch.float32, device=lp.device)
    elif isinstance(out, torch.Tensor):
        grad = out
    else:
        raise TypeError(f"out: expected a float32 CUDA tensor, got {type(out).__name__}")
    workspace = torch.empty(
        _core.cuda_loss_workspace_len(batch, length), dtype=torch.float64, device=lp.device
    )
    # The loss and metric slots (12 float64) and the status (2 int64) in one zeroed buffer, so
    # the host reads both with one copy (one wait for the stream).
    results = torch.zeros(14, dtype=torch.int64, device=lp.device)
    values = results[:12].view(torch.float64)
    status = results[12:]
    slots = _core.cuda_policy_loss(
        _stream_handle(lp.device),
        _describe(lp),
        _describe(old),
        _describe(ref),
        _describe(adv),
        _describe(m),
        options,
        _describe(grad),
        _describe(workspace),
        _describe(values),
        _describe(status),
    )
    metrics: Dict[str, Any] = {name: values[slot] for name, slot in slots}
    if check:
        host = results.cpu()
        bits = _status_bits(host[12:])
        slot_values = host[:12].view(torch.float64).tolist()
        metrics = {name: slot_values[slot] for name, slot in slots}
        if bits or any(abs(v) == float("inf") for v in metrics.values()):
            raise _engine_error(
                "policy loss",
                bits,
                lambda: _cpu_policy_loss(logp, old_logp, ref_logp, advantages, mask, options),
            )
    return values[0].to(torch.float32), grad, metrics


def _cpu_policy_loss(
    logp: Any, old_logp: Any, ref_logp: Any, advantages: Any, mask: Any, options: Dict[str, Any]
) -> None:
    from . import torch as sg_torch

    host = [None if x is None else x.detach().cpu() for x in (logp, old_logp, ref_logp, advantages, mask)]
    sg_torch._forward(host[0], host[1], host[2], host[3], host[4], options, 1)


# --- rewards and advantages ---------------------------------------------------------------------


def _device_groups(rows: int, group_size: Optional[int], group_ids: Optional[Any], device: Any):
    """``(num_groups, groups)``: ``groups`` as the core takes them, ``(group_size, None)`` for
    consecutive groups or ``(None, (order, starts))``, CSR built on the device from
    ``group_ids`` with a stable sort (members keep their row order)."""
    import torch

    from . import _arrays

    if rows == 0:
        raise ValueError("rewards: expected at least one row, got an empty batch")
    if group_size is not None and group_ids is not None:
        raise ValueError("group_size: give group_size or group_ids, not both")
    if group_ids is None:
        if group_size is None:
            raise ValueError(
                "group_size: give group_size (consecutive rows, TRL) or group_ids (one id per row, verl)"
            )
        return (rows // group_size if group_size > 0 else 0), (group_size, None)
    if not isinstance(group_ids, torch.Tensor):
        # Strings (verl uids) and lists become int64 codes on the host, as on the CPU path.
        group_ids = torch.from_numpy(_arrays.group_ids(group_ids))
    ids = group_ids.to(device).reshape(-1)
    if ids.numel() != rows:
        raise ValueError(f"group_ids: expected shape ({rows},), got {tuple(group_ids.shape)}")
    _, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    order = torch.argsort(inverse, stable=True).to(torch.int64).contiguous()
    counts = torch.bincount(inverse)
    starts = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=device)
    starts[1:] = torch.cumsum(counts, 0)
    return counts.numel(), (None, (_describe(order), _describe(starts)))


def _host(x: Any) -> Any:
    """A host copy for the CPU engine's rerun (tensors as numpy arrays, anything else as is)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _integers(name: str, x: Any) -> None:
    """Integer values, as the CPU path requires (floats only when integral)."""
    if x.dtype.is_floating_point:
        import torch

        if not bool(torch.all(x == x.round())):
            raise TypeError(f"{name}: expected integer values, got non-integral {x.dtype} values")
    elif x.dtype.is_complex or str(x.dtype) == "torch.bool":
        raise TypeError(f"{name}: expected integer values, got dtype {x.dtype}")


def sgpo_rewards(
    rewards: Any,
    first_error: Optional[Any],
    num_steps: Optional[Any],
    credit: Optional[Any],
    group_size: Optional[int],
    group_ids: Optional[Any],
    correct: Optional[Any],
    credit_scale: float,
    mode: str,
    rule: str = "prefix",
    beta: float = 5.0,
    gamma: float = 0.5,
) -> Dict[str, Any]:
    """The SGPO reward rule on the device: a dict with ``rewards``, ``credit``, ``all_negative``,
    ``diversified`` (tensors) and ``stats``."""
    import torch

    _require()
    device = rewards.device
    r = rewards.detach().reshape(-1).to(torch.float64).contiguous()
    rows = r.numel()
    num_groups, groups = _device_groups(rows, group_size, group_ids, device)

    def column(name: str, x: Optional[Any], dtype: Any) -> Optional[Any]:
        if x is None:
            return None
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        if dtype == torch.int64:
            _integers(name, x)
        elif dtype == torch.uint8 and x.dtype != torch.bool:
            if x.dtype.is_complex or not bool(torch.all((x == 0) | (x == 1))):
                raise TypeError(
                    f"{name}: expected bool values (or 0/1), got dtype {x.dtype} with other values"
                )
        return x.to(device=device, dtype=dtype).reshape(-1).contiguous()

    fe = column("first_error", first_error, torch.int64)
    ns = column("num_steps", num_steps, torch.int64)
    cr = column("credit", credit, torch.float64)
    co = column("correct", correct, torch.uint8)
    out_rewards = torch.empty(rows, dtype=torch.float32, device=device)
    out_credit = torch.empty(rows, dtype=torch.float32, device=device)
    all_negative = torch.empty(rows, dtype=torch.uint8, device=device)
    diversified = torch.empty(rows, dtype=torch.uint8, device=device)
    stats = torch.zeros(5, dtype=torch.float64, device=device)
    scratch = torch.zeros(_core.cuda_reward_scratch_len(num_groups), dtype=torch.float64, device=device)
    status = _new_status(device)
    _core.cuda_sgpo_rewards(
        _stream_handle(device),
        groups,
        _describe(r),
        _describe(fe),
        _describe(ns),
        _describe(cr),
        _describe(co),
        float(credit_scale),
        mode,
        _describe(out_rewards),
        _describe(out_credit),
        _describe(all_negative),
        _describe(diversified),
        _describe(stats),
        _describe(scratch),
        _describe(status),
        rule,
        float(beta),
        float(gamma),
    )
    bits = _status_bits(status)
    if bits:
        verdicts = (fe, ns, cr, co)
        raise _engine_error(
            "rewards",
            bits,
            lambda: _cpu_sgpo_rewards(
                r, *verdicts, group_size, group_ids, credit_scale, mode, rule, beta, gamma
            ),
        )
    an, dv, missing, credit_sum, credited = stats.tolist()
    return {
        "rewards": out_rewards,
        "credit": out_credit,
        "all_negative": all_negative.bool(),
        "diversified": diversified.bool(),
        "stats": {
            "num_groups": num_groups,
            "all_negative_groups": int(an),
            "diversified_groups": int(dv),
            "judge_missing_groups": int(missing),
            "mean_credit": credit_sum / credited if credited > 0 else 0.0,
        },
    }


def group_advantages(
    rewards: Any,
    group_size: Optional[int],
    group_ids: Optional[Any],
    scale: str,
    eps: float,
    singleton: str,
) -> Any:
    """Group-normalised advantages on the device (float32 ``(N,)``)."""
    import torch

    _require()
    device = rewards.device
    r = rewards.detach().reshape(-1).to(torch.float64).contiguous()
    rows = r.numel()
    _, groups = _device_groups(rows, group_size, group_ids, device)
    out = torch.empty(rows, dtype=torch.float32, device=device)
    scratch = torch.zeros(1, dtype=torch.float64, device=device)
    status = _new_status(device)
    _core.cuda_group_advantages(
        _stream_handle(device),
        groups,
        _describe(r),
        scale,
        float(eps),
        singleton,
        _describe(out),
        _describe(scratch),
        _describe(status),
    )
    bits = _status_bits(status)
    if bits:
        raise _engine_error(
            "rewards",
            bits,
            lambda: _cpu_group_advantages(r, group_size, group_ids, scale, eps, singleton),
        )
    return out


def token_advantages(advantages: Any, mask: Any, out: Optional[Any] = None, check: bool = True) -> Any:
    """``advantages[:, None] * mask`` in one pass on the device (float32 ``(N, L)``); ``check``
    reads the status (one wait for the stream) and raises on invalid inputs."""
    import torch

    _require()
    device = advantages.device
    a = _advantages_input(advantages)
    m = _mask_input(mask.detach())
    if out is None:
        shape = (a.shape[0], m.shape[-1]) if a.dim() == 1 and m.dim() == 2 else (0, 0)
        out = torch.empty(shape, dtype=torch.float32, device=device)
    status = _new_status(device)
    _core.cuda_token_advantages(
        _stream_handle(device), _describe(a), _describe(m), _describe(out), _describe(status)
    )
    if check:
        bits = _status_bits(status)
        # Without tokens no kernel runs, and the CPU path still checks the advantages.
        if bits or (out.shape[1] == 0 and not bool(torch.isfinite(a).all())):
            raise _engine_error("token_advantages", bits, lambda: _cpu_token_advantages(a, mask))
    return out


# The CPU engine's reruns of the error path (see _engine_error): the caller's inputs, copied to
# the host, through the public CPU functions.


def _cpu_sgpo_rewards(
    rewards: Any,
    first_error: Any,
    num_steps: Any,
    credit: Any,
    correct: Any,
    group_size: Optional[int],
    group_ids: Any,
    credit_scale: float,
    mode: str,
    rule: str,
    beta: float,
    gamma: float,
) -> None:
    from .rewards import sgpo_rewards as cpu_sgpo_rewards

    cpu_sgpo_rewards(
        _host(rewards),
        first_error=_host(first_error),
        num_steps=_host(num_steps),
        group_size=group_size,
        group_ids=_host(group_ids),
        correct=None if correct is None else _host(correct).astype(bool),
        credit_scale=credit_scale,
        mode=mode,
        credit=_host(credit),
        rule=rule,
        beta=beta,
        gamma=gamma,
    )


def _cpu_group_advantages(
    rewards: Any, group_size: Optional[int], group_ids: Any, scale: str, eps: float, singleton: str
) -> None:
    from .advantages import group_advantages as cpu_group_advantages

    host_ids = _host(group_ids)
    cpu_group_advantages(
        _host(rewards), group_size=group_size, group_ids=host_ids, scale=scale, eps=eps, singleton=singleton
    )


def _cpu_token_advantages(advantages: Any, mask: Any) -> None:
    from .advantages import token_advantages as cpu_token_advantages

    cpu_token_advantages(_host(advantages), _host(mask))

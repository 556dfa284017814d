"""The CUDA path from Python: torch CUDA tensors in, torch CUDA tensors out.

Every output is allocated with torch on the input's device; the Rust core launches the kernels of
``kernels/*.cu`` (compiled with NVRTC on first use, once per device and process) on torch's
current stream, on the tensors' own memory (``data_ptr()``: no copies). The kernels write input
errors (NaN at an unmasked token, a target outside the vocabulary) into a 16-byte status buffer;
``check=True`` (the default) reads it after the launches - one small device-to-host copy, which
waits for the stream - and raises the ``ValueError`` the CPU path would raise. ``check=False``
keeps everything asynchronous (then invalid inputs give NaN or undefined values, as in torch).

libnvrtc is found in the ``nvidia-cuda-nvrtc`` package that CUDA builds of torch install (or at
``$SGPO_RS_NVRTC``), preferring the CUDA major version torch was built with, and loaded before the
first compile (``sgpo_rs._nvrtc``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from . import _core, _nvrtc

# Status bits the host distinguishes, as the engine defines them for the kernels
# (src/cuda/status.rs); every other bit is located from the inputs on the error path.
_STATUS_BITS = _core.cuda_status_bits() if getattr(_core, "cuda_built", False) else {}
NONFINITE_INPUT = _STATUS_BITS.get("NONFINITE_INPUT", 0)
OVERFLOW = _STATUS_BITS.get("OVERFLOW", 0)


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


def _stream(device: Any) -> Tuple[int, int]:
    import torch

    return device.index, torch.cuda.current_stream(device).cuda_stream


def _same_device(device: Any, **tensors: Any) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise RuntimeError(f"{name}: expected a tensor on {device} like the other inputs, got {t.device}")


def _new_status(device: Any) -> Any:
    import torch

    # [bits: u32, unused: u32, ~first: u64], all zeros when clean: a memset on the stream, with no
    # host-to-device copy (which would wait for the stream).
    return torch.zeros(2, dtype=torch.int64, device=device)


def _decode_status(bits: int, complement: int) -> Tuple[int, int]:
    """``(bits, first)`` from the two int64 words; ``first`` is -1 when no index was reported."""
    return bits & 0xFFFFFFFF, (-complement - 1 if complement != 0 else -1)


def _read_status(status: Any) -> Tuple[int, int]:
    return _decode_status(*status.tolist())


def _mask_input(mask: Any) -> Tuple[Any, str]:
    import torch

    if mask.dtype == torch.bool:
        return mask.contiguous().view(torch.uint8), "bool"
    if mask.dtype == torch.uint8:
        return mask.contiguous(), "uint8"
    if mask.dtype.is_complex:
        raise TypeError(f"mask: expected bool, integer or float values, got dtype {mask.dtype}")
    return mask.contiguous().to(torch.float32), "float32"


_FLOAT_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def _float_name(name: str, t: Any) -> str:
    dtype = _FLOAT_NAMES.get(str(t.dtype))
    if dtype is None:
        raise TypeError(f"{name}: expected dtype float32, bfloat16 or float16 on CUDA, got {t.dtype}")
    return dtype


# --- selective log-softmax ----------------------------------------------------------------------


def _logits_layout(logits: Any) -> Tuple[Any, int, int, int, int, int]:
    """``(x, rows, vocab, row_stride, group_rows, group_stride)``: how the kernels address the rows
    of ``logits`` in place. A 3-D ``(B, T, V)`` view with any batch and row strides (TRL's
    ``logits[:, :-1]``) is read without a copy; only a vocabulary dimension that is not contiguous
    is copied."""
    x = logits.detach()
    vocab = x.shape[-1]
    if vocab > 0 and x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 3:
        batch, length = x.shape[0], x.shape[1]
        row_stride = x.stride(1) if length > 1 else vocab
        group_stride = x.stride(0) if batch > 1 else max(length, 1) * row_stride
        return x, batch * length, vocab, row_stride, max(length, 1), group_stride
    if x.dim() != 2:
        x = x.reshape(-1, vocab)
    rows = x.shape[0]
    row_stride = x.stride(0) if rows > 1 else vocab
    return x, rows, vocab, row_stride, max(rows, 1), 0


def _first(flags: Any) -> Optional[int]:
    """Flat index of the first True of a bool tensor, or None (error paths only)."""
    hit = flags.reshape(-1).nonzero()
    return None if hit.numel() == 0 else int(hit[0, 0])


def _check_logprob_status(
    status: Any, logits: Any, targets: Any, temperature: float, grads: Tuple[Tuple[str, Any], ...] = ()
) -> None:
    """Raises the CPU path's error for the inputs the kernels flagged. The status only says that
    something is wrong; the offending element is located here, in the CPU's order (upstream
    gradients, targets, then non-finite logits, then rows without a finite logit)."""
    bits, _ = _read_status(status)
    if bits == 0:
        return
    for name, g in grads:
        _check_finite_rows(name, g)
    vocab = logits.shape[-1]
    row = _first((targets < 0) | (targets >= vocab))
    if row is not None:
        raise ValueError(f"targets: expected token ids in [0, {vocab}), got {int(targets[row])} at row {row}")
    z = logits.detach().reshape(-1, vocab).float() / temperature
    at = _first(z.isnan() | (z == float("inf")))
    if at is not None:
        i, j = divmod(at, vocab)
        raise ValueError(
            f"logits: expected finite values, found {float(z[i, j])} at ({i}, {j}) "
            f"(a logit may be -inf, never NaN or +inf)"
        )
    row = _first((z == float("-inf")).all(-1))
    if row is not None:
        raise ValueError(f"logits: row {row} has no token of non-zero probability (every logit is -inf)")
    raise RuntimeError(f"selective log-softmax: the kernel reported status {bits:#x}")


def _check_finite_rows(name: str, g: Optional[Any]) -> None:
    if g is None:
        return
    import torch

    row = _first(~torch.isfinite(g))
    if row is not None:
        raise ValueError(f"{name}: expected finite values, found {float(g[row])} at row {row}")


def selective_logprobs(
    logits: Any, targets: Any, temperature: float, entropy: bool, check: bool = True, keep_stats: bool = False
) -> Any:
    """``(logp, entropy | None)``, float32 with the leading shape of ``logits``; with
    ``keep_stats``, ``(logp, entropy | None, stats)`` where ``stats`` (float32 ``(N, 3)``: each
    row's max, log-sum and entropy) lets :func:`selective_logprobs_backward` skip its own pass
    over the logits."""
    import torch

    _require()
    dtype = _float_name("logits", logits)
    _same_device(logits.device, targets=targets)
    lead = tuple(logits.shape[:-1])
    x, rows, vocab, row_stride, group_rows, group_stride = _logits_layout(logits)
    t = targets.detach().reshape(-1).to(torch.int64).contiguous()
    if t.numel() != rows:
        raise ValueError(
            f"targets: expected shape {lead} (one token id per row of logits), got {tuple(targets.shape)}"
        )
    logp = torch.empty(rows, dtype=torch.float32, device=x.device)
    ent = torch.empty(rows, dtype=torch.float32, device=x.device) if entropy else None
    stats = torch.empty((rows, 3), dtype=torch.float32, device=x.device) if keep_stats else None
    status = _new_status(x.device)
    device, stream = _stream(x.device)
    _core.cuda_selective_logprobs(
        device,
        stream,
        (x.data_ptr(), dtype, rows, vocab, row_stride, group_rows, group_stride),
        t.data_ptr(),
        float(temperature),
        logp.data_ptr(),
        None if ent is None else ent.data_ptr(),
        status.data_ptr(),
        None if stats is None else stats.data_ptr(),
    )
    if check:
        _check_logprob_status(status, logits, t, temperature)
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
) -> Any:
    """``dlogits`` in the logits' dtype and shape (written into ``logits`` itself with ``in_place``).
    ``stats``: the forward's saved row statistics of these logits at this temperature
    (``selective_logprobs(..., keep_stats=True)``), which spare the kernel a pass over the logits.
    Non-finite upstream gradients are found by the kernel and raised with the status read."""
    import torch

    _require()
    dtype = _float_name("logits", logits)
    x, rows, vocab, row_stride, group_rows, group_stride = _logits_layout(logits)
    t = targets.detach().reshape(-1).to(torch.int64).contiguous()
    g = None if grad_logp is None else grad_logp.detach().reshape(-1).to(torch.float32).contiguous()
    gh = None if grad_entropy is None else grad_entropy.detach().reshape(-1).to(torch.float32).contiguous()
    # A tensor on another device would hand the kernel a pointer it cannot read.
    _same_device(x.device, targets=t, grad_logp=g, grad_entropy=gh, stats=stats)
    for name, v in (("targets", t), ("grad_logp", g), ("grad_entropy", gh)):
        if v is not None and v.numel() != rows:
            raise ValueError(f"{name}: expected {rows} values (one per row of logits), got {v.numel()}")
    if stats is not None and (tuple(stats.shape) != (rows, 3) or stats.dtype != torch.float32):
        raise ValueError(f"stats: expected the forward's float32 ({rows}, 3) row statistics on {x.device}")
    if g is None:
        g = torch.zeros(rows, dtype=torch.float32, device=x.device)
    if in_place and x.data_ptr() != logits.data_ptr():
        raise ValueError("logits: an in-place backward needs logits whose last dimension is contiguous")
    out = x if in_place else torch.empty((rows, vocab), dtype=x.dtype, device=x.device)
    status = _new_status(x.device)
    device, stream = _stream(x.device)
    _core.cuda_selective_logprobs_backward(
        device,
        stream,
        (x.data_ptr(), dtype, rows, vocab, row_stride, group_rows, group_stride),
        t.data_ptr(),
        float(temperature),
        g.data_ptr(),
        None if gh is None else gh.data_ptr(),
        out.data_ptr(),
        vocab,
        status.data_ptr(),
        None if stats is None else stats.contiguous().data_ptr(),
    )
    if check:
        _check_logprob_status(status, logits, t, temperature, (("grad_logp", g), ("grad_entropy", gh)))
    return logits if in_place else out.reshape(logits.shape)


# --- policy loss --------------------------------------------------------------------------------


def _loss_error(
    bits: int,
    first: int,
    lp: Any,
    old: Optional[Any],
    ref: Optional[Any],
    adv: Any,
    weights: Any,
) -> Exception:
    """The CPU path's error for flagged loss inputs, located here in the CPU's order: per-row
    advantages, the mask, then the first unmasked token with a non-finite input (checking logp,
    old_logp, ref_logp, advantages there), then an overflowing gradient or loss."""
    import torch

    length = lp.shape[1]
    if adv.dim() == 1:
        row = _first(~torch.isfinite(adv))
        if row is not None:
            return ValueError(f"advantages: expected finite values, found {float(adv[row])} at row {row}")
    at = _first(~((weights >= 0) & torch.isfinite(weights)))
    if at is not None:
        i, t = divmod(at, length)
        return ValueError(f"mask: expected finite weights >= 0, got {float(weights[i, t])} at ({i}, {t})")
    if bits & NONFINITE_INPUT:
        inputs = [("logp", lp), ("old_logp", old), ("ref_logp", ref)]
        if adv.dim() == 2:
            inputs.append(("advantages", adv))
        bad = torch.zeros_like(weights, dtype=torch.bool)
        for _, x in inputs:
            if x is not None:
                bad |= ~torch.isfinite(x.float())
        at = _first(bad & (weights != 0))
        if at is not None:
            i, t = divmod(at, length)
            for name, x in inputs:
                if x is not None and not bool(torch.isfinite(x[i, t].float())):
                    value = float(x[i, t])
                    return ValueError(
                        f"{name}: expected finite values, found {value} at ({i}, {t}) (an unmasked token)"
                    )
    if bits & OVERFLOW:
        if first >= 0:
            i, t = divmod(first, length)
            return ValueError(
                f"grad: result overflows float32 (the gradient at ({i}, {t}) is not finite; "
                f"check the log-probability gaps)"
            )
        return ValueError("loss: result overflows float32 (check the log-probability gaps)")
    return RuntimeError(f"policy loss: the kernel reported status {bits:#x}")


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
    device, and the metrics as floats (read with the status)."""
    import torch

    _require()
    if logp.dim() != 2:
        raise ValueError(f"logp: expected a 2-D tensor (B, T), got shape {tuple(logp.shape)}")
    batch, length = logp.shape
    dtype = _float_name("logp", logp)
    device = logp.device
    _same_device(device, old_logp=old_logp, ref_logp=ref_logp, advantages=advantages, mask=mask)

    def same(name: str, x: Optional[Any]) -> Optional[Any]:
        if x is None:
            return None
        if tuple(x.shape) != (batch, length):
            raise ValueError(f"{name}: expected shape {(batch, length)} like logp, got {tuple(x.shape)}")
        return x.detach().to(logp.dtype).contiguous()

    lp = logp.detach().contiguous()
    old = same("old_logp", old_logp)
    ref = same("ref_logp", ref_logp) if options.get("beta", 0.0) != 0.0 else None
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask: expected shape {(batch, length)} like logp, got {tuple(mask.shape)}")
    m, mask_dtype = _mask_input(mask.detach())
    if advantages.dtype.is_complex or advantages.dtype == torch.bool:
        raise TypeError(f"advantages: expected real numbers, got dtype {advantages.dtype}")
    adv = advantages.detach().to(torch.float32).contiguous()
    if tuple(adv.shape) not in ((batch,), (batch, length)):
        raise ValueError(
            f"advantages: expected shape ({batch},) or ({batch}, {length}), got {tuple(adv.shape)}"
        )
    per_token = adv.dim() == 2
    if out is None:
        grad = torch.empty((batch, length), dtype=torch.float32, device=device)
    elif (
        not isinstance(out, torch.Tensor)
        or out.dtype != torch.float32
        or tuple(out.shape) != (batch, length)
        or not out.is_contiguous()
        or out.device != device
    ):
        raise ValueError(f"out: expected a contiguous float32 tensor of shape {(batch, length)} on {device}")
    else:
        grad = out
    workspace = torch.empty(_core.cuda_loss_workspace_len(batch, length), dtype=torch.float64, device=device)
    # The loss and metric slots (12 float64) and the status (2 int64) in one zeroed buffer, so
    # the host reads both with one copy (one wait for the stream).
    results = torch.zeros(14, dtype=torch.int64, device=device)
    out = results[:12].view(torch.float64)
    status = results[12:]
    ordinal, stream = _stream(device)
    slots = _core.cuda_policy_loss(
        ordinal,
        stream,
        lp.data_ptr(),
        0 if old is None else old.data_ptr(),
        0 if ref is None else ref.data_ptr(),
        adv.data_ptr(),
        per_token,
        m.data_ptr(),
        dtype,
        mask_dtype,
        batch,
        length,
        options,
        grad.data_ptr(),
        workspace.data_ptr(),
        out.data_ptr(),
        status.data_ptr(),
    )
    metrics: Dict[str, float] = {}
    if check:
        host = results.cpu()
        bits, first = _decode_status(*host[12:].tolist())
        if bits:
            weights = m.float() if m.dtype == torch.uint8 else m
            raise _loss_error(bits, first, lp, old, ref, adv, weights)
        values = host[:12].view(torch.float64).tolist()
        metrics = {name: values[slot] for name, slot in slots}
        for name, value in metrics.items():
            if value in (float("inf"), float("-inf")):
                raise ValueError(
                    f"metrics: result overflows float32 ({name} is {value}; "
                    f"check the magnitudes of the inputs)"
                )
    return out[0].to(torch.float32), grad, metrics


# --- rewards and advantages ---------------------------------------------------------------------


def _device_groups(rows: int, group_size: Optional[int], group_ids: Optional[Any], device: Any):
    """``(num_groups, group_size, order, starts)`` on the device: contiguous groups, or CSR
    built from ``group_ids`` with a stable sort (members keep their row order)."""
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
        if group_size < 1:
            raise ValueError(f"group_size: expected a positive group size, got {group_size}")
        if rows % group_size:
            raise ValueError(
                f"group_size: expected a divisor of the number of rows ({rows}), got {group_size}"
            )
        return rows // group_size, group_size, None, None
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
    return counts.numel(), 0, order, starts


def _verdict_error(first_error: Any, num_steps: Any) -> Optional[Exception]:
    """The first invalid verdict in row order, with the CPU path's message (error path only)."""
    k, n = first_error, num_steps
    bad = (n < 0) | (k < -2) | ((k != -2) & ((n == 0) | (k >= n)))
    row = _first(bad)
    if row is None:
        return None
    k, n = int(k[row]), int(n[row])
    if n < 0:
        return ValueError(f"num_steps: expected values >= 1, got {n} at row {row}")
    if k < -2:
        return ValueError(
            f"first_error: expected -2 (not judged), -1 (no wrong step) or a step index >= 0, "
            f"got {k} at row {row}"
        )
    if n == 0:
        return ValueError(
            f"num_steps: expected values >= 1 on judged rows, got 0 at row {row} (first_error {k})"
        )
    return ValueError(f"first_error: expected a step index below num_steps ({n}), got {k} at row {row}")


def _check_group_status(status: Any, what: str, **arrays: Any) -> None:
    """Raises the CPU path's error for flagged inputs, located here in the CPU's order."""
    import torch

    bits, first = _read_status(status)
    if bits == 0:
        return
    rewards = arrays.get("rewards")
    if rewards is not None:
        row = _first(torch.isinf(rewards))
        if row is not None:
            raise ValueError(
                f"rewards: expected finite values, found {float(rewards[row])} at row {row} "
                f"(NaN marks an unscorable row; infinity is not allowed)"
            )
    if arrays.get("first_error") is not None:
        error = _verdict_error(arrays["first_error"], arrays["num_steps"])
        if error is not None:
            raise error
    credit = arrays.get("credit")
    if credit is not None:
        row = _first(~(credit.isnan() | ((credit >= 0) & (credit <= 1))))
        if row is not None:
            raise ValueError(
                f"credit: expected values in [0, 1] (NaN = not judged), got {float(credit[row])} at row {row}"
            )
    advantages = arrays.get("advantages")
    if advantages is not None:
        row = _first(~torch.isfinite(advantages))
        if row is not None:
            raise ValueError(
                f"advantages: expected finite values, found {float(advantages[row])} at row {row}"
            )
    mask = arrays.get("mask")
    if mask is not None:
        mask = mask.float()
        at = _first(~((mask >= 0) & torch.isfinite(mask)))
        if at is not None:
            i, t = divmod(at, mask.shape[1])
            raise ValueError(f"mask: expected finite weights >= 0, got {float(mask[i, t])} at ({i}, {t})")
    if bits & OVERFLOW:
        raise ValueError(f"{what}: result overflows float32 at index {first}; rescale the rewards")
    raise RuntimeError(f"{what}: the kernel reported status {bits:#x}")


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
    num_groups, size, order, starts = _device_groups(rows, group_size, group_ids, device)

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
        x = x.to(device=device, dtype=dtype).reshape(-1).contiguous()
        if x.numel() != rows:
            raise ValueError(f"{name}: expected shape ({rows},), got {x.numel()} elements")
        return x

    fe = column("first_error", first_error, torch.int64)
    ns = column("num_steps", num_steps, torch.int64)
    cr = column("credit", credit, torch.float64)
    co = column("correct", correct, torch.uint8)
    if cr is None and (fe is None or ns is None):
        raise ValueError("first_error: expected first_error and num_steps, or credit")
    out_rewards = torch.empty(rows, dtype=torch.float32, device=device)
    out_credit = torch.empty(rows, dtype=torch.float32, device=device)
    all_negative = torch.empty(rows, dtype=torch.uint8, device=device)
    diversified = torch.empty(rows, dtype=torch.uint8, device=device)
    stats = torch.zeros(5, dtype=torch.float64, device=device)
    scratch = torch.zeros(_core.cuda_reward_scratch_len(num_groups), dtype=torch.float64, device=device)
    status = _new_status(device)
    ordinal, stream = _stream(device)
    _core.cuda_sgpo_rewards(
        ordinal,
        stream,
        rows,
        num_groups,
        size,
        0 if order is None else order.data_ptr(),
        0 if starts is None else starts.data_ptr(),
        r.data_ptr(),
        0 if fe is None else fe.data_ptr(),
        0 if ns is None else ns.data_ptr(),
        0 if cr is None else cr.data_ptr(),
        0 if co is None else co.data_ptr(),
        float(credit_scale),
        mode,
        out_rewards.data_ptr(),
        out_credit.data_ptr(),
        all_negative.data_ptr(),
        diversified.data_ptr(),
        stats.data_ptr(),
        scratch.data_ptr(),
        status.data_ptr(),
        rule,
        float(beta),
        float(gamma),
    )
    _check_group_status(status, "rewards", rewards=r, first_error=fe, num_steps=ns, credit=cr)
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
    num_groups, size, order, starts = _device_groups(rows, group_size, group_ids, device)
    out = torch.empty(rows, dtype=torch.float32, device=device)
    scratch = torch.zeros(1, dtype=torch.float64, device=device)
    status = _new_status(device)
    ordinal, stream = _stream(device)
    _core.cuda_group_advantages(
        ordinal,
        stream,
        rows,
        num_groups,
        size,
        0 if order is None else order.data_ptr(),
        0 if starts is None else starts.data_ptr(),
        r.data_ptr(),
        scale,
        float(eps),
        singleton,
        out.data_ptr(),
        scratch.data_ptr(),
        status.data_ptr(),
    )
    _check_group_status(status, "rewards", rewards=r)
    return out


def token_advantages(advantages: Any, mask: Any, out: Optional[Any] = None, check: bool = True) -> Any:
    """``advantages[:, None] * mask`` in one pass on the device (float32 ``(N, L)``); ``check``
    reads the status (one wait for the stream) and raises on invalid inputs."""
    import torch

    _require()
    device = advantages.device
    _same_device(device, mask=mask, out=out)
    a = advantages.detach().reshape(-1).to(torch.float32).contiguous()
    if mask.dim() != 2 or mask.shape[0] != a.numel():
        raise ValueError(
            f"mask: expected shape ({a.numel()}, L) matching advantages, got {tuple(mask.shape)}"
        )
    m, mask_dtype = _mask_input(mask.detach())
    rows, length = m.shape
    if length == 0:
        _check_finite_rows("advantages", a)  # the CPU path checks them even without tokens
    if out is None:
        out = torch.empty((rows, length), dtype=torch.float32, device=device)
    elif out.dtype != torch.float32 or tuple(out.shape) != (rows, length) or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 tensor of shape {(rows, length)}")
    status = _new_status(device)
    ordinal, stream = _stream(device)
    _core.cuda_token_advantages(
        ordinal,
        stream,
        a.data_ptr(),
        m.data_ptr(),
        mask_dtype,
        rows,
        length,
        out.data_ptr(),
        status.data_ptr(),
    )
    if check:
        _check_group_status(status, "token_advantages", advantages=a, mask=m)
    return out

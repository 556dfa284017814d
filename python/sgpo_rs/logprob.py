"""Fused selective log-softmax: ``log_softmax(logits / T)[..., target]`` (and the entropy) without
materialising the ``(N, V)`` log-softmax."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _arrays, _core, _cuda


def _logits(value: Any) -> Tuple[np.ndarray, str, Tuple[int, ...]]:
    """Logits as a contiguous 2-D ``(N, V)`` array (float32/float64, or half bits as uint16), the
    half dtype, and the leading shape the outputs take."""
    array = _arrays._as_array("logits", value)
    if array.ndim not in (2, 3):
        raise ValueError(f"logits: expected a 2-D (N, V) or 3-D (B, T, V) array, got shape {array.shape}")
    if array.shape[-1] == 0:
        raise ValueError(f"logits: expected a vocabulary of at least 1, got shape {array.shape}")
    lead = array.shape[:-1]
    array = array.reshape(-1, array.shape[-1])
    if array.dtype == np.float32 or array.dtype == np.float64:
        return np.ascontiguousarray(array), "none", lead
    if array.dtype == np.float16:
        return np.ascontiguousarray(array).view(np.uint16), "float16", lead
    if array.dtype.name == "bfloat16":  # ml_dtypes
        return np.ascontiguousarray(array).view(np.uint16), "bfloat16", lead
    raise TypeError(f"logits: expected dtype float32, float64, float16 or bfloat16, got {array.dtype}")


def _targets(value: Any, lead: Tuple[int, ...]) -> np.ndarray:
    array = _arrays._as_array("targets", value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer token ids, got dtype {array.dtype}")
    if array.shape != lead:
        raise ValueError(f"targets: expected shape {lead} (the leading shape of logits), got {array.shape}")
    return np.ascontiguousarray(array.reshape(-1), dtype=np.int64)


def _grad(name: str, value: Any, lead: Tuple[int, ...]) -> np.ndarray:
    array = _arrays._as_array(name, value)
    if array.dtype.kind not in "fiu" and array.dtype.name != "bfloat16":
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    if array.shape != lead:
        raise ValueError(f"{name}: expected shape {lead} (the leading shape of logits), got {array.shape}")
    return np.ascontiguousarray(array.reshape(-1), dtype=np.float32)


def selective_logprobs(
    logits: Any,
    targets: Any,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``log_softmax(logits / temperature, -1)`` at ``targets``, and optionally the entropy.

    ``logits`` is ``(N, V)`` or ``(B, T, V)`` (float32, float64, float16 or ml_dtypes bfloat16,
    upcast in registers), ``targets`` integer ids of the leading shape. Returns ``(logp, entropy)``,
    float32 arrays of the leading shape; ``entropy`` is ``None`` unless asked for
    (``H = lse(z) - sum_j p_j z_j``, ``z = logits / temperature``).

    One pass over each row (online log-sum-exp; on AVX2 CPUs the exponentials are float32, about
    2 ulp, and every sum is float64), rows in parallel; nothing of size ``(N, V)`` is allocated.
    A logit of ``-inf`` is a token of probability 0 (its target gives ``logp = -inf``); NaN or
    ``+inf`` logits, a row of only ``-inf``, targets outside ``[0, V)`` and a ``temperature`` that
    is not finite and > 0 raise ``ValueError`` naming the argument.

    Torch CUDA tensors run the CUDA kernel on their device (float32 CUDA tensors back).
    """
    temperature = _arrays.real("temperature", temperature)
    entropy = _arrays.flag("entropy", entropy)
    if _cuda.is_cuda(logits):
        return _cuda.selective_logprobs(logits, targets, temperature, entropy)
    x, half, lead = _logits(logits)
    t = _targets(targets, lead)
    logp, ent = _core.selective_logprobs_core(x, t, half_dtype=half, temperature=temperature, entropy=entropy)
    return logp.reshape(lead), None if ent is None else ent.reshape(lead)


def selective_logprobs_backward(
    logits: Any,
    targets: Any,
    grad_logp: Any,
    grad_entropy: Any = None,
    *,
    temperature: float = 1.0,
) -> np.ndarray:
    """The gradient with respect to ``logits`` of ``sum(grad_logp * logp + grad_entropy * H)``.

    Arguments as in :func:`selective_logprobs`; ``grad_logp`` and ``grad_entropy`` (optional) have
    the leading shape and must be finite. Returns float32 of the logits' shape:
    ``(grad_logp (1[j = y] - p_j) - grad_entropy p_j (log p_j + H)) / temperature``.

    Torch CUDA tensors run the CUDA kernel on their device (the gradient in the logits' dtype).
    """
    if _cuda.is_cuda(logits):
        temperature = _arrays.real("temperature", temperature)
        return _cuda.selective_logprobs_backward(logits, targets, temperature, grad_logp, grad_entropy)
    x, half, lead = _logits(logits)
    t = _targets(targets, lead)
    g = _grad("grad_logp", grad_logp, lead)
    gh = None if grad_entropy is None else _grad("grad_entropy", grad_entropy, lead)
    temperature = _arrays.real("temperature", temperature)
    dlogits = _core.selective_logprobs_backward_core(x, t, g, gh, half_dtype=half, temperature=temperature)
    return dlogits.reshape(*lead, x.shape[1])

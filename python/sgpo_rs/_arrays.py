"""Argument normalisation shared by the numpy API: every array reaches the Rust core contiguous,
in a dtype the core reads, with errors that name the argument."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

_MASK_DTYPES = {np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64)}


def _is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16 (kind "V"). The kind test first: ``dtype.name`` is a Python-level
    property of numpy that cost about a third of a small ``policy_loss`` call's overhead."""
    return dtype.kind == "V" and dtype.name == "bfloat16"


def _as_array(name: str, value: Any) -> np.ndarray:
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        array = np.asarray(value)
    except Exception as error:  # torch tensors on an accelerator, ragged lists, ...
        raise TypeError(f"{name}: expected an array-like of numbers ({error})") from None
    if _is_bfloat16(array.dtype):
        return array
    if array.dtype == object or array.dtype.kind in "USVcMm":
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    return array


def _check_ndim(name: str, array: np.ndarray, ndims: Tuple[int, ...], what: str) -> None:
    if array.ndim not in ndims:
        raise ValueError(f"{name}: expected {what}, got shape {array.shape}")


def float64_rows(name: str, value: Any) -> np.ndarray:
    """A 1-D per-row float array as contiguous float64 (exact for float32 input)."""
    array = _as_array(name, value)
    _check_ndim(name, array, (1,), "a 1-D array of one value per row")
    if array.dtype.kind not in "fiub" and not _is_bfloat16(array.dtype):
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def int64_rows(name: str, value: Any) -> np.ndarray:
    array = _as_array(name, value)
    _check_ndim(name, array, (1,), "a 1-D array of one value per row")
    if array.dtype.kind not in "iu" and array.dtype != np.bool_:
        if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            return np.ascontiguousarray(array, dtype=np.int64)
        raise TypeError(f"{name}: expected integers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def bool_rows(name: str, value: Any) -> np.ndarray:
    array = _as_array(name, value)
    _check_ndim(name, array, (1,), "a 1-D array of one value per row")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "iu" or not np.all((array == 0) | (array == 1)):
            raise TypeError(f"{name}: expected booleans (or 0/1), got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.bool_)


def group_ids(value: Any) -> Optional[np.ndarray]:
    """Any hashable ids (verl's uid strings, ints) as int64 codes; equal ids share a code."""
    if value is None:
        return None
    array = np.asarray(value)
    _check_ndim("group_ids", array, (1,), "a 1-D array of one id per row")
    if array.dtype.kind in "iub":
        return np.ascontiguousarray(array, dtype=np.int64)
    try:
        _, codes = np.unique(array, return_inverse=True)
    except TypeError as error:
        raise TypeError(f"group_ids: expected sortable ids (str or int), got {error}") from None
    return np.ascontiguousarray(codes.reshape(-1), dtype=np.int64)


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """An int option in `[minimum, 2**63)`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not minimum <= int(value) < 2**63:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def group_size(value: Any) -> Optional[int]:
    return None if value is None else integer("group_size", value)


def real(name: str, value: Any) -> float:
    """A float option; range checks are the core's."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """`check` that lets `None` through."""
    return lambda name, value: None if value is None else check(name, value)


def choice(name: str, value: Any) -> str:
    """A string option; the core checks it against the allowed names."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def logprobs(name: str, value: Any) -> Tuple[np.ndarray, str]:
    """Log-probabilities as float32/float64, or half-precision bits as uint16 plus their dtype
    (shapes are the core's to check, with the same message on every path)."""
    array = _as_array(name, value)
    if array.dtype == np.float32 or array.dtype == np.float64:
        return np.ascontiguousarray(array), "none"
    if array.dtype == np.float16:
        return np.ascontiguousarray(array).view(np.uint16), "float16"
    if _is_bfloat16(array.dtype):
        return np.ascontiguousarray(array).view(np.uint16), "bfloat16"
    raise TypeError(f"{name}: expected dtype float32, float64, float16 or bfloat16, got {array.dtype}")


def same_logprobs(name: str, value: Any, like: np.ndarray, half: str) -> Optional[np.ndarray]:
    """An optional companion of `logp`, cast to logp's dtype."""
    if value is None:
        return None
    array, its_half = logprobs(name, value)
    if array.dtype != like.dtype or its_half != half:
        # Different precisions: bring the companion to logp's dtype (one copy).
        full = np.asarray(value)
        if half == "none":
            return np.ascontiguousarray(full, dtype=like.dtype)
        target = np.float16 if half == "float16" else np.dtype("bfloat16")
        return np.ascontiguousarray(full.astype(target)).view(np.uint16)
    return array


def mask(value: Any) -> np.ndarray:
    """A mask in a dtype the core reads (its shape is the core's to check)."""
    array = _as_array("mask", value)
    if array.dtype not in _MASK_DTYPES:
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        else:
            raise TypeError(f"mask: expected bool, integer or float values, got dtype {array.dtype}")
    return np.ascontiguousarray(array)


def advantages(value: Any) -> np.ndarray:
    """Advantages as contiguous float32 (their shape is the core's to check)."""
    array = _as_array("advantages", value)
    if _is_bfloat16(array.dtype) or array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"advantages: expected real numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)

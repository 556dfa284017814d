"""verl's outcome advantages on the Rust kernels: ``grpo_rs`` (verl's GRPO, exactly) and ``sgpo``
(the SGPO rule on the same inputs, then the same GRPO).

Inputs are verl's own: ``token_level_rewards`` float32 ``(N, L)``, ``response_mask`` ``(N, L)``
(int64, bool or float; rows may be a column slice of a wider mask), ``index`` the prompt uid of each
row (a numpy object array of strings, or ints; groups unsorted and of any size). Torch CPU tensors
and numpy arrays are both read in place; the result is a float32 ``(N, L)`` torch tensor when the
rewards are a torch tensor, numpy otherwise.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import _core
from ..rewards import SGPORewards, sgpo_rewards
from .options import SGPOOptions, norm_by_std


def _as_numpy(name: str, value: Any) -> Tuple[np.ndarray, bool]:
    """A 2-D array read in place, and whether it came as a torch tensor."""
    is_torch = type(value).__module__.startswith("torch")
    if is_torch:
        if value.device.type != "cpu":
            raise ValueError(
                f"{name}: expected a CPU tensor (verl computes advantages on the driver), got {value.device}"
            )
        value = value.detach().numpy()
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, L), got shape {array.shape}")
    return array, is_torch


def _rewards(token_level_rewards: Any) -> Tuple[np.ndarray, bool]:
    array, is_torch = _as_numpy("token_level_rewards", token_level_rewards)
    if array.dtype != np.float32:
        raise TypeError(f"token_level_rewards: expected dtype float32 (verl's), got {array.dtype}")
    if array.strides[1] != 4 and array.shape[1] > 1:
        array = np.ascontiguousarray(array)
    return array, is_torch


def _mask(response_mask: Any, rows: int, length: int) -> np.ndarray:
    array, _ = _as_numpy("response_mask", response_mask)
    if array.shape != (rows, length):
        raise ValueError(
            f"response_mask: expected shape ({rows}, {length}) like token_level_rewards, got {array.shape}"
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(f"response_mask: expected bool, integer or float values, got dtype {array.dtype}")
    if array.dtype not in (np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64):
        array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
    elif array.shape[1] > 1 and array.strides[1] != array.itemsize:
        array = np.ascontiguousarray(array)
    return array


def group_codes(index: Any, rows: int) -> np.ndarray:
    """verl's ``index`` (uid strings, ints, any hashable) as int64 group codes, first-seen order.

    A dict pass over the uids: verl's uuid strings need no sort (``np.unique`` on an object array
    sorts Python strings, about 10x slower at 8192 rows)."""
    if index is None:
        raise TypeError("index: expected one prompt uid per row (verl's non_tensor_batch['uid']), got None")
    array = np.asarray(index)
    if array.ndim != 1 or array.shape[0] != rows:
        raise ValueError(f"index: expected shape ({rows},), one uid per row, got {array.shape}")
    if array.dtype.kind in "iu":
        return np.ascontiguousarray(array, dtype=np.int64)
    codes: Dict[Any, int] = {}
    try:
        out = [codes.setdefault(uid, len(codes)) for uid in array.tolist()]
    except TypeError as error:
        raise TypeError(f"index: expected hashable uids (str or int), got {error}") from None
    return np.asarray(out, dtype=np.int64)


def _finish(out: np.ndarray, is_torch: bool) -> Tuple[Any, Any]:
    if is_torch:
        import torch

        out = torch.from_numpy(out)
    return out, out


def compute_grpo_outcome_advantage(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> Tuple[Any, Any]:
    """verl's ``compute_grpo_outcome_advantage`` (same signature, same result) on the Rust kernels.

    ``s_i`` = sum of row ``i`` of ``token_level_rewards`` over all ``L`` columns (float32, as verl
    holds it); per group of equal ``index``: ``a_i = (s_i - mean) / (std + epsilon)`` with the
    unbiased std (``a_i = s_i - mean`` when ``norm_adv_by_std_in_grpo`` is False); a group of one
    has mean 0 and std 1. Returns ``(A, A)`` with ``A[i, t] = a_i * response_mask[i, t]`` as float32
    ``(N, L)``, the same object twice, as verl does. Statistics are computed in float64 from the
    float32 scores: within 2e-6 of verl's float32 arithmetic where the scores are exact in float32
    (one reward per row), and closer to the exact result than verl where they are not.

    ``config`` is accepted for signature compatibility; as in verl, this function reads
    ``norm_adv_by_std_in_grpo`` from its argument. NaN or infinite rewards raise ``ValueError``.
    """
    rewards, is_torch = _rewards(token_level_rewards)
    scores = _core.sequence_scores_core(rewards)
    out, _ = _outcome(scores, response_mask, index, rewards.shape, epsilon, norm_adv_by_std_in_grpo)
    return _finish(out, is_torch)


def _outcome(
    scores: np.ndarray, response_mask: Any, index: Any, shape: Tuple[int, int], epsilon: float, norm: bool
) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
        raise TypeError(f"epsilon: expected a real number, got {type(epsilon).__name__}")
    if not isinstance(norm, (bool, np.bool_)):
        raise TypeError(f"norm_adv_by_std_in_grpo: expected True or False, got {type(norm).__name__}")
    mask = _mask(response_mask, *shape)
    codes = group_codes(index, shape[0])
    return _core.outcome_advantages_core(scores, mask, codes, bool(norm), float(epsilon))


def sgpo_scores(
    token_level_rewards: Any,
    index: Any,
    first_error: Any,
    num_steps: Any,
    options: SGPOOptions,
    correct: Any = None,
    credit: Any = None,
) -> Tuple[np.ndarray, SGPORewards]:
    """The sequence scores and their SGPO diversification (float64 ``(N,)``, the rule's result).
    ``credit``: trajectory scores given directly (length-based), used instead of the verdicts."""
    rewards, _ = _rewards(token_level_rewards)
    scores = _core.sequence_scores_core(rewards)
    codes = group_codes(index, rewards.shape[0])
    judged = dict(first_error=first_error, num_steps=num_steps) if credit is None else dict(credit=credit)
    result = sgpo_rewards(
        scores,
        **judged,
        group_ids=codes,
        correct=correct,
        mode=options.mode,
        credit_scale=options.credit_scale,
        **options.credit.rule_kwargs(),
    )
    return scores, result


def compute_sgpo_outcome_advantage(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any,
    first_error: Any,
    num_steps: Any,
    *,
    correct: Any = None,
    credit_scale: Optional[float] = None,
    mode: str = "all_negative",
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> Tuple[Any, Any]:
    """SGPO on verl's inputs: diversify the sequence scores of all-wrong groups with the judge's
    verdicts, then normalise them exactly as :func:`compute_grpo_outcome_advantage` does.

    The score of row ``i`` is the row sum of ``token_level_rewards``; ``correct`` defaults to
    ``score > 0``; ``first_error``/``num_steps`` are the judge's verdicts per row (``-1`` no wrong
    step, ``-2`` not judged; see :func:`sgpo_rs.sgpo_rewards`). In a diversified group the score
    becomes ``s_i + credit_scale * f(c_i)`` with ``c_i = first_error_i / num_steps_i`` and ``f``
    the credit rule (``sgpo_rs.credit``; ``credit_scale`` None: 0.5, or the preset's).

    ``config`` (verl's ``algorithm`` config, a ``DictConfig`` or ``AlgoConfig``), when given,
    overrides ``norm_adv_by_std_in_grpo`` and the ``sgpo`` options (``credit_scale``, ``mode``,
    ``rule``, ``beta``, ``gamma``, ``preset``) with the values it sets. Returns ``(A, A)`` as
    float32 ``(N, L)``.
    """
    options = SGPOOptions.from_config(config, credit_scale=credit_scale, mode=mode)
    norm = norm_by_std(config, norm_adv_by_std_in_grpo)
    rewards, is_torch = _rewards(token_level_rewards)
    out, _, _ = sgpo_outcome(
        rewards, response_mask, index, first_error, num_steps, options, correct, epsilon, norm
    )
    return _finish(out, is_torch)


def sgpo_outcome(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any,
    first_error: Any,
    num_steps: Any,
    options: SGPOOptions,
    correct: Any = None,
    epsilon: float = 1e-6,
    norm: bool = True,
    credit: Any = None,
) -> Tuple[np.ndarray, np.ndarray, SGPORewards]:
    """(token advantages (N, L), per-row advantages (N,), the rule's result) for the estimators.
    ``index`` may already be group codes (int64, as :func:`group_codes` gives): then no uid pass."""
    rewards, _ = _rewards(token_level_rewards)
    codes = group_codes(index, rewards.shape[0])  # once: both steps below take the codes as is
    _, result = sgpo_scores(rewards, codes, first_error, num_steps, options, correct, credit)
    diversified = result.rewards.astype(np.float64)
    out, per_row = _outcome(diversified, response_mask, codes, rewards.shape, epsilon, norm)
    return out, per_row, result


def metrics_of(result: SGPORewards, judge_calls: int) -> Dict[str, float]:
    """The ``sgpo/*`` metrics verl logs for one batch (``judge_calls``: rows the judge was asked about)."""
    return {**result.metrics(), "sgpo/judge_calls": float(judge_calls)}

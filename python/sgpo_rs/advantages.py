"""Group-normalised advantages with TRL and verl semantics, and their token broadcast."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _arrays, _core, _cuda


def group_advantages(
    rewards: Any,
    *,
    group_size: Optional[int] = None,
    group_ids: Any = None,
    scale: str = "group",
    eps: float = 1e-4,
    singleton: str = "zero",
) -> np.ndarray:
    """``A_i = (R_i - mean_g) / (std + eps)`` per group, as float32 ``(N,)``.

    ``std`` is unbiased (Bessel), computed as a centred two-pass sum in float64, so small spreads
    keep their scale (rewards ``[1.0, 1.00001]`` with ``eps=1e-6`` give +-0.6195).

    Args:
        rewards: ``(N,)``; NaN marks an unscorable row, left out of every statistic, advantage 0.
        group_size / group_ids: consecutive groups (TRL) or one id per row (verl); give one.
        scale: ``"group"`` (the group's std), ``"batch"`` (std of the whole batch, mean still per
            group; TRL ``scale_rewards="batch"``) or ``"none"`` (``A = R - mean``).
        eps: added to the std. TRL 1e-4 (default), verl 1e-6.
        singleton: a group with one scorable row gets ``"zero"`` (TRL: std undefined, then
            ``nan_to_num``) or ``"unit"`` (verl: mean 0, std 1, so ``A = R / (1 + eps)``).

    Defaults are TRL's; verl's ``compute_grpo_outcome_advantage`` is
    ``group_ids=uid, eps=1e-6, singleton="unit"`` (``scale="none"`` for
    ``norm_adv_by_std_in_grpo=False``). Any other NaN (undefined std) also becomes 0.

    A torch CUDA tensor of ``rewards`` is normalised on its device (a float32 CUDA tensor back).
    """
    if _cuda.is_cuda(rewards):
        return _cuda.group_advantages(
            rewards,
            _arrays.group_size(group_size),
            group_ids,
            _arrays.choice("scale", scale),
            _arrays.real("eps", eps),
            _arrays.choice("singleton", singleton),
        )
    r = _arrays.float64_rows("rewards", rewards)
    return _core.group_advantages_core(
        r,
        _arrays.group_size(group_size),
        _arrays.group_ids(group_ids),
        _arrays.choice("scale", scale),
        _arrays.real("eps", eps),
        _arrays.choice("singleton", singleton),
    )


def token_advantages(advantages: Any, mask: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``out[i, t] = advantages[i] * mask[i, t]``: float32 ``(N, L)`` in one pass.

    ``mask`` may be bool, int (TRL's ``completion_mask``) or float (verl's ``response_mask``);
    float weights must be finite and >= 0. This is verl's ``(N, L)`` advantage tensor.
    ``out``: an optional C-contiguous float32 ``(N, L)`` array to write into (reusing a buffer
    across steps saves the page faults of a fresh allocation) - it is also returned.

    Torch CUDA tensors run on their device (``out``, if given, a float32 CUDA tensor).
    """
    if _cuda.is_cuda(advantages):
        return _cuda.token_advantages(advantages, mask, out)
    return _core.token_advantages_core(_arrays.advantages(advantages), _arrays.mask(mask), out)

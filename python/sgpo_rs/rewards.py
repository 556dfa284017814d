"""SGPO reward diversification (docs/design.md, "The SGPO reward rule")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from . import _arrays, _core, _cuda
from .credit import CreditOptions


@dataclass(frozen=True)
class SGPORewards:
    """Result of :func:`sgpo_rewards`.

    Attributes:
        rewards: float32 ``(N,)`` diversified rewards; equal to the input where no credit was given.
        credit: float32 ``(N,)`` score ``c_i`` in ``[0, 1]`` of every judged row (before the credit
            rule), 0 where unjudged.
        all_negative: bool ``(N,)``, the row's group has no correct (scorable) response.
        diversified: bool ``(N,)``, the row received ``credit_scale * f(c_i)``.
        stats: ``num_groups``, ``all_negative_groups``, ``diversified_groups`` (groups in which a
            row received credit), ``varied_groups`` (of those, the groups whose scorable rewards
            differ after the credit: the ones that now have non-zero advantages),
            ``judge_missing_groups`` (ints), ``mean_credit`` (mean ``c_i`` of credited rows) and
            ``outcome_reward_mean`` (the mean scorable reward before any credit).
    """

    rewards: np.ndarray
    credit: np.ndarray
    all_negative: np.ndarray
    diversified: np.ndarray
    stats: Dict[str, float]

    def metrics(self) -> Dict[str, float]:
        """The ``sgpo/*`` metrics the trainers log, as fractions of all groups:

        - ``all_negative_frac``: groups with no correct (scorable) response;
        - ``credited_frac``: groups in which a response received credit;
        - ``diversified_frac``: credited groups whose rewards now differ (credit that is equal
          for every response of a group - e.g. every one wrong from its first step - changes no
          advantage, and is not counted);
        - ``judge_missing_frac``: groups left plain GRPO for want of a verdict;
        - ``mean_credit``: the mean score ``c_i`` of the credited responses;
        - ``outcome_reward_mean``: the mean reward before credit (compare it across GRPO and SGPO
          runs: TRL's own ``reward`` log includes the credit).
        """
        groups = max(self.stats["num_groups"], 1)
        return {
            "sgpo/all_negative_frac": self.stats["all_negative_groups"] / groups,
            "sgpo/credited_frac": self.stats["diversified_groups"] / groups,
            "sgpo/diversified_frac": self.stats["varied_groups"] / groups,
            "sgpo/judge_missing_frac": self.stats["judge_missing_groups"] / groups,
            "sgpo/mean_credit": float(self.stats["mean_credit"]),
            "sgpo/outcome_reward_mean": float(self.stats["outcome_reward_mean"]),
        }


def _group_codes(rows: int, group_size: Optional[int], group_ids: Any) -> np.ndarray:
    """Each row's group as a code in ``[0, groups)``."""
    if group_ids is None:
        return np.arange(rows) // group_size
    ids = np.asarray(group_ids.cpu() if hasattr(group_ids, "cpu") else group_ids).reshape(-1)
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def _host(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _add_group_stats(stats: Dict[str, Any], rewards_in: Any, out: SGPORewards, group_size, group_ids) -> None:
    """``varied_groups`` and ``outcome_reward_mean`` (see :class:`SGPORewards`), from the result."""
    before = _host(rewards_in).astype(np.float64).reshape(-1)
    after = _host(out.rewards).astype(np.float64).reshape(-1)
    credited = _host(out.diversified).astype(bool).reshape(-1)
    codes = _group_codes(after.shape[0], group_size, group_ids)
    groups = int(codes.max()) + 1 if codes.size else 0
    scorable = ~np.isnan(after)
    low = np.full(groups, np.inf)
    high = np.full(groups, -np.inf)
    np.minimum.at(low, codes[scorable], after[scorable])
    np.maximum.at(high, codes[scorable], after[scorable])
    credited_groups = np.zeros(groups, dtype=bool)
    credited_groups[codes[credited]] = True
    stats["varied_groups"] = int(np.sum(credited_groups & (high > low)))
    known = before[~np.isnan(before)]
    stats["outcome_reward_mean"] = float(known.mean()) if known.size else float("nan")


def sgpo_rewards(
    rewards: Any,
    first_error: Any = None,
    num_steps: Any = None,
    *,
    group_size: Optional[int] = None,
    group_ids: Any = None,
    correct: Any = None,
    credit_scale: Optional[float] = None,
    mode: str = "all_negative",
    credit: Any = None,
    rule: Optional[str] = None,
    beta: Optional[float] = None,
    gamma: Optional[float] = None,
    preset: Optional[str] = None,
) -> SGPORewards:
    """Diversify the rewards of all-wrong groups with the step-wise judge's verdicts.

    Per row ``i``: outcome reward ``r_i``, ``correct_i`` (default ``r_i > 0``), and the judge's
    ``first_error_i`` (0-based index of the earliest wrong step; ``-1`` no wrong step found;
    ``-2`` not judged) of ``num_steps_i >= 1`` steps. Score ``c_i = first_error_i / num_steps_i``
    (``1`` for ``-1``). In a diversified group ``r'_i = r_i + credit_scale * f(c_i)``, where the
    credit rule ``f`` is ``c`` itself (``rule="prefix"``, the default) or the paper's
    ``sigma(beta * (c - gamma))`` (``rule="logistic"``); see :mod:`sgpo_rs.credit`.

    Args:
        rewards: ``(N,)`` outcome rewards. NaN marks an unscorable row (TRL): it stays NaN, gets
            no credit, and does not count when deciding whether its group is all-negative.
        first_error, num_steps: ``(N,)`` integer verdicts. Rows with ``first_error = -2`` may
            have ``num_steps = 0``.
        group_size: groups are ``group_size`` consecutive rows (TRL ``num_generations``).
        group_ids: or one id per row (verl ``uid``; any ints or strings, unsorted, any sizes).
        correct: optional ``(N,)`` bool correctness; default ``rewards > 0``.
        credit_scale: reward added for ``f(c) = 1`` (None: 0.5, or the preset's). In mode
            ``"all_incorrect"`` keep it below the correct/incorrect reward margin.
        mode: ``"all_negative"`` (the paper: only groups with no correct response) or
            ``"all_incorrect"`` (incorrect rows of every group).
        credit: instead of ``first_error``/``num_steps``, ``(N,)`` credits in ``[0, 1]`` from
            another rule (PRM min or product scores); NaN = not judged.
        rule: ``"prefix"`` (None: the default, or the preset's) or ``"logistic"``.
        beta, gamma: the logistic rule's steepness (> 0; None: 5) and threshold (None: 0.5).
        preset: ``"paper"``: ``rule="logistic", beta=5, gamma=0.5, credit_scale=1``; options
            given explicitly override it.

    A group is diversified only if every row that would be credited has a verdict; otherwise it
    stays plain GRPO and counts in ``stats["judge_missing_groups"]``.

    A torch CUDA tensor of ``rewards`` runs the rule on its device (the verdicts and ``correct``
    are moved there if they are not): the fields are then CUDA tensors (float32, bool), and the
    stats are read back once.
    """
    options = CreditOptions.resolve(preset, credit_scale=credit_scale, rule=rule, beta=beta, gamma=gamma)
    if _cuda.is_cuda(rewards):
        out = _cuda.sgpo_rewards(
            rewards,
            first_error,
            num_steps,
            credit,
            _arrays.group_size(group_size),
            group_ids,
            correct,
            options.credit_scale,
            _arrays.choice("mode", mode),
            **options.rule_kwargs(),
        )
        fields = ("rewards", "credit", "all_negative", "diversified", "stats")
        result = SGPORewards(*(out[name] for name in fields))
        _add_group_stats(result.stats, rewards, result, group_size, group_ids)
        return result
    r = _arrays.float64_rows("rewards", rewards)
    k = None if first_error is None else _arrays.int64_rows("first_error", first_error)
    n = None if num_steps is None else _arrays.int64_rows("num_steps", num_steps)
    c = None if credit is None else _arrays.float64_rows("credit", credit)
    ok = None if correct is None else _arrays.bool_rows("correct", correct)
    codes = _arrays.group_ids(group_ids)  # ids (verl's uid strings) as int64 codes, once
    out_rewards, out_credit, all_negative, diversified, stats = _core.sgpo_rewards_core(
        r,
        k,
        n,
        c,
        ok,
        _arrays.group_size(group_size),
        codes,
        options.credit_scale,
        _arrays.choice("mode", mode),
        **options.rule_kwargs(),
    )
    result = SGPORewards(out_rewards, out_credit, all_negative, diversified, stats)
    _add_group_stats(result.stats, r, result, group_size, codes)
    return result

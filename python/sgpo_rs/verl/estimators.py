"""The advantage estimators registered in verl's ``core_algos`` registry: ``grpo_rs`` and ``sgpo``.

verl calls them as ``fn(token_level_rewards=, response_mask=, config=, index=, ...)`` with
``config`` = ``config.algorithm``; everything SGPO needs beyond that comes from
:mod:`sgpo_rs.verl.verdicts`."""

from __future__ import annotations

from typing import Any, Tuple

from . import verdicts
from .advantage import compute_grpo_outcome_advantage, group_codes, metrics_of, sgpo_outcome
from .deferred import judge_pending
from .options import SGPOOptions, norm_by_std

GRPO_RS = "grpo_rs"
SGPO = "sgpo"


def grpo_rs(
    token_level_rewards: Any, response_mask: Any, index: Any = None, config: Any = None, **_: Any
) -> Tuple[Any, Any]:
    """verl's GRPO (``compute_grpo_outcome_advantage``) on the Rust kernels; ``norm_adv_by_std_in_grpo``
    comes from ``config`` (default True), epsilon is verl's 1e-6."""
    return compute_grpo_outcome_advantage(
        token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm_by_std(config), config=config
    )


def sgpo(
    token_level_rewards: Any, response_mask: Any, index: Any = None, config: Any = None, **_: Any
) -> Tuple[Any, Any]:
    """SGPO: the pending verdicts diversify all-wrong groups, then verl's GRPO normalises.

    Raises ``RuntimeError`` when no verdicts reached the advantage step (the plugin is not loaded
    in the driver, or the reward function does not return the ``sgpo_*`` keys): silently training
    plain GRPO instead is the failure this refuses."""
    options = SGPOOptions.from_config(config)
    pending = verdicts.current()
    rows = int(token_level_rewards.shape[0])
    if pending is None:
        raise RuntimeError(
            "sgpo: no judge verdicts reached the advantage step. Load the plugin in every verl process "
            "(VERL_USE_EXTERNAL_MODULES=sgpo_rs.verl, or the installed 'verl.plugins' entry point), return "
            "the sgpo_* keys from the reward function (sgpo_rs.verl.make_compute_score) and, with the v1 "
            "trainer, select trainer.v1.trainer_mode=sgpo_sync"
        )
    if len(pending) != rows:
        raise ValueError(f"sgpo verdicts: expected {rows} rows like token_level_rewards, got {len(pending)}")
    if pending.deferred:
        index = group_codes(index, rows)  # the uid pass once, for the judging and the rule
        judge_pending(pending, token_level_rewards, index, options, config)
    by_length = options.credit_unit in ("length", "tokens")
    if by_length and pending.score is None:
        raise RuntimeError(
            f"sgpo: algorithm.sgpo.credit_unit={options.credit_unit} needs the reward function's sgpo_score "
            f"(sgpo_rs.verl.make_compute_score(..., credit_unit={options.credit_unit!r}))"
        )
    import torch

    out, _, result = sgpo_outcome(
        token_level_rewards,
        response_mask,
        index,
        pending.first_error,
        pending.num_steps,
        options,
        correct=pending.correct,
        norm=norm_by_std(config),
        credit=pending.score if by_length else None,
    )
    pending.metrics.update(metrics_of(result, int(pending.judged.sum())))
    advantages = torch.from_numpy(out) if isinstance(token_level_rewards, torch.Tensor) else out
    return advantages, advantages


def register() -> None:
    """Put both estimators in verl's registry. Idempotent: a second import, or a reload of this
    package (new function objects), replaces our own entries; a foreign entry under the same name
    is an error, as verl's own ``register_adv_est`` makes it."""
    from verl.trainer.ppo import core_algos

    for name, fn in ((GRPO_RS, grpo_rs), (SGPO, sgpo)):
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        ours = existing is None or (
            getattr(existing, "__module__", None) == fn.__module__
            and getattr(existing, "__qualname__", None) == fn.__qualname__
        )
        if not ours:
            raise ValueError(f"verl advantage estimator {name!r} is already registered to {existing!r}")
        core_algos.ADV_ESTIMATOR_REGISTRY[name] = fn

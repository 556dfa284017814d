"""Judging at the advantage step: only the responses SGPO will use are judged.

The reward function sees one response at a time and cannot know its group, so judging there
(:func:`sgpo_rs.verl.make_compute_score` with a judge) asks about every incorrect response, also
those of mixed groups, whose verdicts the default mode (``all_negative``) never uses. With
``make_compute_score(base_score_fn, judge_at="advantage")`` the reward function only records the
problem, the response and the reference as reward extra info; the ``sgpo`` estimator, where the
groups are known, then judges in one batched call only the incorrect responses of groups without a
correct one (every incorrect response in mode ``all_incorrect``).

Trade-off: fewer judge calls, but the call runs in the trainer's driver process, on the step's
critical path, where judging in the reward workers overlaps with the rollout. The step's judging
time is logged as ``sgpo/judge_time_s``.

The judge is given to the driver either in process (:func:`set_judge`, for notebooks and custom
launchers) or by the config ``+algorithm.sgpo.judge=package.module:make_judge``, a zero-argument
factory (or a judge object) that the driver imports and calls once. Options:
``algorithm.sgpo.judge_timeout_s`` (120; None: wait) and ``algorithm.sgpo.judge_max_failed_steps``
(3: after that many steps in a row in which the judge gave nothing, the step raises instead of
training plain GRPO; None: never).
"""

from __future__ import annotations

import importlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _core
from ..credit import length_scores
from ..judge.calling import FailureStreak, as_judge_fn, run_judge
from .advantage import _rewards
from .options import _get

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_FAILED_STEPS = 3


@dataclass
class _DriverJudge:
    """The judge the driver calls, and how many steps in a row it has given nothing."""

    judge: Any
    source: str
    failures: FailureStreak = field(default_factory=FailureStreak)


_driver: Optional[_DriverJudge] = None


def set_judge(judge: Any) -> None:
    """Use ``judge`` (a :class:`sgpo_rs.judge.StepJudge` or a batch function
    ``fn(problems, responses, rows)``) at the advantage step of this process; ``None`` clears it
    (then ``algorithm.sgpo.judge`` is used)."""
    global _driver
    if judge is not None:
        as_judge_fn(judge)  # refuse a class or a per-response function now
    _driver = None if judge is None else _DriverJudge(judge, "sgpo_rs.verl.set_judge")


def _load(path: str) -> Any:
    """``package.module:attr`` (or ``package.module.attr``): a judge, or a zero-argument factory."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"algorithm.sgpo.judge: expected 'package.module:attr', got {path!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"algorithm.sgpo.judge: cannot load {path!r} ({error})") from error
    if callable(getattr(target, "judge", None)) and not isinstance(target, type):
        return target
    if not callable(target):
        raise TypeError(f"algorithm.sgpo.judge: {path!r} is neither a judge nor a factory of one")
    return target()


def driver_judge(config: Any) -> _DriverJudge:
    """The judge set in this process, else the one the config names (loaded once)."""
    global _driver
    path = _get(_get(config, "sgpo"), "judge")
    # A judge set in process wins over the config; a loaded one is kept while the config names it.
    if _driver is not None and (path is None or _driver.source in (path, "sgpo_rs.verl.set_judge")):
        return _driver
    if path is None:
        raise RuntimeError(
            "sgpo: the reward function defers judging to the advantage step (judge_at='advantage'), but no "
            "judge is set there: add +algorithm.sgpo.judge=package.module:make_judge (a zero-argument "
            "factory of the judge) or call sgpo_rs.verl.set_judge(judge) in the driver"
        )
    judge = _load(str(path))
    as_judge_fn(judge)
    _driver = _DriverJudge(judge, str(path))
    return _driver


def _option(config: Any, key: str, default: Optional[float]) -> Optional[float]:
    sgpo = _get(config, "sgpo")
    value = _get(sgpo, key, default) if sgpo is not None else default
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ValueError(f"algorithm.sgpo.{key}: expected a positive number or null, got {value!r}")
    return value


def rows_to_judge(correct: np.ndarray, codes: np.ndarray, mode: str) -> np.ndarray:
    """Indices of the rows whose verdicts the rule uses: the incorrect rows of groups without a
    correct row (``all_negative``), or every incorrect row (``all_incorrect``)."""
    incorrect = ~correct
    if mode == "all_incorrect":
        return np.flatnonzero(incorrect)
    has_correct = np.zeros(int(codes.max(initial=-1)) + 1, dtype=bool)
    np.logical_or.at(has_correct, codes[correct], True)
    return np.flatnonzero(incorrect & ~has_correct[codes])


def judge_pending(pending: Any, rewards: Any, codes: np.ndarray, options: Any, config: Any) -> None:
    """Fill ``pending``'s verdicts for the rows the rule uses, with one judge call; length scores
    (``credit_unit="length"``) come from the judged responses' texts. Correctness is the reward
    function's ``sgpo_correct``, else ``score > 0`` (the rewards' row sums, read only then)."""
    if options.credit_unit == "tokens":
        raise RuntimeError(
            "sgpo: algorithm.sgpo.credit_unit=tokens needs the policy's tokenizer in the reward function; "
            "with judge_at='advantage' use credit_unit=steps or length"
        )
    if pending.correct is not None:
        correct = pending.correct
    else:
        correct = _core.sequence_scores_core(_rewards(rewards)[0]) > 0
    rows = rows_to_judge(np.asarray(correct, dtype=bool), codes, options.mode)
    pending.judged[:] = False
    pending.first_error[:] = -2
    pending.num_steps[:] = 0
    elapsed = 0.0
    if rows.size:
        driver = driver_judge(config)
        with_reference = pending.references is not None and bool(np.any(pending.references[rows] != ""))
        judge_fn = as_judge_fn(driver.judge, "ground_truth" if with_reference else None)
        problems = [str(p) for p in pending.problems[rows]]
        responses = [str(r) for r in pending.responses[rows]]
        references = pending.references[rows] if pending.references is not None else [""] * rows.size
        judge_rows = [{"ground_truth": str(r)} for r in references]
        timeout_s = _option(config, "judge_timeout_s", DEFAULT_TIMEOUT_S)
        start = time.perf_counter()
        outcome = run_judge(judge_fn, problems, responses, judge_rows, timeout_s)
        elapsed = time.perf_counter() - start
        limit = _option(config, "judge_max_failed_steps", DEFAULT_MAX_FAILED_STEPS)
        driver.failures.record(
            outcome,
            limit,
            lambda count: (
                f"sgpo: the judge gave no verdict in {count} steps in a row (training would go "
                f"on as plain GRPO); last failure: {outcome.message} "
                f"(algorithm.sgpo.judge_max_failed_steps={limit}; null never stops)"
            ),
        )
        if outcome.message is not None:
            warnings.warn(f"sgpo_rs.verl: {outcome.message}", RuntimeWarning, stacklevel=2)
        pending.first_error[rows] = outcome.first_error
        pending.num_steps[rows] = outcome.num_steps
        pending.judged[rows] = True
    if options.credit_unit == "length":
        delimiter = getattr(driver_judge(config).judge, "delimiter", "\n\n") if rows.size else "\n\n"
        responses = [str(r) for r in pending.responses]
        pending.score = length_scores(responses, pending.first_error, delimiter=delimiter, strict=False)
    pending.metrics["sgpo/judge_time_s"] = elapsed

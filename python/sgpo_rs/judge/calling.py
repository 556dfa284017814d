"""Calling a step-wise judge from a trainer (TRL's or verl's): timeouts and validation.

A judge is either a :class:`sgpo_rs.judge.StepJudge` (``judge.judge(problems, responses)``, or
``judge.judge(problems, responses, references=...)`` for a prompted critic given reference
solutions, returning :class:`~sgpo_rs.judge.Verdict` objects) or a plain callable
``fn(problems, responses, rows)`` returning one ``(first_error, num_steps)`` pair (or ``Verdict``)
per response, where ``rows`` are the dataset rows (dicts) of those responses.

Nothing a judge does raises here: an exception, a timeout, a result of the wrong length, an
invalid verdict or a verdict carrying an error leaves the affected rows without a verdict
(``first_error = -2``), and the failure comes back to the caller (:class:`JudgeOutcome`: counts,
the first error, the exception) for the trainer to act on: warn, or stop after several judging
steps in which nothing was judged. A call past its timeout is abandoned, not cancelled: Python
cannot stop its thread, which runs to its end (and spends what a remote judge charges) while
training goes on.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .verdict import NO_ERROR, NO_VERDICT

JudgeFn = Callable[[List[str], List[str], List[Dict[str, Any]]], Sequence[Any]]


def as_judge_fn(judge: Any, reference_key: Optional[str] = None) -> JudgeFn:
    """``judge`` as ``fn(problems, responses, rows)``: a StepJudge's ``judge`` method (``rows``
    dropped) or the callable itself. With ``reference_key``, a StepJudge is given each row's
    ``row[reference_key]`` as its reference solution (it must declare ``accepts_references``, as
    the prompted critics do); a callable reads the rows itself."""
    if isinstance(judge, type):
        raise TypeError(
            f"judge: got the class {judge.__name__}, not a judge; pass an instance, "
            f"e.g. judge={judge.__name__}()"
        )
    method = getattr(judge, "judge", None)
    if callable(method):
        if reference_key is None:
            return lambda problems, responses, rows: method(problems, responses)
        if not getattr(judge, "accepts_references", False):
            raise TypeError(
                f"judge: {type(judge).__name__} does not take reference solutions (a reference column "
                f"{reference_key!r} was given); use a prompted critic (CriticJudge, OpenAIJudge, "
                f"HFJudge, or a CachedJudge of one) or drop the reference column"
            )

        def with_references(problems: List[str], responses: List[str], rows: List[Dict[str, Any]]) -> Any:
            references = [reference_text(row.get(reference_key)) for row in rows]
            return method(problems, responses, references=references)

        return with_references
    if callable(judge):
        _check_batch_signature(judge)
        return judge
    raise TypeError(
        f"judge: expected a sgpo_rs.judge.StepJudge (an object with judge(problems, responses)) or a "
        f"callable (problems, responses, rows) -> [(first_error, num_steps), ...], got {type(judge).__name__}"
    )


def _check_batch_signature(fn: Callable[..., Any]) -> None:
    """A callable judge takes ``(problems, responses, rows)``; a per-response ``fn(problem,
    response)`` passed by mistake would fail at every step, so it is refused here."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return
    try:
        signature.bind([], [], [])
    except TypeError:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise TypeError(
            f"judge: a callable judge is called as fn(problems, responses, rows) with three lists and "
            f"returns one (first_error, num_steps) per response; {name}{signature} cannot be. For a "
            f"per-response function fn(problem, response), pass CallableJudge(fn) from sgpo_rs.judge"
        ) from None


def reference_text(value: Any) -> Optional[str]:
    """A dataset cell as a reference solution: None stays None (no reference for that row)."""
    return None if value is None else str(value)


class JudgeTimeout(Exception):
    pass


def call_with_timeout(fn: Callable[[], Any], timeout_s: Optional[float]) -> Any:
    """``fn()``, or :class:`JudgeTimeout` after ``timeout_s`` seconds. The call runs in a daemon
    thread that is abandoned on timeout (Python cannot stop it; its result is discarded)."""
    if timeout_s is None:
        return fn()
    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="sgpo-judge", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise JudgeTimeout(f"no answer within sgpo_judge_timeout_s={timeout_s}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _verdict(item: Any) -> Optional[Tuple[int, int]]:
    """``(first_error, num_steps)`` of a Verdict or a pair if it is a valid verdict (a -2 is valid:
    no verdict), else ``None``."""
    if hasattr(item, "first_error") and hasattr(item, "num_steps"):
        first_error, num_steps = item.first_error, item.num_steps
    else:
        try:
            first_error, num_steps = item
        except (TypeError, ValueError):
            return None
    values = []
    for value in (first_error, num_steps):
        if isinstance(value, (bool, np.bool_)):
            return None
        if isinstance(value, (int, np.integer)):
            values.append(int(value))
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            values.append(int(value))
        else:
            return None
    first_error, num_steps = values
    if first_error == NO_VERDICT:
        return NO_VERDICT, max(num_steps, 0)
    if first_error < NO_ERROR or num_steps < 1 or first_error >= num_steps:
        return None
    return first_error, num_steps


@dataclass
class JudgeOutcome:
    """What one judge call gave: the verdicts (``first_error``/``num_steps``, int64, ``-2`` and 0
    where there is none), how many rows failed (the call raised or timed out, it returned the wrong
    number of verdicts, a verdict was invalid, or it carries an ``error`` such as the wrapped
    exception of a ``CallableJudge``), a one-line ``message`` with the counts and the first error
    (None when nothing failed), and the exception the call raised, if it did."""

    first_error: np.ndarray
    num_steps: np.ndarray
    failed: int = 0
    message: Optional[str] = None
    exception: Optional[BaseException] = None

    @property
    def all_failed(self) -> bool:
        """Every row of a non-empty call failed: the judge gave nothing this time."""
        return self.failed > 0 and self.failed == self.first_error.shape[0]


@dataclass
class FailureStreak:
    """How many judge calls in a row gave nothing (every row failed); the trainers stop the run
    after ``limit`` of them instead of letting it go on as plain GRPO."""

    count: int = 0

    def record(self, outcome: JudgeOutcome, limit: Optional[int], message: Callable[[int], str]) -> None:
        """Counts ``outcome``; at ``limit`` in a row (None: never) raises ``RuntimeError`` with
        ``message(count)``, chained to the judge's exception."""
        self.count = self.count + 1 if outcome.all_failed else 0
        if limit is not None and self.count >= limit:
            raise RuntimeError(message(self.count)) from outcome.exception


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_judge(
    fn: JudgeFn,
    problems: List[str],
    responses: List[str],
    rows: List[Dict[str, Any]],
    timeout_s: Optional[float],
) -> JudgeOutcome:
    """Judge ``responses`` in one call; never raises (see :class:`JudgeOutcome`)."""
    n = len(responses)
    first_error = np.full(n, NO_VERDICT, dtype=np.int64)
    num_steps = np.zeros(n, dtype=np.int64)
    try:
        result = call_with_timeout(lambda: fn(problems, responses, rows), timeout_s)
        result = list(result)
    except Exception as exc:  # noqa: BLE001 - a failing judge must never crash the step
        message = f"the judge failed on all {n} responses ({type(exc).__name__}: {exc})"
        return JudgeOutcome(first_error, num_steps, n, message, exc)
    if len(result) != n:
        message = (
            f"the judge returned {len(result)} verdicts for {n} responses; all {n} treated as not judged"
        )
        return JudgeOutcome(first_error, num_steps, n, message)
    invalid, errors, first_bad, first_error_text = 0, 0, None, None
    for i, item in enumerate(result):
        verdict = _verdict(item)
        if verdict is None:
            invalid += 1
            first_bad = first_bad if first_bad is not None else (i, item)
            continue
        first_error[i], num_steps[i] = verdict
        # A verdict-less result with an error is the judge failing; one on a response without
        # steps (an empty completion) is not.
        error = getattr(item, "error", None)
        if verdict[0] == NO_VERDICT and error and verdict[1] > 0:
            errors += 1
            first_error_text = first_error_text or str(error)
    failed = invalid + errors
    if not failed:
        return JudgeOutcome(first_error, num_steps)
    parts = []
    if errors:
        parts.append(f"{errors} of {n} verdicts carry an error (first: {first_error_text})")
    if invalid:
        row, item = first_bad  # type: ignore[misc]
        parts.append(
            f"{invalid} of {n} verdicts are invalid (expected (first_error, num_steps) with first_error "
            f"-2, -1 or a step index below num_steps >= 1; got {_shown(item)} for response {row})"
        )
    message = "; ".join(parts) + "; those rows are treated as not judged"
    return JudgeOutcome(first_error, num_steps, failed, message)

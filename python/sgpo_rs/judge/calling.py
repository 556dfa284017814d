"""Calling a step-wise judge from a trainer (TRL's or verl's): timeouts and validation.

A judge is either a :class:`sgpo_rs.judge.StepJudge` (``judge.judge(problems, responses)``, or
``judge.judge(problems, responses, references=...)`` for a prompted critic given reference
solutions, returning :class:`~sgpo_rs.judge.Verdict` objects) or a plain callable
``fn(problems, responses, rows)`` returning one ``(first_error, num_steps)`` pair (or ``Verdict``)
per response, where ``rows`` are the dataset rows (dicts) of those responses.

Nothing a judge does raises here: an exception, a timeout, a result of the wrong length or an
invalid verdict leaves the affected rows without a verdict (``first_error = -2``), and the
failure is reported back to the caller as one message, for the trainer to act on.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .verdict import NO_ERROR, NO_VERDICT

JudgeFn = Callable[[List[str], List[str], List[Dict[str, Any]]], Sequence[Any]]


def as_judge_fn(judge: Any, reference_key: Optional[str] = None) -> JudgeFn:
    """``judge`` as ``fn(problems, responses, rows)``: a StepJudge's ``judge`` method (``rows``
    dropped) or the callable itself. With ``reference_key``, a StepJudge is given each row's
    ``row[reference_key]`` as its reference solution (it must declare ``accepts_references``, as
    the prompted critics do); a callable reads the rows itself."""
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
        return judge
    raise TypeError(
        f"judge: expected a sgpo_rs.judge.StepJudge (an object with judge(problems, responses)) or a "
        f"callable (problems, responses, rows) -> [(first_error, num_steps), ...], got {type(judge).__name__}"
    )


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


def run_judge(
    fn: JudgeFn,
    problems: List[str],
    responses: List[str],
    rows: List[Dict[str, Any]],
    timeout_s: Optional[float],
) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """Judge ``responses`` in one call. Returns ``first_error`` and ``num_steps`` (int64, one per
    response; ``-2`` and 0 where there is no verdict) and a failure message (``None`` if the call
    succeeded and every verdict was valid)."""
    n = len(responses)
    first_error = np.full(n, NO_VERDICT, dtype=np.int64)
    num_steps = np.zeros(n, dtype=np.int64)
    try:
        result = call_with_timeout(lambda: fn(problems, responses, rows), timeout_s)
        result = list(result)
    except Exception as exc:  # noqa: BLE001 - a failing judge must never stop training
        return first_error, num_steps, f"the judge failed on {n} responses ({type(exc).__name__}: {exc})"
    if len(result) != n:
        return (
            first_error,
            num_steps,
            f"the judge returned {len(result)} verdicts for {n} responses; all {n} treated as not judged",
        )
    invalid = 0
    for i, item in enumerate(result):
        verdict = _verdict(item)
        if verdict is None:
            invalid += 1
            continue
        first_error[i], num_steps[i] = verdict
    message = None
    if invalid:
        message = (
            f"the judge returned {invalid} invalid verdicts of {n} (expected first_error -2, -1 or a step "
            f"index below num_steps >= 1); those rows are treated as not judged"
        )
    return first_error, num_steps, message

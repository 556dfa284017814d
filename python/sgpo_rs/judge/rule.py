"""Judges without a model: an exact checker for arithmetic chains, and any Python function.

The arithmetic-chain format (what :mod:`sgpo_rs.judge.synthetic` generates):

- Problem: ``"Start from 7 and apply these operations in order, ...: + 5, * 3, - 4."`` - the
  start value after ``Start from`` and the operations as ``op operand`` items after the colon,
  ``op`` one of ``+ - *``, integers only.
- Response: one step per paragraph (blank-line separated), each ``a op b = c`` (``x`` or ``×``
  also mean ``*``; an optional ``Step k:`` prefix is allowed), carrying the running value: the
  ``a`` of each step is the ``c`` of the step before, and of step 0 the start value.

Step ``i`` is right when it parses, ``a`` is the true running value, ``op b`` is the problem's
``i``-th operation and ``c = a op b``. The verdict is the first step that is not right (unparsable
steps, and steps beyond the last operation, count as wrong), or ``-1``. A chain that stops before
the last operation has its last step wrong: it presents an intermediate value as the result. If
the problem does not parse, only the chain's own consistency is checked (every ``a`` equals the
previous ``c``, and ``c = a op b``).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, List, Optional, Tuple

from ..text import split_steps
from .verdict import NO_ERROR, NO_VERDICT, Verdict, missing

Operation = Tuple[str, int]

_STEP = re.compile(
    r"^\s*(?:(?:step\s+\d+\s*[:.])\s*)?(-?\d+)\s*([-+*x×])\s*(-?\d+)\s*=\s*(-?\d+)\s*\.?\s*$", re.IGNORECASE
)
_START = re.compile(r"start\s+from\s+(-?\d+)", re.IGNORECASE)
_OP = re.compile(r"([-+*x×])\s*(-?\d+)")


def apply(a: int, op: str, b: int) -> int:
    """``a op b`` for ``op`` in ``+ - *`` (``x``, ``×`` mean ``*``)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _canonical(op: str) -> str:
    return "*" if op in ("x", "X", "×") else op


def parse_step(step: str) -> Optional[Tuple[int, str, int, int]]:
    """``(a, op, b, c)`` of a step ``a op b = c``, or ``None``."""
    m = _STEP.match(step)
    if m is None:
        return None
    return int(m.group(1)), _canonical(m.group(2)), int(m.group(3)), int(m.group(4))


def parse_problem(problem: str) -> Optional[Tuple[int, List[Operation]]]:
    """``(start, [(op, operand), ...])`` of a chain problem, or ``None``."""
    start = _START.search(problem)
    if start is None or ":" not in problem[start.end() :]:
        return None
    ops = _OP.findall(problem[start.end() :].split(":", 1)[1])
    if not ops:
        return None
    return int(start.group(1)), [(_canonical(op), int(b)) for op, b in ops]


def check_chain(problem: str, steps: List[str]) -> Tuple[int, str]:
    """The first wrong step of an arithmetic chain (``-1``: none) and the reason."""
    spec = parse_problem(problem)
    value = spec[0] if spec else None
    for i, step in enumerate(steps):
        parsed = parse_step(step)
        if parsed is None:
            return i, f"step {i}: not of the form 'a op b = c'"
        a, op, b, c = parsed
        if value is not None and a != value:
            return i, f"step {i}: starts from {a}, the running value is {value}"
        if spec is not None:
            if i >= len(spec[1]):
                return i, f"step {i}: the problem has only {len(spec[1])} operations"
            if (op, b) != spec[1][i]:
                return i, f"step {i}: applies {op} {b}, the problem says {spec[1][i][0]} {spec[1][i][1]}"
        if apply(a, op, b) != c:
            return i, f"step {i}: {a} {op} {b} = {apply(a, op, b)}, not {c}"
        value = c
    if spec is not None and 0 < len(steps) < len(spec[1]):
        return len(steps) - 1, f"stops after {len(steps)} of {len(spec[1])} operations"
    return NO_ERROR, "all steps right"


class RuleJudge:
    """Exact :class:`~sgpo_rs.judge.StepJudge` for arithmetic chains (format in the module doc).

    ``raw`` of each verdict is the reason. An empty response has no verdict.
    """

    identity = "rule:arithmetic-chain-v1"

    def __init__(self, delimiter: str = "\n\n") -> None:
        self.delimiter = delimiter

    def judge(self, problems: List[str], responses: List[str]) -> List[Verdict]:
        out = []
        for problem, response in zip(problems, responses):
            start = time.perf_counter()
            steps = split_steps(response, delimiter=self.delimiter)
            if not steps:
                out.append(missing(0, "empty response: no steps"))
                continue
            k, reason = check_chain(problem, steps)
            out.append(Verdict(k, len(steps), raw=reason, latency_s=time.perf_counter() - start))
        return out


class CallableJudge:
    """Any ``fn(problem, response)`` as a :class:`~sgpo_rs.judge.StepJudge`; never raises.

    ``fn`` returns ``(first_error, num_steps)`` or a :class:`Verdict`. An exception, or a result
    that is not a valid verdict (``first_error < -2``, ``first_error >= num_steps``), becomes a
    missing verdict (``-2``) with ``error`` set.

    Args:
        fn: the judging function.
        identity: cache key; defaults to ``"callable:<module>.<qualname>"``.
        delimiter: how ``num_steps`` of a failed call is counted.
    """

    def __init__(
        self,
        fn: Callable[[str, str], Any],
        identity: Optional[str] = None,
        *,
        delimiter: str = "\n\n",
    ) -> None:
        self.fn, self.delimiter = fn, delimiter
        if identity is None:
            name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
            identity = f"callable:{getattr(fn, '__module__', None) or '?'}.{name}"
        self.identity = identity

    def _steps(self, response: str) -> int:
        try:
            return len(split_steps(response, delimiter=self.delimiter))
        except Exception:  # noqa: BLE001
            return 0

    def judge(self, problems: List[str], responses: List[str]) -> List[Verdict]:
        out = []
        for problem, response in zip(problems, responses):
            start = time.perf_counter()
            try:
                result = self.fn(problem, response)
                latency = time.perf_counter() - start
                if isinstance(result, Verdict):
                    verdict = result
                    if verdict.latency_s == 0.0:
                        verdict = Verdict(
                            verdict.first_error, verdict.num_steps, verdict.raw, latency, verdict.error
                        )
                else:
                    first_error, num_steps = result
                    if isinstance(first_error, bool) or isinstance(num_steps, bool):
                        raise TypeError("first_error and num_steps must be ints, not bools")
                    verdict = Verdict(int(first_error), int(num_steps), latency_s=latency)
                bad = verdict.first_error < NO_VERDICT or verdict.num_steps < 0
                if not bad and verdict.first_error >= 0 and verdict.first_error >= verdict.num_steps:
                    bad = True
                if bad:
                    verdict = missing(
                        max(verdict.num_steps, 0),
                        f"invalid verdict first_error={verdict.first_error}, num_steps={verdict.num_steps}",
                        latency_s=latency,
                    )
            except Exception as exc:  # noqa: BLE001 - a failing judge is a missing verdict
                verdict = missing(
                    self._steps(response),
                    f"{type(exc).__name__}: {exc}",
                    latency_s=time.perf_counter() - start,
                )
            out.append(verdict)
        return out

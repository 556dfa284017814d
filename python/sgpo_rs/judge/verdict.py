"""What a step-wise judge returns, and the protocol every judge backend implements.

A judge reads a problem and a response, splits the response into steps (``sgpo_rs.split_steps``,
ProcessBench paragraphs) and reports the index of the earliest wrong step: the ``first_error`` of
:func:`sgpo_rs.sgpo_rewards`. ``-1`` means the judge found no wrong step; ``-2`` means there is no
verdict (the judge failed, timed out, or its answer had no parsable index): such a row is never
guessed, and its group stays plain GRPO.

A backend (rule-based checker, prompted critic model, PRM) only has to provide ``identity`` and
``judge``; caching (:class:`sgpo_rs.judge.CachedJudge`), the command line and evaluation work on
any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

NO_ERROR = -1
"""``first_error`` when the judge found no wrong step."""
NO_VERDICT = -2
"""``first_error`` when there is no verdict (not judged, or the judge failed)."""


@dataclass(frozen=True)
class Verdict:
    """One judged response.

    Attributes:
        first_error: 0-based index of the earliest wrong step; ``-1`` none found; ``-2`` no verdict.
        num_steps: steps of the response as the judge saw them (``len(split_steps(response))``).
        raw: the judge's raw answer (a critic's text; a rule judge's reason), for auditing.
        latency_s: seconds spent judging this response (a batch's time shared out evenly).
        error: why there is no verdict (an exception, an unparsable answer); ``None`` otherwise.
    """

    first_error: int
    num_steps: int
    raw: str = ""
    latency_s: float = 0.0
    error: Optional[str] = None

    @property
    def has_verdict(self) -> bool:
        """True when ``first_error >= -1``."""
        return self.first_error >= NO_ERROR

    @property
    def credit(self) -> Optional[float]:
        """Prefix credit ``first_error / num_steps`` (``1`` for ``-1``); ``None`` without a verdict."""
        return prefix_credit(self.first_error, self.num_steps)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Verdict:
        return cls(
            first_error=int(data["first_error"]),
            num_steps=int(data["num_steps"]),
            raw=str(data.get("raw") or ""),
            latency_s=float(data.get("latency_s") or 0.0),
            error=data.get("error"),
        )


def missing(
    num_steps: int = 0, error: Optional[str] = None, raw: str = "", latency_s: float = 0.0
) -> Verdict:
    """A verdict-less result (``first_error = -2``)."""
    return Verdict(NO_VERDICT, num_steps, raw=raw, latency_s=latency_s, error=error)


def prefix_credit(first_error: int, num_steps: int) -> Optional[float]:
    """The SGPO prefix credit of a verdict (docs/design.md): ``first_error / num_steps``, ``1.0`` for
    ``-1``, ``None`` for no verdict (``first_error < -1``, or a step index without steps)."""
    if first_error == NO_ERROR:
        return 1.0
    if first_error < NO_ERROR or num_steps < 1 or first_error >= num_steps:
        return None
    return first_error / num_steps


@runtime_checkable
class StepJudge(Protocol):
    """The judge protocol.

    ``identity`` names the judge and everything that changes its verdicts (model, decoding
    settings, threshold); it is part of the cache key, so change it when the verdicts would change.
    ``judge`` returns one :class:`Verdict` per ``(problem, response)`` pair, in order, and should
    not raise for a single bad response: it returns a verdict with ``first_error = -2`` and
    ``error`` set instead. A judge that can use reference solutions (the prompted critics) sets
    ``accepts_references = True`` and takes ``judge(problems, responses, references=...)``, one
    reference text or None per response; the trainers and the CLI pass them only to such judges.
    """

    identity: str

    def judge(self, problems: List[str], responses: List[str]) -> List[Verdict]: ...

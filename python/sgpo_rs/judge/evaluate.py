"""ProcessBench evaluation of a step-wise judge.

ProcessBench scores a critic on two accuracies: on erroneous samples (``label >= 0``) the
predicted first error must equal the label exactly; on correct samples (``label = -1``) the
prediction must be ``-1``. The score is F1, their harmonic mean. A missing verdict (``-2``) is a
wrong prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from .verdict import NO_VERDICT, StepJudge, Verdict


@dataclass(frozen=True)
class ProcessBenchScore:
    """Accuracies are in ``[0, 1]`` (NaN when the set has no sample of that kind)."""

    error_accuracy: float
    correct_accuracy: float
    f1: float
    num_error: int
    num_correct: int
    num_missing: int

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def processbench_score(labels: Sequence[int], predictions: Sequence[int]) -> ProcessBenchScore:
    """Accuracy on erroneous samples, on correct samples, and their harmonic mean (F1)."""
    if len(labels) != len(predictions):
        raise ValueError(f"predictions: expected {len(labels)} (one per label), got {len(predictions)}")
    err = [p == y for y, p in zip(labels, predictions) if y >= 0]
    ok = [p == -1 for y, p in zip(labels, predictions) if y == -1]
    a = sum(err) / len(err) if err else math.nan
    b = sum(ok) / len(ok) if ok else math.nan
    if math.isnan(a) or math.isnan(b):
        f1 = math.nan
    else:
        f1 = 0.0 if a + b == 0 else 2 * a * b / (a + b)
    missing = sum(p <= NO_VERDICT for p in predictions)
    return ProcessBenchScore(a, b, f1, len(err), len(ok), missing)


def record_response(record: Dict[str, Any]) -> str:
    """A record's response: ``response``, else its ``steps`` joined by blank lines."""
    if "response" in record:
        return str(record["response"])
    return "\n\n".join(str(s) for s in record["steps"])


def evaluate(
    judge: StepJudge, records: List[Dict[str, Any]], *, batch_size: int = 64
) -> Tuple[ProcessBenchScore, List[Verdict]]:
    """Judge every record (``problem``, ``response`` or ``steps``, ``label``) and score it."""
    verdicts: List[Verdict] = []
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        verdicts += judge.judge([str(r["problem"]) for r in batch], [record_response(r) for r in batch])
    labels = [int(r["label"]) for r in records]
    return processbench_score(labels, [v.first_error for v in verdicts]), verdicts

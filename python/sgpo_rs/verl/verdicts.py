"""How the judge's verdicts reach the ``sgpo`` estimator.

verl calls a registered advantage estimator with rewards, mask, uids and config only; the verdicts
travel as reward extra info (``sgpo_correct``, ``sgpo_first_error``, ``sgpo_num_steps``, ``sgpo_judged``
per row, see :func:`sgpo_rs.verl.make_compute_score`), which verl keeps beside the batch but does not
pass on. The trainer glue (:mod:`sgpo_rs.verl.trainers`) reads them where the trainer holds them
and makes them *pending* for the duration of the advantage call; the estimator takes them from here
and leaves its metrics here for the glue to log."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

CORRECT = "sgpo_correct"
FIRST_ERROR = "sgpo_first_error"
NUM_STEPS = "sgpo_num_steps"
JUDGED = "sgpo_judged"
# The length-based score (``credit_unit="length"``), NaN where there is no verdict.
SCORE = "sgpo_score"
# Judging deferred to the advantage step (``judge_at="advantage"``): the texts the judge will see.
PROBLEM = "sgpo_problem"
RESPONSE = "sgpo_response"
REFERENCE = "sgpo_reference"
KEYS = (CORRECT, FIRST_ERROR, NUM_STEPS, JUDGED, SCORE, PROBLEM, RESPONSE, REFERENCE)


@dataclass
class PendingVerdicts:
    """One batch's verdicts, row-aligned with the rewards the estimator will get. ``correct`` None
    means ``score > 0``. ``problems``/``responses``/``references`` (object arrays) are set when the
    reward function deferred judging to the advantage step (:mod:`sgpo_rs.verl.deferred`)."""

    correct: Optional[np.ndarray]
    first_error: np.ndarray
    num_steps: np.ndarray
    judged: np.ndarray
    score: Optional[np.ndarray] = None
    problems: Optional[np.ndarray] = None
    responses: Optional[np.ndarray] = None
    references: Optional[np.ndarray] = None
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def deferred(self) -> bool:
        """The judge has not run yet: the estimator judges the rows it needs."""
        return self.responses is not None

    def __len__(self) -> int:
        return int(self.first_error.shape[0])

    def select(self, rows: np.ndarray) -> PendingVerdicts:
        """The verdicts of ``rows`` only (fresh metrics)."""

        def pick(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
            return None if array is None else array[rows]

        return PendingVerdicts(
            correct=pick(self.correct),
            first_error=self.first_error[rows],
            num_steps=self.num_steps[rows],
            judged=self.judged[rows],
            score=pick(self.score),
            problems=pick(self.problems),
            responses=pick(self.responses),
            references=pick(self.references),
        )

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> Optional[PendingVerdicts]:
        """From verl's ``non_tensor_batch`` (one array per extra key); None if the keys are absent."""
        if FIRST_ERROR not in columns or NUM_STEPS not in columns:
            return None
        first_error = _ints(FIRST_ERROR, columns[FIRST_ERROR])
        correct = columns.get(CORRECT)
        judged = columns.get(JUDGED)
        score = columns.get(SCORE)
        texts = {name: _texts(key, columns.get(key)) for name, key in _TEXT_FIELDS}
        if texts["responses"] is not None and texts["problems"] is None:
            raise ValueError(f"{PROBLEM}: the reward extra info has {RESPONSE} but not {PROBLEM}")
        return cls(
            correct=None if correct is None else np.asarray(correct).astype(bool),
            first_error=first_error,
            num_steps=_ints(NUM_STEPS, columns[NUM_STEPS]),
            judged=(first_error >= -1) if judged is None else np.asarray(judged).astype(bool),
            score=None if score is None else np.asarray(score, dtype=np.float64).reshape(-1),
            **texts,
        )

    @classmethod
    def from_infos(cls, infos: List[Mapping[str, Any]]) -> Optional[PendingVerdicts]:
        """From per-row reward extra info dicts (verl's v1 trainer keeps them per sample)."""
        if not infos or not all(FIRST_ERROR in info for info in infos):
            return None
        columns = {key: np.array([info.get(key) for info in infos]) for key in KEYS if key in infos[0]}
        return cls.from_columns(columns)


_TEXT_FIELDS = (("problems", PROBLEM), ("responses", RESPONSE), ("references", REFERENCE))


def _texts(name: str, values: Any) -> Optional[np.ndarray]:
    """One text per row as an object array (verl may hold them as ``<U`` or object arrays)."""
    if values is None:
        return None
    array = np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise TypeError(f"{name}: expected one text per row, got shape {array.shape}")
    return array


def _ints(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iub":
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name}: expected one integer per row, got {array.dtype} {array.shape}"
            ) from None
        if array.ndim != 1 or not np.all(array == np.round(array)):
            raise TypeError(f"{name}: expected one integer per row, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


_pending: contextvars.ContextVar[Optional[PendingVerdicts]] = contextvars.ContextVar(
    "sgpo_rs_pending_verdicts", default=None
)


@contextlib.contextmanager
def pending(verdicts: Optional[PendingVerdicts]) -> Iterator[Optional[PendingVerdicts]]:
    """Make ``verdicts`` the ones the ``sgpo`` estimator reads until the block ends."""
    token = _pending.set(verdicts)
    try:
        yield verdicts
    finally:
        _pending.reset(token)


def current() -> Optional[PendingVerdicts]:
    return _pending.get()

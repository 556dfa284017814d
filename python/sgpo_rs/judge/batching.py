"""Batching for local model backends: longest inputs first, one failure per batch."""

from __future__ import annotations

from typing import Callable, List, Sequence, TypeVar, Union

R = TypeVar("R")


def by_length(
    texts: Sequence[str],
    batch_size: int,
    run: Callable[[List[str]], Sequence[Union[R, BaseException]]],
    failure: Callable[[str], BaseException],
) -> List[Union[R, BaseException]]:
    """``run`` over batches of ``texts`` sorted longest first (similar lengths pad little), the
    results back in input order. A batch that raises gives ``failure(reason)`` for each of its
    rows, so one bad batch costs only its own verdicts."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: List[Union[R, BaseException]] = [failure("not run")] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        try:
            results = list(run([texts[i] for i in rows]))
        except Exception as exc:  # noqa: BLE001 - this batch's verdicts are missing
            results = [failure(f"{type(exc).__name__}: {exc}")] * len(rows)
        for i, result in zip(rows, results):
            out[i] = result
    return out

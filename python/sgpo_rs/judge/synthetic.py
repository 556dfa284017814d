"""A synthetic ProcessBench-format set: arithmetic chains with mistakes at known steps.

Each record: ``{"id", "problem", "steps", "response", "label", "correct"}``; ``response`` is the
steps joined by blank lines, ``label`` the first wrong step (``-1``: every step right, as in
ProcessBench), ``correct`` whether the final value is the true result (a chain can be wrong on the
way and right at the end). The format is the one :class:`~sgpo_rs.judge.RuleJudge` checks
exactly, so the rule judge scores F1 = 1 on it; a model judge's score on it measures how well it
follows simple arithmetic.

After an injected mistake the chain carries on from the wrong value (as a real solution would).
Mistakes: a wrong result, a wrong operand, a wrong operator, a miscopied running value.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import numpy as np

from .rule import apply

OPS = ("+", "-", "*")
MISTAKES = ("result", "operand", "operator", "carry")


def _operand(rng: np.random.Generator, op: str) -> int:
    return int(rng.integers(2, 6)) if op == "*" else int(rng.integers(1, 20))


def make_record(
    rng: np.random.Generator, index: int, *, min_steps: int = 2, max_steps: int = 6, error_rate: float = 0.6
) -> Dict[str, Any]:
    """One chain; with probability ``error_rate`` a mistake at a uniformly drawn step."""
    n = int(rng.integers(min_steps, max_steps + 1))
    start = int(rng.integers(1, 30))
    ops = [str(rng.choice(OPS)) for _ in range(n)]
    operands = [_operand(rng, op) for op in ops]
    label = int(rng.integers(0, n)) if rng.random() < error_rate else -1
    steps, value, true_value = [], start, start
    for i, (op, b) in enumerate(zip(ops, operands)):
        a, use_op, use_b, wrong_result = value, op, b, 0
        if i == label:
            kind = str(rng.choice(MISTAKES))
            delta = int(rng.integers(1, 5)) * (1 if rng.random() < 0.5 else -1)
            if kind == "result":
                wrong_result = delta
            elif kind == "operand":
                use_b = b + delta
            elif kind == "operator":
                use_op = str(rng.choice([o for o in OPS if o != op]))
            else:  # "carry": the running value miscopied
                a = value + delta
        c = apply(a, use_op, use_b) + wrong_result
        steps.append(f"{a} {use_op} {use_b} = {c}")
        value, true_value = c, apply(true_value, op, b)
    items = ", ".join(f"{op} {b}" for op, b in zip(ops, operands))
    problem = (
        f"Start from {start} and apply these operations in order, one per paragraph, writing each "
        f"as 'a op b = c': {items}."
    )
    return {
        "id": f"synthetic-{index}",
        "problem": problem,
        "steps": steps,
        "response": "\n\n".join(steps),
        "label": label,
        "correct": value == true_value,
    }


def make_synthetic(num: int, *, seed: int = 0, **options: Any) -> List[Dict[str, Any]]:
    """``num`` records from ``numpy.random.default_rng(seed)`` (same seed, same set)."""
    rng = np.random.default_rng(seed)
    return [make_record(rng, i, **options) for i in range(num)]


def write_jsonl(records: List[Dict[str, Any]], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

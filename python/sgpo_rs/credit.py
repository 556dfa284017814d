"""The credit rule's options, defined once for numpy, torch, TRL, verl and the CLI.

A wrong response with trajectory score ``c`` in ``[0, 1]`` (how far it got before its first wrong
step) receives ``credit_scale * f(c)`` in a diversified group:

- ``rule="prefix"`` (the default): ``f(c) = c``.
- ``rule="logistic"``: ``f(c) = sigma(beta * (c - gamma)) = 1 / (1 + exp(-beta * (c - gamma)))``,
  ``beta > 0`` the steepness, ``gamma`` the score that earns half the credit.

``preset="paper"`` sets the paper's values in one word: the logistic rule with ``beta = 5``,
``gamma = 0.5`` and ``credit_scale = 1``, so that on 0/1 rewards a wrong response's reward becomes
``sigma(5 (c - 0.5))`` in place of 0 (between 0.076 and 0.924). Options given explicitly win over
the preset's. On other reward scales the credit is still added to the outcome reward: with -1/1
rewards and ``credit_scale = 1`` a wrong response moves from -1 to ``-1 + sigma(..)``, still below
every right one; in mode ``"all_incorrect"`` keep ``credit_scale`` below the margin between right
and wrong rewards.

The Rust core checks the values (``beta`` finite and > 0, ``gamma`` finite) and applies the rule;
this module only resolves defaults and presets, so every entry point reads the same options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _arrays, _core
from .text import step_spans

RULES = ("prefix", "logistic")
DEFAULTS: Dict[str, Any] = {"credit_scale": 0.5, "rule": "prefix", "beta": 5.0, "gamma": 0.5}
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {"credit_scale": 1.0, "rule": "logistic", "beta": 5.0, "gamma": 0.5},
}


@dataclass(frozen=True)
class CreditOptions:
    """Resolved credit options: how much a score adds to a wrong response's reward."""

    credit_scale: float = DEFAULTS["credit_scale"]
    rule: str = DEFAULTS["rule"]
    beta: float = DEFAULTS["beta"]
    gamma: float = DEFAULTS["gamma"]

    @classmethod
    def resolve(
        cls,
        preset: Optional[str] = None,
        *,
        credit_scale: Any = None,
        rule: Any = None,
        beta: Any = None,
        gamma: Any = None,
        prefix: str = "",
    ) -> CreditOptions:
        """Each option from its argument, else the preset, else the default; checked by the core.
        ``prefix`` is put before the option names in errors (``"sgpo_"`` for ``SGPOConfig``)."""
        if preset is not None and preset not in PRESETS:
            raise ValueError(
                f"{prefix}preset: expected one of {', '.join(map(repr, PRESETS))} or None, got {preset!r}"
            )
        values = dict(DEFAULTS, **(PRESETS[preset] if preset else {}))
        given = {"credit_scale": credit_scale, "rule": rule, "beta": beta, "gamma": gamma}
        values.update({k: v for k, v in given.items() if v is not None})
        scale = _arrays.real(prefix + "credit_scale", values["credit_scale"])
        if not (scale >= 0 and scale < float("inf")):
            raise ValueError(f"{prefix}credit_scale: expected a finite value >= 0, got {scale}")
        name = _arrays.choice(prefix + "rule", values["rule"])
        b = _arrays.real(prefix + "beta", values["beta"])
        g = _arrays.real(prefix + "gamma", values["gamma"])
        try:
            _core.credit_rule_apply(np.zeros(0), name, b, g)
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None
        return cls(credit_scale=scale, rule=name, beta=b, gamma=g)

    def rule_kwargs(self) -> Dict[str, Any]:
        """``rule``, ``beta``, ``gamma`` as the core's reward functions take them."""
        return {"rule": self.rule, "beta": self.beta, "gamma": self.gamma}

    def apply(self, scores: Any) -> np.ndarray:
        """``f(c)`` of each score (float64), the Rust core's own evaluation."""
        return _core.credit_rule_apply(np.asarray(scores, dtype=np.float64).reshape(-1), **self.rule_kwargs())

    def bonus(self, scores: Any) -> np.ndarray:
        """``credit_scale * f(c)``: what a credited row's reward gains (float64)."""
        return self.credit_scale * self.apply(scores)


# --- scores by length ---------------------------------------------------------------------------

UNITS = ("steps", "length", "tokens")


def length_scores(
    responses: Sequence[str], first_error: Any, *, delimiter: str = "\n\n", strict: bool = True
) -> np.ndarray:
    """Trajectory scores by length: for each response, the characters of its steps before the
    first wrong one over the characters of all its steps (``sgpo_rs.step_spans`` with the judge's
    ``delimiter``; separators do not count). ``first_error = -1`` (no wrong step) scores 1, ``-2``
    (not judged) NaN, so the result feeds ``sgpo_rewards(credit=...)`` directly. The step-count
    score ``first_error / num_steps`` treats a one-line step like a page of algebra; this one
    weighs each step by its length, as the paper's trajectory score is described.

    Raises ``ValueError`` naming the row when ``first_error`` is not a step of that response (the
    judge split it differently) or a response has no steps; with ``strict=False`` such a row
    scores NaN (not judged) instead.
    """
    return _prefix_shares(
        responses,
        first_error,
        lambda row, spans: [end - start for start, end in spans],
        delimiter,
        strict,
    )


def token_length_scores(
    responses: Sequence[str],
    first_error: Any,
    offsets: Sequence[Sequence[Any]],
    *,
    delimiter: str = "\n\n",
    strict: bool = True,
) -> np.ndarray:
    """:func:`length_scores` counting tokens instead of characters: a token belongs to the step
    its first character falls in (tokens of the separators belong to none). ``offsets[i]`` are the
    ``(start, end)`` character offsets of response ``i``'s tokens, as a fast tokenizer returns them
    (:func:`tokenizer_offsets`). A response whose steps hold no token scores 0."""
    if len(offsets) != len(responses):
        raise ValueError(f"offsets: expected one per response ({len(responses)}), got {len(offsets)}")

    def tokens_per_step(row: int, spans: Sequence[Tuple[int, int]]) -> list:
        starts = np.array([int(span[0]) for span in offsets[row]], dtype=np.int64)
        return [int(np.count_nonzero((starts >= a) & (starts < b))) for a, b in spans]

    return _prefix_shares(responses, first_error, tokens_per_step, delimiter, strict)


def _prefix_shares(
    responses: Sequence[str],
    first_error: Any,
    step_sizes: Callable[[int, Sequence[Tuple[int, int]]], Sequence[int]],
    delimiter: str,
    strict: bool,
) -> np.ndarray:
    """For each response: the summed sizes of its steps before the first wrong one over the sizes
    of all its steps; ``step_sizes(row, spans)`` sizes the steps of row ``row`` from their
    character spans. 1 for ``-1``, NaN for ``-2`` (and, without ``strict``, for a verdict that
    names no step of the response)."""
    k = np.asarray(first_error, dtype=np.int64).reshape(-1)
    if len(responses) != k.shape[0]:
        raise ValueError(f"first_error: expected one per response ({len(responses)}), got {k.shape[0]}")
    out = np.full(k.shape[0], np.nan)
    for row, (text, first) in enumerate(zip(responses, k)):
        if first == -2:
            continue
        if first == -1:
            out[row] = 1.0
            continue
        spans = step_spans(text, delimiter=delimiter)
        if not spans or not 0 <= first < len(spans):
            if not strict:
                continue
            raise ValueError(
                f"first_error: expected -2, -1 or a step index below the response's {len(spans)} steps, "
                f"got {first} at row {row}"
            )
        sizes = step_sizes(row, spans)
        total = sum(sizes)
        out[row] = sum(sizes[:first]) / total if total > 0 else 0.0
    return out


def tokenizer_offsets(tokenizer: Any, texts: Sequence[str]) -> list:
    """The ``(start, end)`` character offsets of each text's tokens, from a fast (Rust) tokenizer
    of the transformers library, without special tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"tokenizer: counting tokens needs a fast tokenizer (one that returns offsets), got "
            f"{type(tokenizer).__name__}"
        )
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [list(spans) for spans in encoded["offset_mapping"]]

"""Text kernels of the step-wise judge: split a response into steps, and read the judge's verdict.

Conventions (ProcessBench; the Qwen PRMs): a response's steps are its paragraphs, separated by
blank lines, indexed from 0. A critic answers with the index of the earliest wrong step, or ``-1``
if every step is right, inside ``\\boxed{}``; that index is the ``first_error`` of
:func:`sgpo_rs.sgpo_rewards`. A PRM scores each step instead: :func:`first_error_from_scores`.

    steps = sg.split_steps(response)                      # show these to the judge
    k = sg.parse_verdict(judge_answer, num_steps=len(steps))
    first_error = -2 if k is None else k                  # -2: not judged, the group stays GRPO

Offsets are character offsets into the Python string (``text[start:end]`` is the step).
"Whitespace" means Unicode ``White_Space`` (``str.isspace`` also counts ``\\x1c``-``\\x1f``; these
functions do not).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from . import _arrays, _core

PARAGRAPHS = "\n\n"
"""The default delimiter: paragraphs separated by blank lines."""
MARKERS = "markers"
"""The delimiter that starts a step at every line beginning with ``Step k:``."""

_T = TypeVar("_T")


def split_steps(text: str, *, delimiter: str = PARAGRAPHS) -> List[str]:
    """The steps of ``text``, in order.

    Args:
        text: a response.
        delimiter: ``"\\n\\n"`` (default): paragraphs. A run of two or more line breaks separates
            steps, ``"\\r\\n"`` counting as ``"\\n"``; a line of spaces does not (as in
            ``text.split("\\n\\n")``).
            ``"markers"``: a step starts at each line beginning with ``Step k:`` (case-insensitive,
            optionally indented or in markdown ``#``/``**``, e.g. ``"### Step 2:"``,
            ``"**Step 2:**"``); text before the first marker is a step of its own.
            Any other non-empty string: a literal separator (``"<extra_0>"``, ``"\\n"``).

    Every step has its trailing whitespace and its leading line breaks removed, and steps left
    empty are dropped: empty or whitespace-only text has 0 steps, text without a separator 1.

    Raises:
        TypeError: ``text`` or ``delimiter`` is not a str.
        ValueError: ``delimiter`` is empty.
    """
    text, delimiter = _text("text", text), _delimiter(delimiter)
    try:
        return _core.split_steps(text, delimiter)
    except UnicodeEncodeError:
        # Lone surrogates cannot reach Rust; cut a stand-in, then slice the original.
        return [text[start:end] for start, end in _core.step_spans(_utf8(text), delimiter)]


def step_spans(text: str, *, delimiter: str = PARAGRAPHS) -> List[Tuple[int, int]]:
    """``(start, end)`` character offsets of :func:`split_steps`: ``text[start:end]`` is a step.

    Use them to map a verdict back onto the response (e.g. the tokens of the correct prefix).
    Same arguments and errors as :func:`split_steps`.
    """
    text, delimiter = _text("text", text), _delimiter(delimiter)
    try:
        return _core.step_spans(text, delimiter)
    except UnicodeEncodeError:
        return _core.step_spans(_utf8(text), delimiter)


def split_steps_batch(texts: Sequence[str], *, delimiter: str = PARAGRAPHS) -> List[List[str]]:
    """:func:`split_steps` of every text, on all cores with the GIL released.

    Raises:
        TypeError: ``texts`` is a single str, or not a sequence of str.
    """
    texts, delimiter = _texts("texts", texts), _delimiter(delimiter)
    return _batch(
        "texts",
        texts,
        lambda: _core.split_steps_batch(texts, delimiter),
        lambda: [split_steps(text, delimiter=delimiter) for text in texts],
    )


def parse_verdict(judge_text: str, *, num_steps: Optional[int] = None) -> Optional[int]:
    """The judge's ``first_error``: the integer in the last ``\\boxed{...}`` of ``judge_text``.

    Returns ``k`` when the last box holds an integer ``k >= -1`` (and ``k < num_steps`` when
    ``num_steps`` is given), else ``None``: no box, an unclosed last box, ``\\boxed{}``,
    ``\\boxed{3.0}``, ``\\boxed{k}``, numbers beyond int64. Only the **last** box counts, even if
    it is broken and an earlier one is not: the parser never guesses, since a guessed verdict
    becomes a reward.

    Tolerated: spaces (``\\boxed{ -1 }``, ``\\boxed {2}``), a leading ``+``, the minus sign U+2212,
    nested braces and the wrappers ``\\text``, ``\\textrm``, ``\\textbf``, ``\\mathrm``,
    ``\\mathbf``, ``\\mbox`` and ``{...}`` (``\\boxed{\\text{3}}``); ``\\{`` and ``\\}`` are
    literal braces. Digits are ASCII.

    Raises:
        TypeError: ``judge_text`` is not a str, or ``num_steps`` not an int.
        ValueError: ``num_steps`` is negative.
    """
    judge_text = _text("judge_text", judge_text)
    n = None if num_steps is None else _arrays.integer("num_steps", num_steps, minimum=0)
    try:
        return _core.parse_verdict(judge_text, n)
    except UnicodeEncodeError:
        return _core.parse_verdict(_utf8(judge_text), n)


def parse_verdicts(judge_texts: Sequence[str], *, num_steps: Any = None) -> List[Optional[int]]:
    """:func:`parse_verdict` of every judge answer, on all cores with the GIL released.

    Args:
        judge_texts: a sequence of str.
        num_steps: optional, one step count per answer (list or integer array); each verdict
            must then satisfy ``-1 <= k < num_steps[i]``.

    Raises:
        TypeError: ``judge_texts`` is a single str or holds a non-str.
        ValueError: ``num_steps`` has another length or a negative count.
    """
    judge_texts = _texts("judge_texts", judge_texts)
    n = None if num_steps is None else _arrays.int64_rows("num_steps", num_steps).tolist()
    return _batch(
        "judge_texts",
        judge_texts,
        lambda: _core.parse_verdict_batch(judge_texts, n),
        lambda: _core.parse_verdict_batch([_utf8(t) for t in judge_texts], n),
    )


def first_error_from_scores(scores: Any, *, threshold: float = 0.5) -> int:
    """First error from a PRM's per-step scores (probability that each step is correct).

    The index of the first step scoring below ``threshold`` (default 0.5, as for
    Qwen2.5-Math-PRM), or ``-1`` if none does (also for no steps).

    Raises:
        ValueError: a score or ``threshold`` is NaN (the PRM did not score that step), or
            ``scores`` is not 1-D.
        TypeError: ``scores`` is not numeric.
    """
    s = _arrays.float64_rows("scores", scores)
    return _core.first_error_from_scores(s, _arrays.real("threshold", threshold))


# --------------------------------------------------------------------------------------------------
# Argument checks


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    return value


def _delimiter(value: Any) -> str:
    delimiter = _arrays.choice("delimiter", value)
    if _utf8(delimiter) != delimiter:
        raise ValueError("delimiter: expected text encodable as UTF-8 (it has a lone surrogate)")
    return delimiter


def _texts(name: str, value: Any) -> List[str]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of str, got a single {type(value).__name__}")
    if isinstance(value, list):
        return value
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of str, got {type(value).__name__}") from None


def _batch(name: str, texts: List[str], fast: Callable[[], _T], surrogates: Callable[[], _T]) -> _T:
    """Runs ``fast``; names the first non-str item if it fails on one, and runs ``surrogates``
    when a text holds a lone surrogate (rare: only decoders' ``surrogateescape`` makes them)."""
    try:
        return fast()
    except UnicodeEncodeError:
        return surrogates()
    except TypeError:
        for i, text in enumerate(texts):
            _text(f"{name}[{i}]", text)
        raise


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate replaced by ``?``: one character for one, so character
    offsets are unchanged."""
    return text.encode("utf-8", "replace").decode("utf-8")

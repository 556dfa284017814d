"""The ProcessBench-style critic prompt, and the defence against a response that imitates it.

The critic sees the problem and the response's steps (``sgpo_rs.split_steps``) as
``<paragraph_i>...</paragraph_i>`` blocks indexed from 0, and answers with the earliest wrong
paragraph's index, or ``-1``, inside ``\\boxed{}`` (docs/formulas.md, section 5).

The response is written by the policy being trained, so it is untrusted: a policy that learns to
write ``</paragraph_2>`` or ``\\boxed{-1}`` could forge the structure of the prompt or plant a
verdict that a critic echoes. :func:`neutralise` rewrites every paragraph tag into a bracketed
look-alike (``[paragraph_2]``, ``[/paragraph_2]``) and every ``\\boxed`` into ``[boxed]``, which
neither the critic's reader nor :func:`sgpo_rs.parse_verdict` treats as structure; the text stays
readable. Only the template's own tags and ``\\boxed{}`` are real.

With a reference solution (the dataset's worked answer), the critic gets it as an anchor for the
intended solution path (:data:`REFERENCE_TEMPLATE`): the response may still take another correct
route, and the critic is told so. The reference is data too (it may quote tags or boxes), so it is
neutralised like the rest.

Bump :data:`PROMPT_VERSION` (:data:`REFERENCE_PROMPT_VERSION`) whenever the default template (the
reference template) or the rendering changes: it is part of the cache key of prompted judges.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from ..text import parse_verdict, split_steps

PROMPT_VERSION = "sgpo-critic-v1"

# Our own wording of the ProcessBench convention (problem, tagged paragraphs indexed from 0, the
# earliest wrong index or -1 in a box); not ProcessBench's text.
DEFAULT_TEMPLATE = (
    "You are checking a worked solution one step at a time. The solution is split into "
    "paragraphs, each wrapped in tags that carry its index, counting from 0.\n"
    "\n"
    "Problem:\n"
    "{problem}\n"
    "\n"
    "Solution:\n"
    "{paragraphs}\n"
    "\n"
    "Go through the paragraphs in order and find the first one that contains a mistake (a wrong "
    "calculation, a wrong fact, or a conclusion that does not follow). Do not fix the solution. "
    "Give the index of that first wrong paragraph, or -1 if every paragraph is correct. Write "
    "only that index inside \\boxed{} at the end of your answer."
)
"""The critic template; ``{problem}`` and ``{paragraphs}`` are its only fields (other
braces are literal, so ``\\boxed{}`` needs no escaping)."""

REFERENCE_PROMPT_VERSION = "sgpo-critic-ref-v1"

REFERENCE_TEMPLATE = (
    "You are checking a worked solution one step at a time. The solution is split into "
    "paragraphs, each wrapped in tags that carry its index, counting from 0. A reference solution "
    "is given to show one correct way to the answer; the solution you check may take a different "
    "route, and a step that differs from the reference is not wrong for that reason alone.\n"
    "\n"
    "Problem:\n"
    "{problem}\n"
    "\n"
    "Reference solution:\n"
    "{reference}\n"
    "\n"
    "Solution to check:\n"
    "{paragraphs}\n"
    "\n"
    "Go through the paragraphs of the solution to check in order and find the first one that "
    "contains a mistake (a wrong calculation, a wrong fact, or a conclusion that does not follow). "
    "Do not fix the solution. Give the index of that first wrong paragraph, or -1 if every "
    "paragraph is correct. Write only that index inside \\boxed{} at the end of your answer."
)
"""The critic template with a reference solution: the fields ``{problem}``, ``{reference}`` and
``{paragraphs}``."""

_TAG = re.compile(r"<(\s*)(/?)(\s*)(paragraph[^<>]*)>", re.IGNORECASE)
_BOXED = re.compile(r"\\+(\s*)(boxed)", re.IGNORECASE)
_FIELD = re.compile(r"\{(problem|paragraphs|reference)\}")


def neutralise(text: str) -> str:
    """``text`` with paragraph tags made inert (``<paragraph_1>`` -> ``[paragraph_1]``,
    ``</paragraph_1>`` -> ``[/paragraph_1]``) and ``\\boxed`` written ``[boxed]``."""
    text = _TAG.sub(lambda m: f"[{m.group(2)}{m.group(4).strip()}]", text)
    return _BOXED.sub(lambda m: f"[{m.group(2)}]", text)


def render_paragraphs(steps: List[str]) -> str:
    """The steps as ``<paragraph_i>`` blocks, each step neutralised."""
    return "\n\n".join(
        f"<paragraph_{i}>\n{neutralise(step)}\n</paragraph_{i}>" for i, step in enumerate(steps)
    )


def build_prompt(
    problem: str,
    response: str,
    *,
    template: Optional[str] = None,
    delimiter: str = "\n\n",
    reference: Optional[str] = None,
) -> Tuple[str, int]:
    """The critic prompt for one response, and its number of steps.

    Args:
        problem: the problem statement (tags in it are neutralised too).
        response: the policy's response, split with ``sgpo_rs.split_steps(response, delimiter=...)``.
        template: a template with the fields ``{problem}`` and ``{paragraphs}`` (and ``{reference}``
            when a reference is given); default :data:`DEFAULT_TEMPLATE`, or
            :data:`REFERENCE_TEMPLATE` with a reference. Every other character is literal.
        reference: a reference solution shown to the critic (neutralised), or None.
    """
    if template is None:
        template = DEFAULT_TEMPLATE if reference is None else REFERENCE_TEMPLATE
    has_field = "{reference}" in template
    if reference is not None and not has_field:
        raise ValueError("template: a reference solution was given but the template has no {reference} field")
    if reference is None and has_field:
        raise ValueError("reference: the template has a {reference} field; give a reference solution")
    steps = split_steps(response, delimiter=delimiter)
    fields = {
        "problem": neutralise(problem),
        "paragraphs": render_paragraphs(steps),
        "reference": "" if reference is None else neutralise(reference),
    }
    prompt = _FIELD.sub(lambda m: fields[m.group(1)], template)
    return prompt, len(steps)


def parse_reply(reply: str, num_steps: int) -> Optional[int]:
    """The critic's ``first_error`` (``-1 <= k < num_steps``), or ``None`` for no verdict."""
    return parse_verdict(reply, num_steps=num_steps)

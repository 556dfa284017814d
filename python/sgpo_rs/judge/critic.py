"""A prompted critic judge over any text generator: the plug-in point for model backends.

A model backend (an OpenAI-compatible server, a local Hugging Face model) only has to turn a batch
of prompts into a batch of replies; :class:`CriticJudge` builds the ProcessBench prompts, calls it,
and parses each reply's last ``\\boxed{}``. A failed call, or a reply without a valid index, is a
missing verdict (``-2``), never a guess. A backend that fails for some prompts only returns an
exception instance in their place (the others keep their verdicts).
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Union

from .prompt import PROMPT_VERSION, REFERENCE_PROMPT_VERSION, build_prompt, parse_reply
from .verdict import Verdict, missing

Generate = Callable[[List[str]], Sequence[Union[str, BaseException]]]
"""A batch of prompts -> one reply per prompt, in order; an exception instance in place of a reply
marks that prompt as failed (a missing verdict carrying the exception as its error)."""


class CriticJudge:
    """A :class:`~sgpo_rs.judge.StepJudge` that asks a critic model through ``generate``.

    Args:
        generate: batch of prompts -> replies.
        identity: names the model and its decoding settings (the cache key).
        template: prompt template (default :data:`~sgpo_rs.judge.prompt.DEFAULT_TEMPLATE`).
        prompt_version: defaults to :data:`~sgpo_rs.judge.prompt.PROMPT_VERSION`; set your own
            when you pass a ``template``.

    ``judge(problems, responses, references=None)``: with ``references`` (one reference solution
    or None per response), the critic sees each reference next to the problem
    (:data:`~sgpo_rs.judge.prompt.REFERENCE_TEMPLATE`, versioned by ``reference_prompt_version``).
    """

    # The trainers and the CLI pass reference solutions only to judges that declare this.
    accepts_references = True

    def __init__(
        self,
        generate: Generate,
        identity: str,
        *,
        template: Optional[str] = None,
        prompt_version: Optional[str] = None,
        delimiter: str = "\n\n",
    ) -> None:
        self.generate, self.identity, self.template, self.delimiter = generate, identity, template, delimiter
        if prompt_version is None:
            prompt_version = PROMPT_VERSION if template is None else f"{PROMPT_VERSION}+custom"
        self.prompt_version = prompt_version
        self.reference_prompt_version = (
            REFERENCE_PROMPT_VERSION if template is None else f"{self.prompt_version}+reference"
        )

    def judge(
        self, problems: List[str], responses: List[str], references: Optional[List[Optional[str]]] = None
    ) -> List[Verdict]:
        if references is None:
            references = [None] * len(responses)
        elif len(references) != len(responses):
            raise ValueError(
                f"references: expected one per response ({len(responses)}), got {len(references)}"
            )
        built = [
            build_prompt(p, r, template=self.template, delimiter=self.delimiter, reference=ref)
            for p, r, ref in zip(problems, responses, references)
        ]
        todo = [i for i, (_, n) in enumerate(built) if n > 0]
        out = [missing(0, "empty response: no steps") for _ in built]
        if not todo:
            return out
        start = time.perf_counter()
        try:
            replies = list(self.generate([built[i][0] for i in todo]))
            if len(replies) != len(todo):
                raise RuntimeError(f"generate returned {len(replies)} replies for {len(todo)} prompts")
        except Exception as exc:  # noqa: BLE001 - a failed backend is a missing verdict
            latency = (time.perf_counter() - start) / len(todo)
            for i in todo:
                out[i] = missing(built[i][1], f"{type(exc).__name__}: {exc}", latency_s=latency)
            return out
        latency = (time.perf_counter() - start) / len(todo)
        for i, reply in zip(todo, replies):
            n = built[i][1]
            if isinstance(reply, BaseException):
                out[i] = missing(n, f"{type(reply).__name__}: {reply}", latency_s=latency)
                continue
            k = parse_reply(reply, n) if isinstance(reply, str) else None
            if k is None:
                out[i] = missing(n, "no valid \\boxed{index} in the reply", raw=str(reply), latency_s=latency)
            else:
                out[i] = Verdict(k, n, raw=reply, latency_s=latency)
        return out

"""A process reward model (PRM): every step scored in one forward pass, no generation.

    from sgpo_rs.judge import PRMJudge
    judge = PRMJudge("Qwen/Qwen2.5-Math-PRM-7B", trust_remote_code=True, device="cuda")
    judge = PRMJudge("peiyi9979/math-shepherd-mistral-7b-prm", style="math-shepherd")

Two styles (docs/formulas.md, section 5):

- ``"qwen"`` (Qwen2.5-Math-PRM): the chat ``system`` / ``user`` (problem) / ``assistant`` turns,
  the assistant turn being the steps each followed by the separator token ``<extra_0>``; the model
  returns 2-class logits per token (``logits`` of shape ``(batch, tokens, 2)``: Qwen's remote-code
  ``AutoModel``, or any ``...ForTokenClassification`` with 2 labels) and a step's score is the
  softmax probability of class 1 at its separator.
- ``"math-shepherd"``: ``"{problem} Step 1: ... ки\\nStep 2: ... ки"`` read by a causal LM; a
  step's score is the softmax over the logits of the ``+`` and ``-`` tokens at its tag, taken at
  ``+``.

The verdict is :func:`sgpo_rs.first_error_from_scores`: the first step scoring below
``threshold`` (default 0.5), else ``-1``. Separator or tag strings written in the response are
removed before scoring (the policy must not add score positions), and a response whose number of
scored positions does not match its steps is a missing verdict. When ``max_length`` cuts a long
input, the steps that fit are scored: a step below the threshold among them is still a verdict;
otherwise the verdict is missing. A batch whose forward pass raises gives missing verdicts for that
batch only.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, List, Optional, Sequence, Tuple, Union

from ..text import first_error_from_scores, split_steps
from .batching import by_length
from .hf import load_model, model_device
from .verdict import Verdict, missing

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
"""The system prompt of the Qwen2.5-Math-PRM model card."""

STYLES = ("qwen", "math-shepherd")
_STEP_PREFIX = re.compile(r"^\s*step\s*\d+\s*[:.]", re.IGNORECASE)


class PRMJudge:
    """A :class:`~sgpo_rs.judge.StepJudge` thresholding a PRM's step scores.

    Args:
        model: the PRM (``transformers`` model or path / hub id).
        tokenizer: its tokenizer, or a path; default: loaded from ``model``'s path.
        style: ``"qwen"`` or ``"math-shepherd"``.
        threshold: a step scoring below it is wrong (part of ``identity``).
        batch_size: responses per forward pass.
        max_length: cut inputs to this many tokens (``None``: never).
        system_prompt: the ``"qwen"`` system turn (default :data:`QWEN_SYSTEM`).
        step_separator: the ``"qwen"`` separator token.
        step_tag, good_token, bad_token: the ``"math-shepherd"`` tag and label tokens.
        device, dtype, trust_remote_code: used when loading from a path (Qwen2.5-Math-PRM needs
            ``trust_remote_code=True``).
        delimiter: how responses are split into steps (``sgpo_rs.split_steps``).
        identity: override the default ``prm:<style>:<name>|threshold=...``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        style: str = "qwen",
        threshold: float = 0.5,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        system_prompt: str = QWEN_SYSTEM,
        step_separator: str = "<extra_0>",
        step_tag: str = "ки",
        good_token: str = "+",
        bad_token: str = "-",
        device: Optional[str] = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        delimiter: str = "\n\n",
        identity: Optional[str] = None,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if threshold != threshold:
            raise ValueError("threshold: expected a number, got NaN")
        self.style, self.threshold, self.batch_size = style, threshold, batch_size
        self.max_length = max_length
        self.system_prompt, self.delimiter = system_prompt, delimiter
        self.model, self.tokenizer, self.name = load_model(
            model,
            tokenizer,
            auto_class="prm" if style == "qwen" else "AutoModelForCausalLM",
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        tok = self.tokenizer
        if tok.pad_token_id is None:
            if tok.eos_token_id is None:
                raise ValueError("PRMJudge: the tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        self.marker = step_separator if style == "qwen" else step_tag
        ids = tok.encode(self.marker, add_special_tokens=False)
        if style == "qwen" and len(ids) != 1:
            raise ValueError(f"step_separator: {step_separator!r} is not one token of this tokenizer")
        if not ids:
            raise ValueError(f"step_tag: {step_tag!r} encodes to no token")
        self.marker_id = int(ids[-1])
        if self.marker_id == tok.pad_token_id:
            raise ValueError("the step separator is the padding token")
        self.label_ids: Optional[Tuple[int, int]] = None
        if style == "math-shepherd":
            pair = tok.encode(f"{good_token} {bad_token}", add_special_tokens=False)
            if len(pair) != 2:
                pair = [tok.encode(t, add_special_tokens=False)[-1] for t in (good_token, bad_token)]
            if pair[0] == pair[1]:
                raise ValueError("good_token and bad_token map to the same token")
            self.label_ids = (int(pair[0]), int(pair[1]))
        self.prompt_version = f"prm-{style}-v1"
        self._lock = threading.Lock()
        if identity is None:
            identity = f"prm:{style}:{self.name}|threshold={threshold:g}|{self.prompt_version}"
            if max_length is not None:
                identity += f"|max_length={max_length}"
        self.identity = identity

    def __repr__(self) -> str:
        return f"PRMJudge({self.identity!r})"

    # -------------------------------------------------------------------------------------------
    # Inputs

    def render(self, problem: str, steps: Sequence[str]) -> str:
        """The text the PRM reads; separator / tag strings in the problem and steps are removed."""
        clean = [step.replace(self.marker, " ") for step in steps]
        problem = problem.replace(self.marker, " ")
        if self.style == "math-shepherd":
            lines = [
                f"{step} {self.marker}" if _STEP_PREFIX.match(step) else f"Step {i + 1}: {step} {self.marker}"
                for i, step in enumerate(clean)
            ]
            return f"{problem} " + "\n".join(lines)
        assistant = "".join(f"{step}{self.marker}" for step in clean)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": problem},
                {"role": "assistant", "content": assistant},
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return f"{self.system_prompt}\n\n{problem}\n\n{assistant}"

    # -------------------------------------------------------------------------------------------
    # Scoring

    def score(self, problems: List[str], responses: List[str]) -> List[Union[List[float], BaseException]]:
        """Per response, the scores of the steps that were scored (probability that each step is
        right), or the exception that stopped its batch."""
        steps = [split_steps(r, delimiter=self.delimiter) for r in responses]
        texts = [self.render(p, s) for p, s in zip(problems, steps)]
        return by_length(texts, self.batch_size, self._score_batch, RuntimeError)

    def _score_batch(self, texts: List[str]) -> List[Union[List[float], BaseException]]:
        import torch

        tok = self.tokenizer
        # A rendered chat template holds its special tokens; the Math-Shepherd input takes a BOS.
        special = self.style == "math-shepherd" or not getattr(tok, "chat_template", None)
        options: dict = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        with self._lock:
            side = tok.padding_side
            tok.padding_side = "right"
            try:
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=special, **options)
            finally:
                tok.padding_side = side
        device = model_device(self.model)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0]
        if self.style == "qwen":
            if logits.shape[-1] != 2:
                raise ValueError(f"expected 2-class logits per token, got shape {tuple(logits.shape)}")
            probs = torch.softmax(logits.float(), dim=-1)[..., 1]
        else:
            assert self.label_ids is not None
            pair = logits[..., list(self.label_ids)].float()
            probs = torch.softmax(pair, dim=-1)[..., 0]
        at = (ids == self.marker_id) & mask.bool()
        return [probs[row][at[row]].tolist() for row in range(ids.shape[0])]

    def judge(self, problems: List[str], responses: List[str]) -> List[Verdict]:
        counts = [len(split_steps(r, delimiter=self.delimiter)) for r in responses]
        out = [missing(0, "empty response: no steps") for _ in responses]
        todo = [i for i, n in enumerate(counts) if n > 0]
        if not todo:
            return out
        start = time.perf_counter()
        scored = self.score([problems[i] for i in todo], [responses[i] for i in todo])
        latency = (time.perf_counter() - start) / len(todo)
        for i, scores in zip(todo, scored):
            out[i] = self._verdict(scores, counts[i], latency)
        return out

    def _verdict(self, scores: Union[List[float], BaseException], n: int, latency: float) -> Verdict:
        if isinstance(scores, BaseException):
            return missing(n, str(scores), latency_s=latency)
        raw = " ".join(f"{s:.4f}" for s in scores)
        if len(scores) > n:
            return missing(n, f"{len(scores)} scored positions for {n} steps", raw=raw, latency_s=latency)
        try:
            k = first_error_from_scores(scores, threshold=self.threshold)
        except ValueError as exc:  # a NaN score: the model did not score that step
            return missing(n, str(exc), raw=raw, latency_s=latency)
        if k == -1 and len(scores) < n:
            return missing(
                n, f"only {len(scores)} of {n} steps were scored (max_length)", raw=raw, latency_s=latency
            )
        return Verdict(k, n, raw=raw, latency_s=latency)

"""A prompted critic running a local Hugging Face transformers causal LM.

    from sgpo_rs.judge import HFJudge
    judge = HFJudge("Qwen/Qwen2.5-7B-Instruct", max_new_tokens=2048, batch_size=16, device="cuda")
    verdicts = judge.judge(problems, responses)

Prompts and parsing are :class:`~sgpo_rs.judge.CriticJudge`'s. Each prompt is rendered with the
tokenizer's chat template as one user turn (after an optional system turn) ending in the
assistant's generation prompt; a tokenizer without a template gets the plain prompt. Prompts are
generated in batches of ``batch_size`` (sorted by length, left padded), greedy unless
``do_sample=True``. A reply that did not reach an end-of-sequence token within ``max_new_tokens``
is a missing verdict (its last box is not a final answer) unless ``accept_truncated=True``; a batch
whose generation raises (out of memory) gives missing verdicts for that batch only.

Needs ``torch`` and ``transformers``.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from .batching import by_length
from .critic import CriticJudge


class GenerationError(RuntimeError):
    """Why a local model produced no usable reply for a prompt."""


def load_model(
    model: Any,
    tokenizer: Any,
    *,
    auto_class: str,
    device: Optional[str] = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> Tuple[Any, Any, str]:
    """``(model, tokenizer, name)``: ``model`` as given, or loaded from a path / hub id with
    ``transformers.<auto_class>`` (the tokenizer from the same place unless given), in eval mode
    on ``device`` (default: CUDA when available, else CPU, for a loaded model)."""
    import transformers

    name = model if isinstance(model, str) else getattr(model, "name_or_path", "")
    name = str(name or type(model).__name__)
    if isinstance(model, str):
        options: Dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            options["dtype"] = dtype
        if auto_class == "prm":
            config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            architectures = getattr(config, "architectures", None) or []
            token_classifier = any(a.endswith("ForTokenClassification") for a in architectures)
            auto_class = "AutoModelForTokenClassification" if token_classifier else "AutoModel"
        model = getattr(transformers, auto_class).from_pretrained(name, **options)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    if tokenizer is None:
        tokenizer = name
    if isinstance(tokenizer, str):
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer, name


def model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


class HFJudge(CriticJudge):
    """A :class:`~sgpo_rs.judge.StepJudge` generating critiques with a local causal LM.

    Args:
        model: a ``transformers`` causal LM, or its path / hub id.
        tokenizer: its tokenizer, or a path; default: loaded from ``model``'s path.
        max_new_tokens: generation budget per reply (part of ``identity``).
        batch_size: prompts per ``generate`` call.
        do_sample, temperature, top_p: sampling instead of greedy decoding (part of ``identity``).
        system_prompt: an optional system turn before the critic prompt.
        use_chat_template: ``None`` (default): when the tokenizer has one; ``False``: never.
        accept_truncated: parse replies that hit ``max_new_tokens`` instead of treating them as
            missing.
        device, dtype, trust_remote_code: used when loading from a path.
        template, prompt_version, delimiter: as :class:`~sgpo_rs.judge.CriticJudge`.
        identity: override the default ``hf:<name>|greedy|max_new_tokens=...|<prompt version>``
            (give one when ``model`` is an object without a ``name_or_path``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 1024,
        batch_size: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        system_prompt: Optional[str] = None,
        use_chat_template: Optional[bool] = None,
        accept_truncated: bool = False,
        device: Optional[str] = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        template: Optional[str] = None,
        prompt_version: Optional[str] = None,
        delimiter: str = "\n\n",
        identity: Optional[str] = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.model, self.tokenizer, self.name = load_model(
            model,
            tokenizer,
            auto_class="AutoModelForCausalLM",
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError("HFJudge: the tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.use_chat_template = has_template and use_chat_template is not False
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.system_prompt, self.accept_truncated = system_prompt, accept_truncated
        self._stop_ids = self._eos_ids()
        self._lock = threading.Lock()
        super().__init__(
            self._generate, "", template=template, prompt_version=prompt_version, delimiter=delimiter
        )
        self.identity = identity if identity is not None else self._default_identity()

    def _default_identity(self) -> str:
        decoding = f"sample(t={self.temperature:g},top_p={self.top_p:g})" if self.do_sample else "greedy"
        parts = [f"hf:{self.name}", decoding, f"max_new_tokens={self.max_new_tokens}", self.prompt_version]
        if not self.use_chat_template:
            parts.append("plain")
        if self.system_prompt is not None:
            import hashlib

            parts.append(f"system={hashlib.sha256(self.system_prompt.encode()).hexdigest()[:12]}")
        if self.accept_truncated:
            parts.append("accept_truncated")
        return "|".join(parts)

    def __repr__(self) -> str:
        return f"HFJudge({self.identity!r})"

    def _eos_ids(self) -> Set[int]:
        ids: Set[int] = set()
        config = getattr(self.model, "generation_config", None)
        for value in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def render(self, prompt: str) -> str:
        """The text the model reads for one critic prompt."""
        if not self.use_chat_template:
            return prompt if self.system_prompt is None else f"{self.system_prompt}\n\n{prompt}"
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _generate(self, prompts: List[str]) -> List[Union[str, BaseException]]:
        texts = [self.render(p) for p in prompts]
        return by_length(texts, self.batch_size, self._generate_batch, GenerationError)

    def _generate_batch(self, texts: Sequence[str]) -> List[Union[str, BaseException]]:
        import torch

        tokenizer = self.tokenizer
        with self._lock:
            side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                enc = tokenizer(
                    list(texts),
                    return_tensors="pt",
                    padding=True,
                    # A rendered chat template already holds its special tokens.
                    add_special_tokens=not self.use_chat_template,
                )
            finally:
                tokenizer.padding_side = side
            enc = {k: v.to(model_device(self.model)) for k, v in enc.items()}
            options: Dict[str, Any] = {"do_sample": self.do_sample}
            if self.do_sample:
                options.update(temperature=self.temperature, top_p=self.top_p)
            with torch.inference_mode():
                generated = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options
                )
        new = generated[:, enc["input_ids"].shape[1] :].tolist()
        replies: List[Union[str, BaseException]] = []
        for tokens in new:
            stop = next((j for j, t in enumerate(tokens) if t in self._stop_ids), None)
            if stop is None and not self.accept_truncated:
                replies.append(GenerationError(f"the reply was cut at max_new_tokens={self.max_new_tokens}"))
                continue
            replies.append(tokenizer.decode(tokens[:stop], skip_special_tokens=True))
        return replies

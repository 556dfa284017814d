"""Tiny randomly initialised transformers models for the judge backend tests, built offline.

A byte-level BPE tokenizer is trained here with the ``tokenizers`` library on a few lines of
text (so nothing is downloaded), wrapped as a ``PreTrainedTokenizerFast`` with a ChatML chat
template and saved; the models are Qwen2 configurations with hidden size 32 and 2 layers:

- ``causal_lm``: ``Qwen2ForCausalLM`` (the critic of HFJudge, the chat server, and the
  Math-Shepherd style PRM: its ``+``/``-`` logits at the step tag);
- ``token_classifier``: ``Qwen2ForTokenClassification`` with 2 labels, the interface of
  Qwen2.5-Math-PRM (per-token 2-class logits, class 1 = the step is right, read at ``<extra_0>``).

Their outputs are noise; the tests check plumbing, not judgement.
"""

from __future__ import annotations

import os
from typing import Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
STEP_TAG = "ки"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You are checking a worked solution one step at a time.",
    "Start from 3 and apply these operations in order, one per paragraph: + 4, * 2, - 5.",
    "3 + 4 = 7\n\n7 * 2 = 14\n\n14 - 5 = 9",
    "Step 1: the answer is 12. Step 2: so the total is 30.",
    "Give the index of that first wrong paragraph, or -1 if every paragraph is correct.",
    "\\boxed{0} \\boxed{1} \\boxed{-1} <paragraph_0> </paragraph_0>",
    "Problem: Solution: the first one that contains a mistake",
]


def build_tokenizer(folder: str, *, chat_template: bool = True):  # type: ignore[no-untyped-def]
    """Train, wrap, save (to ``folder``) and return the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_tokens([STEP_TAG])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None
    )
    if chat_template:
        wrapped.chat_template = CHATML
    os.makedirs(folder, exist_ok=True)
    wrapped.save_pretrained(folder)
    return wrapped


def _config(tokenizer, **extra):  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        # Wider than the usual 0.02, so the noise varies from token to token.
        initializer_range=0.5,
        **extra,
    )


def build_causal_lm(folder: str, *, seed: int = 0, chat_template: bool = True) -> str:
    """A tiny ``Qwen2ForCausalLM`` and its tokenizer saved to ``folder``; returns ``folder``."""
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = build_tokenizer(folder, chat_template=chat_template)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_config(tokenizer)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return folder


def build_token_classifier(folder: str, *, seed: int = 0) -> str:
    """A tiny ``Qwen2ForTokenClassification`` (2 labels) and its tokenizer saved to ``folder``."""
    import torch
    from transformers import Qwen2ForTokenClassification

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(seed)
    model = Qwen2ForTokenClassification(_config(tokenizer, num_labels=2)).eval()
    model.save_pretrained(folder)
    return folder


def build_all(root: str) -> Dict[str, str]:
    """Every tiny model under ``root``, by name."""
    return {
        "causal_lm": build_causal_lm(os.path.join(root, "causal_lm")),
        "causal_lm_no_template": build_causal_lm(os.path.join(root, "plain_lm"), chat_template=False),
        "token_classifier": build_token_classifier(os.path.join(root, "prm")),
    }

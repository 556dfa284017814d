"""A tiny, randomly initialised causal LM and tokenizer for the TRL tests (built locally, no
downloads), and the synthetic arithmetic-chain task they train on."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from sgpo_rs.judge import make_synthetic  # noqa: E402
from sgpo_rs.judge.rule import apply, parse_problem  # noqa: E402

SPECIALS = ["<pad>", "<eos>", "<unk>"]
STEP_BREAK = "\n\n"


def task(num: int, seed: int = 0) -> List[Dict[str, Any]]:
    """``num`` arithmetic-chain problems (``sgpo_rs.judge.synthetic``) with their answers."""
    rows = []
    for i, record in enumerate(make_synthetic(num, seed=seed, min_steps=2, max_steps=3)):
        start, ops = parse_problem(record["problem"])
        value = start
        for op, b in ops:
            value = apply(value, op, b)
        rows.append({"prompt": record["problem"], "answer": value, "uid": i})
    return rows


def vocabulary(texts: List[str]) -> List[str]:
    words = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]+", text))
    words.update(str(i) for i in range(100))
    return SPECIALS + sorted(words) + [STEP_BREAK]


def build(folder: str, texts: List[str], seed: int = 0) -> str:
    """Save a WordLevel tokenizer over ``texts``' words and a 2-layer Qwen2 (hidden 32) to
    ``folder``; returns ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = vocabulary(texts)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def correct_answer(prompts, completions, answer, **kwargs):
    """1.0 when the completion's last integer is the chain's result, else 0.0."""
    out = []
    for completion, value in zip(completions, answer):
        numbers = re.findall(r"-?\d+", completion if isinstance(completion, str) else str(completion))
        out.append(1.0 if numbers and int(numbers[-1]) == int(value) else 0.0)
    return out


def token_steps(problem: str, response: str):
    """A deterministic step checker for random-token responses: every token is a step, and a step
    is right when it is a number; the verdict is the first token that is not (``-1``: none)."""
    tokens = response.split()
    for i, token in enumerate(tokens):
        if not token.lstrip("-").isdigit():
            return i, max(len(tokens), 1)
    return -1, max(len(tokens), 1)


def token_steps_judge(problems, responses, rows):
    """:func:`token_steps` as a plain-callable trainer judge."""
    return [token_steps(p, r) for p, r in zip(problems, responses)]

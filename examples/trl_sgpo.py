"""SGPO with TRL: train a causal LM on multi-step arithmetic chains with SGPOTrainer.

    python examples/trl_sgpo.py                      # a tiny random model built locally, CPU
    python examples/trl_sgpo.py --model PATH --max-steps 200 --max-completion-length 128

The task is sgpo_rs.judge.synthetic's: "Start from 7 and apply these operations in order ...:
+ 5, * 3, - 4." The reward is 1 for the right final value; the step-wise judge is the exact
rule-based checker (sgpo_rs.judge.RuleJudge), which finds the first wrong "a op b = c" step.
Groups whose responses are all wrong get credit for how far each response got before its first
mistake, so they still teach the model something (SGPO, arXiv 2505.11595).

Runs offline: without --model it builds a 2-layer Qwen2 (hidden size 32) and a word-level
tokenizer in a temporary folder. That model writes random tokens, so the rule judge puts every
first error at step 0 and the credit is 0; the point is the plumbing. With a real instruct
model the credit varies with the first wrong step. The SGPO metrics (sgpo/all_negative_frac,
sgpo/diversified_frac, sgpo/judge_missing_frac, sgpo/mean_credit) are logged with TRL's.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tiny_model(folder: str, problems: list) -> str:
    """A randomly initialised 2-layer Qwen2 and a word-level tokenizer over the problems' words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = set(str(i) for i in range(100))
    for text in problems:
        words.update(re.findall(r"\w+|[^\w\s]+", text))
    vocab = ["<pad>", "<eos>", "<unk>"] + sorted(words) + ["\n\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def dataset(num: int, seed: int):
    """Arithmetic-chain problems and their results."""
    from datasets import Dataset
    from sgpo_rs.judge import make_synthetic
    from sgpo_rs.judge.rule import apply, parse_problem

    rows = []
    for record in make_synthetic(num, seed=seed, min_steps=2, max_steps=4):
        start, ops = parse_problem(record["problem"])
        value = start
        for op, b in ops:
            value = apply(value, op, b)
        rows.append({"prompt": record["problem"] + "\n\n", "answer": value})
    return Dataset.from_list(rows)


def correct_answer(prompts, completions, answer, **kwargs):
    """1.0 when the last integer of the completion is the chain's result."""
    rewards = []
    for completion, value in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        numbers = re.findall(r"-?\d+", text)
        rewards.append(1.0 if numbers and int(numbers[-1]) == value else 0.0)
    return rewards


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a local model folder (default: build a tiny random one)")
    parser.add_argument("--output-dir", help="where TRL writes (default: a temporary folder)")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--num-problems", type=int, default=64)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="per-device train batch size")
    parser.add_argument("--max-completion-length", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--credit-scale", type=float, default=0.5)
    parser.add_argument("--judge-cache", help="sqlite file for the judge's verdicts (CachedJudge)")
    parser.add_argument("--use-sgpo-loss", action="store_true", help="the fused Rust loss (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from sgpo_rs.judge import CachedJudge, RuleJudge
    from sgpo_rs.trl import SGPOConfig, SGPOTrainer
    from transformers import AutoTokenizer

    work = tempfile.mkdtemp(prefix="sgpo-trl-")
    train = dataset(args.num_problems, args.seed)
    model = args.model or build_tiny_model(os.path.join(work, "tiny-model"), train["prompt"])

    judge = RuleJudge()
    if args.judge_cache:
        judge = CachedJudge(judge, args.judge_cache)

    config = SGPOConfig(
        output_dir=args.output_dir or os.path.join(work, "out"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        sgpo_credit_scale=args.credit_scale,
        use_sgpo_loss=args.use_sgpo_loss,
    )
    trainer = SGPOTrainer(
        model=model,
        reward_funcs=correct_answer,
        args=config,
        train_dataset=train,
        processing_class=AutoTokenizer.from_pretrained(model),
        judge=judge,
    )
    trainer.train()

    keys = ("reward", "sgpo/all_negative_frac", "sgpo/diversified_frac", "sgpo/judge_missing_frac")
    keys += ("sgpo/mean_credit",)
    print("step  " + "  ".join(keys))
    for entry in trainer.state.log_history:
        if "sgpo/diversified_frac" in entry:
            values = "  ".join(f"{entry[k]:>{len(k)}.3f}" for k in keys)
            print(f"{entry['step']:>4}  {values}")


if __name__ == "__main__":
    main()

"""Run by test_trl_distributed.py, as ``python trl_distributed_job.py MODEL OUT`` (one process) or
under ``torchrun --nproc_per_node 2`` (CPU, gloo).

1. The SGPO reward step on a fixed global batch of 12 rule-judged arithmetic chains (3 groups of
   4; with 2 processes each holds 6 rows, so the middle group straddles them): every rank calls
   ``SGPOTrainer._calculate_rewards`` on its own slice. Rank 0 writes the global SGPO rewards;
   every rank writes the rows its judge saw.
2. With several processes, one real training step of SGPOTrainer on the tiny model.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import trl_tiny  # noqa: E402  (sets the offline environment first)

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from sgpo_rs.judge import RuleJudge, make_synthetic  # noqa: E402
from sgpo_rs.trl import SGPOConfig, SGPOTrainer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

G = 4
GLOBAL_ROWS = 12


def global_batch():
    """12 chains: group 0 all wrong, group 1 all wrong, group 2 with one right answer."""
    wrong = [r for r in make_synthetic(40, seed=5, error_rate=1.0) if not r["correct"]]
    right = make_synthetic(1, seed=6, error_rate=0.0)
    records = wrong[:8] + right + wrong[8:11]
    return [
        {"prompt": r["problem"], "response": r["response"], "solved": bool(r["correct"]), "uid": i}
        for i, r in enumerate(records)
    ]


def solved(prompts, completions, solved, **kwargs):
    return [1.0 if s else 0.0 for s in solved]


class CountingRuleJudge:
    """The exact arithmetic-chain judge; records the rows it was asked about."""

    def __init__(self):
        self.rule = RuleJudge()
        self.calls = []

    def __call__(self, problems, responses, rows):
        self.calls.append([row["uid"] for row in rows])
        return self.rule.judge(problems, responses)


def main(model, out):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    rows = global_batch()
    judge = CountingRuleJudge()
    tokenizer = AutoTokenizer.from_pretrained(model)
    args = SGPOConfig(
        output_dir=os.path.join(out, "run"),
        per_device_train_batch_size=GLOBAL_ROWS // world,
        num_generations=G,
        max_completion_length=4,
        max_steps=1,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        logging_steps=1,
        sgpo_credit_scale=0.5,
    )
    trainer = SGPOTrainer(
        model=model,
        reward_funcs=solved,
        args=args,
        train_dataset=Dataset.from_list(trl_tiny.task(12)),
        processing_class=tokenizer,
        judge=judge,
    )
    judge.calls.clear()  # the preflight call at construction (each process judges its own copy)
    trainer.model.train()
    n = GLOBAL_ROWS // world
    local = rows[rank * n : (rank + 1) * n]
    rewards_per_func = trainer._calculate_rewards(
        local, [r["prompt"] for r in local], [r["response"] for r in local], [[1]] * n
    )
    sgpo = trainer.last_sgpo
    tag = f"world{world}"
    with open(os.path.join(out, f"{tag}-rank{rank}-judged.json"), "w") as f:
        json.dump({"calls": judge.calls, "judged_rows": trainer.last_sgpo_judged_rows}, f)
    if rank == 0:
        weighted = (rewards_per_func * trainer.reward_weights.unsqueeze(0)).nansum(dim=1)
        with open(os.path.join(out, f"{tag}-rewards.json"), "w") as f:
            json.dump(
                {
                    "sgpo_rewards": sgpo.rewards.tolist(),
                    "trl_weighted_rewards": weighted.tolist(),
                    "diversified": sgpo.diversified.tolist(),
                    "stats": {k: float(v) for k, v in sgpo.stats.items()},
                },
                f,
            )
    if world > 1:
        trainer = SGPOTrainer(
            model=model,
            reward_funcs=trl_tiny.correct_answer,
            args=args,
            train_dataset=Dataset.from_list(trl_tiny.task(12)),
            processing_class=tokenizer,
            judge=trl_tiny.token_steps_judge,
        )
        trainer.train()
        if rank == 0:
            logs = [e for e in trainer.state.log_history if "sgpo/diversified_frac" in e]
            with open(os.path.join(out, f"{tag}-train.json"), "w") as f:
                json.dump(logs, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

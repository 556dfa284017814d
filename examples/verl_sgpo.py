"""SGPO in verl: the reward function to point verl at, and a dry run of the advantage step.

In a verl run (see README "Use with verl")::

    custom_reward_function.path=examples/verl_sgpo.py    # or pkg://your_module
    custom_reward_function.name=compute_score

``compute_score`` below scores arithmetic chains (the last paragraph's result against the ground
truth) and asks the exact step checker ``RuleJudge`` where each wrong chain first goes wrong; swap
in ``OpenAIJudge`` (a judge model behind any OpenAI-compatible server) for real tasks.

Run as a script (``python examples/verl_sgpo.py``), it scores a small batch of right and wrong
chains with ``compute_score``, puts the verdicts where verl's legacy trainer puts reward extra info,
and runs verl's own ``compute_advantage`` with ``adv_estimator=sgpo`` and ``grpo``: the all-wrong
group gets non-zero advantages only under SGPO.
"""

from __future__ import annotations

import re
import uuid

from sgpo_rs.judge import RuleJudge
from sgpo_rs.verl import make_compute_score


def arithmetic_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """1.0 when the last step's result equals the ground truth, else 0.0."""
    results = re.findall(r"=\s*(-?\d+)", solution_str)
    return float(bool(results) and int(results[-1]) == int(ground_truth))


compute_score = make_compute_score(arithmetic_score, RuleJudge())


def main() -> None:
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo import ray_trainer

    problem = "Start from 7 and apply these operations in order: + 5, * 3, - 4."
    chains = [
        "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32",  # right
        "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 31",  # last step wrong
        "7 + 5 = 12\n\n12 * 3 = 33\n\n33 - 4 = 29",  # second step wrong
        "7 + 5 = 13\n\n13 * 3 = 39\n\n39 - 4 = 35",  # first step wrong
    ]
    # Group A: one right, three wrong (plain GRPO already learns). Group B: all wrong.
    rows = [(0, chains[0]), (0, chains[1]), (0, chains[2]), (0, chains[3])]
    rows += [(1, chains[1]), (1, chains[2]), (1, chains[3]), (1, chains[3])]
    uids = [str(uuid.uuid4()), str(uuid.uuid4())]
    infos = [compute_score("arith", text, "32", extra_info={"question": problem}) for _, text in rows]
    length = 6
    rewards = torch.zeros(len(rows), length)
    rewards[:, -1] = torch.tensor([info["score"] for info in infos])
    non_tensor = {"uid": np.array([uids[g] for g, _ in rows], dtype=object)}
    non_tensor.update({key: np.array([info[key] for info in infos]) for key in infos[0] if key != "score"})
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "sgpo": {"credit_scale": 0.5}})
    for estimator in ("grpo", "sgpo"):
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards.clone(), "response_mask": torch.ones(len(rows), length)},
            non_tensors={k: v.copy() for k, v in non_tensor.items()},
        )
        data = ray_trainer.compute_advantage(data, estimator, config=config)
        advantages = data.batch["advantages"][:, 0].tolist()
        print(f"{estimator:>5}: group A {np.round(advantages[:4], 3)}  group B {np.round(advantages[4:], 3)}")
        if estimator == "sgpo":
            print("       metrics:", data.meta_info["sgpo_metrics"])


if __name__ == "__main__":
    main()

"""SGPO in verl: the reward function to point verl at, and a dry run of the advantage step.

In a verl run (see README "Use with verl")::

    custom_reward_function.path=examples/verl_sgpo.py    # or pkg://your_module
    custom_reward_function.name=compute_score

``compute_score`` below scores arithmetic chains (the last paragraph's result against the ground
truth) and asks the exact step checker ``RuleJudge`` where each wrong chain first goes wrong; swap
in ``OpenAIJudge`` (a judge model behind any OpenAI-compatible server) for real tasks.

To judge at the advantage step instead, only the responses of all-wrong groups, in one batched
call in the driver (see docs/verl.md, "Two places to judge")::

    custom_reward_function.name=compute_score_deferred
    +algorithm.sgpo.judge=examples.verl_sgpo:make_judge     # importable in the driver

Run as a script (``python examples/verl_sgpo.py``), it scores a small batch of right and wrong
chains with ``compute_score``, puts the verdicts where verl's legacy trainer puts reward extra info,
and runs verl's own ``compute_advantage`` with ``adv_estimator=sgpo`` and ``grpo``: the all-wrong
group gets non-zero advantages only under SGPO. Then the same with ``compute_score_deferred``: the
same advantages from fewer judge calls.
"""

from __future__ import annotations

import re
import uuid

from sgpo_rs.judge import RuleJudge
from sgpo_rs.verl import make_compute_score, set_judge


def arithmetic_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """1.0 when the last step's result equals the ground truth, else 0.0."""
    results = re.findall(r"=\s*(-?\d+)", solution_str)
    return float(bool(results) and int(results[-1]) == int(ground_truth))


compute_score = make_compute_score(arithmetic_score, RuleJudge())
compute_score_deferred = make_compute_score(arithmetic_score, judge_at="advantage")


def make_judge() -> RuleJudge:
    """The driver's judge for ``compute_score_deferred`` (``+algorithm.sgpo.judge=...:make_judge``)."""
    return RuleJudge()


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
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "sgpo": {"credit_scale": 0.5}})
    set_judge(make_judge())  # the driver's judge, for the deferred route
    routes = (
        ("grpo", compute_score),
        ("sgpo", compute_score),
        ("sgpo, judged at the advantage step", compute_score_deferred),
    )
    for name, score_fn in routes:
        # What verl's reward loop does: score each sample, stack the extra info per key.
        infos = [score_fn("arith", text, "32", extra_info={"question": problem}) for _, text in rows]
        length = 6
        rewards = torch.zeros(len(rows), length)
        rewards[:, -1] = torch.tensor([info["score"] for info in infos])
        non_tensor = {"uid": np.array([uids[g] for g, _ in rows], dtype=object)}
        non_tensor.update(
            {key: np.array([info[key] for info in infos]) for key in infos[0] if key != "score"}
        )
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": torch.ones(len(rows), length)},
            non_tensors=non_tensor,
        )
        data = ray_trainer.compute_advantage(data, name.split(",")[0], config=config)
        advantages = data.batch["advantages"][:, 0].tolist()
        print(f"{name}: group A {np.round(advantages[:4], 3)}  group B {np.round(advantages[4:], 3)}")
        if name != "grpo":
            metrics = data.meta_info["sgpo_metrics"]
            print(f"       judge calls: {metrics['sgpo/judge_calls']:.0f}, metrics: {metrics}")


if __name__ == "__main__":
    main()

"""sgpo-rs: SGPO (Stepwise Guided Policy Optimization, arXiv 2505.11595) as a drop-in for the GRPO
step, on Rust kernels.

    import sgpo_rs as sg
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=8)
    adv = sg.group_advantages(out.rewards, group_size=8)
"""

from ._core import __version__
from .advantages import group_advantages, token_advantages
from .loss import LossOutput, policy_loss
from .rewards import SGPORewards, sgpo_rewards

__all__ = [
    "LossOutput",
    "SGPORewards",
    "__version__",
    "group_advantages",
    "policy_loss",
    "sgpo_rewards",
    "token_advantages",
]

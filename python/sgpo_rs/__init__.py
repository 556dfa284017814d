"""sgpo-rs: SGPO (Stepwise Guided Policy Optimization, arXiv 2505.11595) as a drop-in for the GRPO
step, on Rust kernels.

    import sgpo_rs as sg
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=8)
    adv = sg.group_advantages(out.rewards, group_size=8)
"""

from ._core import __version__
from .advantages import group_advantages, token_advantages
from .credit import length_scores
from .logprob import selective_logprobs, selective_logprobs_backward
from .loss import LOSS_TYPES, LossOutput, LossTypeInfo, loss_types, policy_loss
from .rewards import SGPORewards, sgpo_rewards
from .text import (
    first_error_from_scores,
    parse_verdict,
    parse_verdicts,
    split_steps,
    split_steps_batch,
    step_spans,
)

__all__ = [
    "length_scores",
    "LossOutput",
    "SGPORewards",
    "__version__",
    "first_error_from_scores",
    "group_advantages",
    "parse_verdict",
    "parse_verdicts",
    "policy_loss",
    "LOSS_TYPES",
    "LossTypeInfo",
    "loss_types",
    "selective_logprobs",
    "selective_logprobs_backward",
    "sgpo_rewards",
    "split_steps",
    "split_steps_batch",
    "step_spans",
    "token_advantages",
]

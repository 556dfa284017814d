"""SGPO for verl: ``algorithm.adv_estimator=sgpo`` (and ``grpo_rs``, verl's GRPO on the Rust kernels).

Importing this module registers both estimators in ``verl.trainer.ppo.core_algos`` and hooks verl's
trainers so the judge's verdicts reach the ``sgpo`` estimator (legacy trainer: automatically; v1
trainer: ``trainer.v1.trainer_mode=sgpo_sync``). Installing ``sgpo-rs`` declares a ``verl.plugins``
entry point, so every process that imports verl (driver, Ray workers, reward workers) loads it; or
name it in ``VERL_USE_EXTERNAL_MODULES=sgpo_rs.verl``. It also registers the policy loss
``actor_rollout_ref.actor.policy_loss.loss_mode=sgpo_rs`` (verl's vanilla loss, fused). See README
"Use with verl" and docs/verl.md.

    from sgpo_rs.verl import make_compute_score      # the reward function, with the judge
    from sgpo_rs.verl import compute_sgpo_outcome_advantage, compute_grpo_outcome_advantage
"""

from __future__ import annotations

from .advantage import compute_grpo_outcome_advantage, compute_sgpo_outcome_advantage
from .deferred import set_judge
from .estimators import GRPO_RS, SGPO, register
from .options import SGPOOptions
from .policy_loss import LOSS_MODE, compute_policy_loss
from .policy_loss import register as register_policy_loss
from .reward import make_compute_score
from .trainers import V1_TRAINER, install

register()
register_policy_loss()
install()

__all__ = [
    "GRPO_RS",
    "LOSS_MODE",
    "SGPO",
    "SGPOOptions",
    "V1_TRAINER",
    "compute_grpo_outcome_advantage",
    "compute_policy_loss",
    "compute_sgpo_outcome_advantage",
    "install",
    "make_compute_score",
    "register",
    "register_policy_loss",
    "set_judge",
]

"""SGPO for verl: ``algorithm.adv_estimator=sgpo`` (and ``grpo_rs``, verl's GRPO on the Rust kernels).

Importing this module registers both estimators in ``verl.trainer.ppo.core_algos`` and hooks verl's
trainers so the judge's verdicts reach the ``sgpo`` estimator (legacy trainer: automatically; v1
trainer: ``trainer.v1.trainer_mode=sgpo_sync``). Installing ``sgpo-rs`` declares a ``verl.plugins``
entry point, so every process that imports verl (driver, Ray workers, reward workers) loads it; or
name it in ``VERL_USE_EXTERNAL_MODULES=sgpo_rs.verl``. See README "Use with verl".

    from sgpo_rs.verl import make_compute_score      # the reward function, with the judge
    from sgpo_rs.verl import compute_sgpo_outcome_advantage, compute_grpo_outcome_advantage
"""

from __future__ import annotations

from .advantage import compute_grpo_outcome_advantage, compute_sgpo_outcome_advantage
from .estimators import GRPO_RS, SGPO, register
from .options import SGPOOptions
from .reward import make_compute_score
from .trainers import V1_TRAINER, install

register()
install()

__all__ = [
    "GRPO_RS",
    "SGPO",
    "SGPOOptions",
    "V1_TRAINER",
    "compute_grpo_outcome_advantage",
    "compute_sgpo_outcome_advantage",
    "install",
    "make_compute_score",
    "register",
]

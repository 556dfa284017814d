"""SGPO in TRL: ``SGPOTrainer`` and ``SGPOConfig``, drop-ins for ``GRPOTrainer``/``GRPOConfig``.

    from sgpo_rs.judge import RuleJudge
    from sgpo_rs.trl import SGPOConfig, SGPOTrainer

    args = SGPOConfig(output_dir="out", num_generations=8, sgpo_correctness_reward="accuracy")
    trainer = SGPOTrainer(model, [accuracy, format_reward], args=args, train_dataset=dataset,
                          judge=RuleJudge())
    trainer.train()

Needs TRL (``pip install 'sgpo-rs[trl]'``); tested with TRL 1.16 (``compat.SUPPORTED``), and
importing this module with another TRL raises ``ImportError`` naming both versions.
"""

from __future__ import annotations

try:
    import trl as _trl
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("sgpo_rs.trl needs TRL, which is not installed: pip install 'sgpo-rs[trl]'") from error

from .compat import SUPPORTED, check_version

check_version(_trl.__version__)

from .config import SGPOConfig  # noqa: E402
from .trainer import SGPOTrainer  # noqa: E402

__all__ = ["SUPPORTED", "SGPOConfig", "SGPOTrainer"]

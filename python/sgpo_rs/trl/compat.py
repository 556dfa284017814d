"""Which TRL versions ``sgpo_rs.trl`` is tested with, and the private TRL API it relies on.

``SGPOTrainer`` overrides or calls private methods of TRL's ``GRPOTrainer``; their signatures are
recorded here (``PRIVATE_API``) so that a TRL upgrade that changes them fails loudly
(``check_private_api``, called by ``SGPOTrainer.__init__``, and a test) instead of silently
training plain GRPO.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List

SUPPORTED = ">=1.16,<1.17"
"""The TRL versions sgpo_rs.trl is tested with (as a pip requirement)."""
_LOWER, _UPPER = (1, 16), (1, 17)

# The private GRPOTrainer methods SGPOTrainer overrides (_calculate_rewards, _compute_loss) or
# calls (_get_per_token_logps_and_entropies), and the one whose use of `_calculate_rewards`'
# output it depends on (_generate_and_score_completions), as `str(inspect.signature(...))` in
# TRL 1.16.0.
PRIVATE_API: Dict[str, str] = {
    "_calculate_rewards": "(self, inputs, prompts, completions, completion_ids_list)",
    "_compute_loss": "(self, model, inputs)",
    "_get_per_token_logps_and_entropies": (
        "(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
        "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, "
        "pixel_attention_mask=None, spatial_shapes=None, num_tiles=None, image_sizes=None, "
        "token_type_ids=None, mm_token_type_ids=None, image_position_ids=None) -> "
        "tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]"
    ),
    "_generate_and_score_completions": (
        "(self, inputs: list[dict[str, torch.Tensor | typing.Any]]) -> dict[str, torch.Tensor | typing.Any]"
    ),
}


def _release(version: str) -> tuple:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version(version: str) -> None:
    """Raise ``ImportError`` unless ``version`` (TRL's ``__version__``) is in :data:`SUPPORTED`."""
    release = _release(version)
    if not (_LOWER <= release[:2] < _UPPER):
        raise ImportError(
            f"sgpo_rs.trl supports TRL {SUPPORTED} (tested with 1.16.0), but TRL {version} is installed: "
            f"SGPOTrainer overrides private GRPOTrainer methods that change between TRL releases. "
            f"Install a supported TRL with: pip install 'trl{SUPPORTED}' (or pip install 'sgpo-rs[trl]')"
        )


def private_api_mismatches(trainer_class: Any) -> List[str]:
    """The recorded private methods whose signature differs in ``trainer_class`` (TRL's
    ``GRPOTrainer``), as readable lines; empty when all match."""
    problems = []
    for name, recorded in PRIVATE_API.items():
        method = getattr(trainer_class, name, None)
        if method is None:
            problems.append(f"GRPOTrainer.{name} is missing")
            continue
        actual = str(inspect.signature(method))
        if actual != recorded:
            problems.append(f"GRPOTrainer.{name}{actual} (recorded: {recorded})")
    return problems


def check_private_api(trainer_class: Any, version: str) -> None:
    """Raise ``RuntimeError`` naming every private method whose signature changed."""
    problems = private_api_mismatches(trainer_class)
    if problems:
        raise RuntimeError(
            f"sgpo_rs.trl was written against TRL {SUPPORTED}; the installed TRL {version} changed private "
            f"methods that SGPOTrainer overrides or calls: " + "; ".join(problems)
        )

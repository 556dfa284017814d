"""The policy-loss step of ``SGPOTrainer`` with ``use_sgpo_loss=True``: TRL's ``_compute_loss``
computed by ``sgpo_rs.torch.sgpo_loss``, with the same value, gradient and logged metrics.

The log-probabilities and entropies come from TRL's own ``_get_per_token_logps_and_entropies``;
the loss, ``dL/dlogp`` and the clip/KL metrics from one fused Rust pass. Each metric is reduced
across processes as TRL reduces it (token-weighted sums and counts, or gathered per-process
minima/maxima), under the keys TRL uses.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..loss import loss_types
from ..torch import sgpo_loss

# From the engine's loss-type registry: the loss types normalised by num_items (TRL's dapo family)
# and those with TRL's clip metrics.
_DAPO_FAMILY = tuple(n for n, info in loss_types().items() if not info.divides_by_gradient_accumulation)
_CLIPPED = tuple(n for n, info in loss_types().items() if info.trl_clipped)
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def unsupported_options(trainer: Any) -> List[str]:
    """The GRPO settings of ``trainer`` that the fused loss does not implement (empty: supported)."""
    problems = []
    if trainer.top_entropy_quantile < 1.0:
        problems.append(f"top_entropy_quantile={trainer.top_entropy_quantile} (entropy mask)")
    if trainer.off_policy_mask_threshold is not None:
        problems.append(f"off_policy_mask_threshold={trainer.off_policy_mask_threshold}")
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
        problems.append("vllm_importance_sampling_correction=True")
    if trainer._entropy_bonus_enabled:
        problems.append("an entropy bonus (entropy_coef / use_adaptive_entropy)")
    if trainer.aux_loss_enabled:
        problems.append("a MoE router auxiliary loss")
    return problems


def loss_options(trainer: Any) -> Dict[str, Any]:
    """The ``sgpo_loss`` options that reproduce ``trainer``'s TRL loss settings."""
    args = trainer.args
    return dict(
        loss_type=trainer.loss_type,
        beta=float(trainer.beta),
        epsilon_low=float(trainer.epsilon_low),
        epsilon_high=float(trainer.epsilon_high),
        delta=args.delta,
        importance_sampling_level=trainer.importance_sampling_level,
        kl_estimator="k3",
        kl_bias_correction=bool(args.use_bias_correction_kl),
        max_completion_length=trainer.max_completion_length,
        sapo_temperature_pos=args.sapo_temperature_pos,
        sapo_temperature_neg=args.sapo_temperature_neg,
        vespo_k_pos=args.vespo_k_pos,
        vespo_lambda_pos=args.vespo_lambda_pos,
        vespo_k_neg=args.vespo_k_neg,
        vespo_lambda_neg=args.vespo_lambda_neg,
    )


def compute_loss(trainer: Any, model: Any, inputs: Dict[str, Any]) -> torch.Tensor:
    """TRL 1.16's ``GRPOTrainer._compute_loss`` through ``sgpo_loss`` (settings checked by
    :func:`unsupported_options` at construction)."""
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    per_token_logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        model,
        input_ids,
        attention_mask,
        completion_ids.size(1),
        compute_entropy=True,
        **{key: inputs.get(key) for key in _FORWARD_KEYS},
    )

    mode = "train" if trainer.model.training else "eval"
    options = loss_options(trainer)
    advantages = inputs["advantages"]
    steps = trainer.current_gradient_accumulation_steps if mode == "train" else 1
    if trainer.loss_type in _DAPO_FAMILY:
        # TRL: num_items_in_batch spans the generation batch; rescaled to one accumulation window.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        if mode == "train":
            window = trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
            normalizer = normalizer * window
        options["num_items"] = float(normalizer)
    ref = inputs["ref_per_token_logps"] if trainer.beta != 0.0 else None
    loss, metrics = sgpo_loss(
        per_token_logps,
        inputs.get("old_per_token_logps"),
        advantages,
        mask,
        ref_logp=ref,
        gradient_accumulation_steps=steps,
        **options,
    )
    _log_metrics(trainer, mode, metrics, entropies, mask, advantages)
    return loss


def _log_metrics(
    trainer: Any,
    mode: str,
    metrics: Dict[str, float],
    entropies: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
) -> None:
    """TRL's metrics from this process's local means: a global mean is the reduced sum of
    ``mean * count`` over the reduced count, with TRL's counts (tokens of the mask, or rows for
    per-sequence quantities); ``low_min``/``high_max`` are the extremes of the gathered local ones."""
    device = mask.device
    tokens = mask.sum().float()
    rows = torch.tensor(float(mask.shape[0]), device=device)

    def global_sum_ratio(local_sum: torch.Tensor, count: torch.Tensor) -> float:
        totals = trainer.accelerator.reduce(torch.stack([local_sum.float(), count]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def global_mean(local_mean: float, count: torch.Tensor) -> float:
        return global_sum_ratio(torch.tensor(local_mean, dtype=torch.float32, device=device) * count, count)

    per_row = advantages.dim() == 1
    sequence = trainer.importance_sampling_level == "sequence"
    ratio_count = rows if per_row and sequence else tokens
    bucket = trainer._metrics[mode]
    if trainer.beta != 0.0:
        bucket["kl"].append(global_mean(metrics["kl"], tokens))
    bucket["entropy"].append(global_sum_ratio((entropies.detach() * mask).sum(), tokens))
    if trainer.loss_type in _CLIPPED:
        for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            bucket[key].append(global_mean(metrics[key], ratio_count))
        extremes = [metrics["clip_ratio/low_min"], metrics["clip_ratio/high_max"]]
        extremes = torch.tensor(extremes, dtype=torch.float32, device=device)
        gathered = trainer.accelerator.gather(extremes.unsqueeze(0)).view(-1, 2)
        low, high = gathered[:, 0], gathered[:, 1]
        low, high = low[~torch.isnan(low)], high[~torch.isnan(high)]
        bucket["clip_ratio/low_min"].append(low.min().item() if low.numel() else float("nan"))
        bucket["clip_ratio/high_max"].append(high.max().item() if high.numel() else float("nan"))
    elif trainer.loss_type == "cispo":
        bucket["cispo_clip_ratio"].append(global_mean(metrics["cispo_clip_ratio"], ratio_count))
    elif trainer.loss_type == "vespo":
        phi_count = rows if per_row else tokens
        bucket["vespo/phi_seq_mean"].append(global_mean(metrics["vespo/phi_seq_mean"], phi_count))

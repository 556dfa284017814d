"""``actor_rollout_ref.actor.policy_loss.loss_mode=sgpo_rs``: verl's ``vanilla`` policy loss (PPO
with dual clip) on the fused kernels, for every ``loss_agg_mode``.

The loss runs in verl's actor workers, so the plugin must be loaded there: the installed
``verl.plugins`` entry point does it in every process that imports verl, or name the module in
``actor_rollout_ref.model.external_lib=sgpo_rs.verl``.

One fused call (``sgpo_rs.torch.sgpo_loss`` with ``loss_type="vanilla"``) computes the per-token
objective, its aggregation, the gradient and verl's three metrics, on CPU tensors (Rust) and CUDA
tensors (the CUDA kernels). verl's global normalisers (``config.global_batch_info``: ``dp_size``,
``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``, filled in by verl's new engine)
become one scalar factor on the aggregated loss, so a tensor normaliser on the GPU costs no
device-to-host read.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .options import _get

LOSS_MODE = "sgpo_rs"

# verl's metric names for the vanilla loss, from the fused op's names.
_METRICS = {
    "pg_clipfrac": "actor/pg_clipfrac",
    "ppo_kl": "actor/ppo_kl",
    "pg_clipfrac_lower": "actor/pg_clipfrac_lower",
}
AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "seq-mean-token-mean",
)


def _positive(name: str, value: Any) -> Any:
    """A normaliser from ``global_batch_info``: a positive number, or a tensor (not read: reading a
    CUDA tensor would wait for the device)."""
    if type(value).__module__.startswith("torch"):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"config.global_batch_info[{name!r}]: expected a positive number, got {value!r}")
    return value


def aggregation(
    loss_agg_mode: str, response_mask: Any, global_batch_info: Dict[str, Any]
) -> Tuple[str, Optional[float], Any]:
    """verl's ``agg_loss(..., loss_agg_mode, **global_batch_info)`` as (the fused op's
    ``loss_agg_mode``, its ``loss_scale_factor``, a factor on the loss): the op aggregates over the
    local micro-batch and the factor turns that into verl's global normalisation."""
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode: expected one of {AGG_MODES}, got {loss_agg_mode!r}")
    dp_size = global_batch_info.get("dp_size")
    dp_size = 1 if dp_size is None else dp_size
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"config.global_batch_info['dp_size']: expected an integer >= 1, got {dp_size!r}")
    tokens = global_batch_info.get("batch_num_tokens")
    rows = global_batch_info.get("global_batch_size")
    scale_factor = global_batch_info.get("loss_scale_factor")
    # The fused op's plain masked sum: "seq-mean-token-sum-norm" divided by 1.
    total = ("seq-mean-token-sum-norm", 1.0)

    def local(name: str) -> None:
        if dp_size > 1:
            raise ValueError(
                f"config.global_batch_info: loss_agg_mode={loss_agg_mode!r} with dp_size={dp_size} needs "
                f"{name} (verl's agg_loss refuses this too)"
            )

    if loss_agg_mode == "token-sum":
        return (*total, dp_size)
    if loss_agg_mode == "token-mean":
        if tokens is None:
            local("batch_num_tokens")
            return "token-mean", None, dp_size
        return (*total, dp_size / _positive("batch_num_tokens", tokens))
    if loss_agg_mode == "seq-mean-token-mean":
        if rows is None:
            local("global_batch_size")
            return "seq-mean-token-mean", None, dp_size
        # The op's mean over the rows with tokens, times their count, over the global row count.
        valid = (response_mask.sum(dim=-1) > 0).sum()
        return "seq-mean-token-mean", None, valid * dp_size / _positive("global_batch_size", rows)
    # seq-mean-token-sum and seq-mean-token-sum-norm (verl 0.9: the first, divided by the factor).
    norm = 1
    if loss_agg_mode == "seq-mean-token-sum-norm":
        given = scale_factor is not None
        norm = _positive("loss_scale_factor", scale_factor) if given else response_mask.shape[-1]
    if rows is None:
        local("global_batch_size")
        return "seq-mean-token-sum", None, dp_size / norm
    return (*total, dp_size / (_positive("global_batch_size", rows) * norm))


def compute_policy_loss(
    old_log_prob: Any,
    log_prob: Any,
    advantages: Any,
    response_mask: Any,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Any = None,
) -> Tuple[Any, Dict[str, float]]:
    """verl's ``compute_policy_loss_vanilla`` (same signature, same result) on the fused kernels.

    Per token, ``r = exp(clamp(log_prob - old_log_prob, -20, 20))``; the loss is
    ``max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))``, dual-clipped at
    ``-A clip_ratio_c`` where ``A < 0``, aggregated as verl's ``agg_loss`` does with
    ``config.global_batch_info``. ``config`` is the actor config (``ActorConfig``, a
    ``DictConfig`` or a dict): ``clip_ratio`` (0.2), ``clip_ratio_low``/``clip_ratio_high``
    (default ``clip_ratio``), ``clip_ratio_c`` (3.0, > 1). Returns ``(loss, metrics)`` with
    verl's ``actor/pg_clipfrac``, ``actor/ppo_kl`` and ``actor/pg_clipfrac_lower``.

    The per-token arithmetic runs in float64 (float32 lanes with float64 sums on CPU where the
    inputs are float32), so the loss is at least as close to the exact value as verl's float32
    one. An empty mask gives a loss of 0 where verl's ``token-mean`` gives NaN.

    ``rollout_is_weights`` (rollout correction, off by default) are not fused: with them this
    calls verl's own ``compute_policy_loss_vanilla``, so the result is verl's.
    """
    from verl.trainer.ppo import core_algos

    if config is None:
        raise ValueError("config: expected verl's actor config (clip_ratio, ...), got None")
    if rollout_is_weights is not None:
        return core_algos.compute_policy_loss_vanilla(
            old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
        )
    from ..torch import sgpo_loss

    clip_ratio = _get(config, "clip_ratio", 0.2)
    low = _get(config, "clip_ratio_low")
    high = _get(config, "clip_ratio_high")
    info = _get(config, "global_batch_info") or {}
    op_mode, op_scale_factor, factor = aggregation(loss_agg_mode, response_mask, dict(info))
    loss, metrics = sgpo_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        loss_type="vanilla",
        epsilon_low=clip_ratio if low is None else low,
        epsilon_high=clip_ratio if high is None else high,
        clip_ratio_c=_get(config, "clip_ratio_c", 3.0),
        loss_agg_mode=op_mode,
        loss_scale_factor=op_scale_factor,
    )
    if not (isinstance(factor, int) and factor == 1):
        loss = loss * factor
    return loss, {verl_name: metrics[name] for name, verl_name in _METRICS.items()}


def register() -> None:
    """Put the loss in verl's policy-loss registry under ``sgpo_rs`` (idempotent; a foreign entry
    under that name is an error: verl's own registry would overwrite it silently)."""
    from verl.trainer.ppo import core_algos

    existing = core_algos.POLICY_LOSS_REGISTRY.get(LOSS_MODE)
    if existing is not None and (
        getattr(existing, "__module__", None) != compute_policy_loss.__module__
        or getattr(existing, "__qualname__", None) != compute_policy_loss.__qualname__
    ):
        raise ValueError(f"verl policy loss {LOSS_MODE!r} is already registered to {existing!r}")
    core_algos.POLICY_LOSS_REGISTRY[LOSS_MODE] = compute_policy_loss

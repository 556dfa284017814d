"""The GRPO-family policy loss (TRL's loss types and verl's vanilla PPO loss), fused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from . import _arrays, _core, _cuda


@dataclass(frozen=True)
class LossTypeInfo:
    """One row of the engine's loss-type registry (what is known of a loss type besides its
    formula): ``name`` (TRL's ``loss_type`` or verl's loss), ``origin`` (``"trl"``/``"verl"``),
    ``trl_clipped`` (PPO-style ratio clipping: TRL's ``clip_ratio/*`` metrics and ``delta``
    apply), ``aggregation`` (the default's name), ``divides_by_gradient_accumulation`` (False:
    TRL folds the steps into ``num_items``) and ``metrics`` (their names, besides ``kl``)."""

    name: str
    origin: str
    trl_clipped: bool
    aggregation: str
    divides_by_gradient_accumulation: bool
    metrics: tuple


def loss_types() -> Dict[str, LossTypeInfo]:
    """Every loss type :func:`policy_loss` takes, by name, in the registry's order."""
    return {
        row["name"]: LossTypeInfo(**{**row, "metrics": tuple(row["metrics"])}) for row in _core.loss_types()
    }


LOSS_TYPES = tuple(loss_types())

# Every scalar option of `policy_loss` and the check it gets before it reaches the core (types
# here, ranges in the core). `sgpo_rs.torch` validates its options with the same table.
OPTION_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "beta": _arrays.real,
    "epsilon_low": _arrays.real,
    "epsilon_high": _arrays.optional(_arrays.real),
    "delta": _arrays.optional(_arrays.real),
    "loss_type": _arrays.choice,
    "importance_sampling_level": _arrays.choice,
    "kl_estimator": _arrays.choice,
    "kl_bias_correction": _arrays.flag,
    "max_completion_length": _arrays.optional(_arrays.integer),
    "num_items": _arrays.optional(_arrays.real),
    "grad_scale": _arrays.real,
    "loss_agg_mode": _arrays.optional(_arrays.choice),
    "loss_scale_factor": _arrays.optional(_arrays.real),
    "clip_ratio_c": _arrays.real,
    "sapo_temperature_pos": _arrays.real,
    "sapo_temperature_neg": _arrays.real,
    "vespo_k_pos": _arrays.real,
    "vespo_lambda_pos": _arrays.real,
    "vespo_k_neg": _arrays.real,
    "vespo_lambda_neg": _arrays.real,
}


def checked_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """`options` (names of `policy_loss`'s keyword options) with each value checked and normalised."""
    return {name: OPTION_CHECKS[name](name, value) for name, value in options.items()}


@dataclass(frozen=True)
class LossOutput:
    """Result of :func:`policy_loss`.

    Attributes:
        loss: the scalar loss (float).
        grad: float32 ``(B, T)``, ``grad_scale * dL/dlogp``; 0 on masked-out tokens. A numpy
            array for CPU inputs, a float32 torch CUDA tensor on the inputs' device for CUDA ones.
        metrics: TRL's / verl's logged metrics for this loss type (``kl`` when ``beta != 0``, then
            the loss type's own, :func:`loss_types`: ``clip_ratio/low_mean``, ...; vanilla:
            ``pg_clipfrac``, ``ppo_kl``, ``pg_clipfrac_lower``).
    """

    loss: float
    grad: Any  # np.ndarray, or a torch CUDA tensor on the CUDA path
    metrics: Dict[str, float]


def policy_loss(
    logp: Any,
    old_logp: Any,
    advantages: Any,
    mask: Any,
    *,
    ref_logp: Any = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: Optional[float] = None,
    delta: Optional[float] = None,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    kl_estimator: str = "k3",
    kl_bias_correction: bool = True,
    max_completion_length: Optional[int] = None,
    num_items: Optional[float] = None,
    grad_scale: float = 1.0,
    loss_agg_mode: Optional[str] = None,
    loss_scale_factor: Optional[float] = None,
    clip_ratio_c: float = 3.0,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    out: Any = None,
) -> LossOutput:
    """Loss value, ``dL/dlogp`` and metrics in one fused pass (TRL 1.16 ``_compute_loss``).

    Inputs are ``(B, T)``: ``logp`` (the differentiated log-probs), ``old_logp`` (``None``:
    on-policy, ratio 1 with gradient), ``ref_logp`` (needed when ``beta != 0``), ``mask`` (bool,
    int or float weights); ``advantages`` is ``(B,)`` or ``(B, T)``. Log-probs may be float32,
    float64, float16 or bfloat16 (ml_dtypes); the gradient is float32. Masked-out tokens are never
    read (padding may hold anything); unmasked ones must be finite.

    Precision on the CPU. Every sum (loss, KL, metrics) is accumulated in float64.

    - float64 inputs, the loss types that do not clip as PPO does (cispo, sapo, vespo),
      sequence-level ratios and ``kl_estimator="low_var_kl"`` at any dtype:
      per-token math in float64 (exponential within 1e-15 relative); the loss and metrics are
      float64-exact up to summation rounding, the gradient is the float64 value rounded to
      float32 (6e-8 relative).
    - float32, bfloat16 and float16 inputs of the PPO-clipped loss types (TRL's grpo, bnpo,
      dr_grpo, dapo, luspo and verl's ``vanilla`` with any ``loss_agg_mode``) at token level,
      on an x86-64 CPU with AVX2 (elsewhere, or with ``SGPO_RS_SIMD=portable``, the float64 path
      above runs): per-token math in float32 (16 tokens per AVX-512 instruction, 8 per AVX2 one),
      with ``logp - old_logp`` and ``ref_logp - logp`` taken exactly into the
      exponential's reduced argument, the ratio within 2.5e-7 relative and k3's
      ``exp(x) - x - 1`` within 5e-7 relative at every ``x`` (a series near 0, where float32
      would cancel). Bound against the float64 path: ``|loss - loss64| <= 5e-7 * S``, ``S`` the
      same aggregation of ``|L|`` (so within 5e-7 relative unless the per-token losses cancel),
      and each gradient entry within 5e-7 of its own magnitude (so within 1e-6 of ``max|grad|``).
      Clip decisions and clip metrics are the float64 path's: a token whose ratio lies within
      1e-6 of a clip bound (vanilla's ``clip_ratio_c`` included), whose log ratio or KL gap
      exceeds 80 in magnitude (vanilla: whose log ratio reaches verl's clamp of 20), or whose
      float32 values overflow is computed in float64 instead; vanilla's ``ppo_kl`` sums the exact
      log ratios in float64 (the float64 path's value up to the order of the sums). The
      instruction set is the CPU's best; the environment variable ``SGPO_RS_SIMD``
      (``avx512``, ``avx2`` or ``portable``, read once) lowers it. AVX2 and AVX-512 give
      bit-identical results (the same fused multiply-adds).

    Per token, ``log_ratio = logp - old_logp``; ``importance_sampling_level="sequence"`` uses
    ``sum_t(log_ratio * M) / max(sum_t M, 1)`` per row (GSPO). ``r = exp(log_ratio)``.

    ``loss_type`` is one of ``sgpo_rs.LOSS_TYPES`` (TRL's ``loss_type`` values and verl's vanilla
    loss); each computes its framework's per-token objective ``L`` exactly, written out in the
    repository's docs/formulas.md (sections 2 and 3), and :func:`loss_types` gives each type's
    origin, default aggregation and metrics. The options they read:
    ``epsilon_low``/``epsilon_high`` (the clip range ``[1 - epsilon_low, 1 + epsilon_high]``;
    cispo's ratio cap is ``epsilon_high``) and ``delta`` (two-sided clipping) for the PPO-clipped
    types, ``clip_ratio_c`` (vanilla's dual clip), ``sapo_temperature_pos``/``_neg`` and
    ``vespo_k_pos``/``_lambda_pos``/``_k_neg``/``_lambda_neg``.

    KL (``beta != 0``): ``kl_estimator`` ``"k3"`` (TRL, ``exp(x) - x - 1``, ``x = ref - logp``),
    ``"low_var_kl"`` (verl's clamped k3), ``"k1"``, ``"abs"``, ``"k2"``; with
    ``kl_bias_correction`` (TRL's ``use_bias_correction_kl``) it is multiplied by ``r``.
    ``L += beta * kl``.

    Aggregation: each loss type's own (its ``aggregation`` in :func:`loss_types`; those
    normalised by ``num_items`` take TRL's ``num_items_in_batch / num_processes * grad_accum /
    steps_per_generation``, default ``max(sum M, 1)``; dr_grpo's ``max_completion_length``
    defaults to ``T``), or verl's ``loss_agg_mode`` (``"token-mean"``, ``"seq-mean-token-sum"``,
    ``"seq-mean-token-mean"``, ``"seq-mean-token-sum-norm"`` with ``loss_scale_factor``). Divide
    by gradient-accumulation steps yourself where TRL does (``sgpo_rs.torch`` does it for you).

    Gradients follow torch autograd exactly: clamps pass gradient only strictly inside their
    bounds and ``min``/``max`` split it 0.5/0.5 at ties. ``grad_scale`` multiplies ``.grad`` only.

    ``out``: a C-contiguous float32 ``(B, T)`` array (a torch CUDA tensor on the CUDA path) the
    gradient is written into and returned as ``.grad``; a training loop that reuses one buffer
    spares the page faults of a fresh 4 bytes per token each step.

    Torch CUDA tensors run the CUDA kernel on their device: ``.grad`` is then a float32 CUDA
    tensor (``sgpo_rs.torch.sgpo_loss`` wraps this as an autograd op).
    """
    options = checked_options(
        dict(
            beta=beta,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
            delta=delta,
            loss_type=loss_type,
            importance_sampling_level=importance_sampling_level,
            kl_estimator=kl_estimator,
            kl_bias_correction=kl_bias_correction,
            max_completion_length=max_completion_length,
            num_items=num_items,
            grad_scale=grad_scale,
            loss_agg_mode=loss_agg_mode,
            loss_scale_factor=loss_scale_factor,
            clip_ratio_c=clip_ratio_c,
            sapo_temperature_pos=sapo_temperature_pos,
            sapo_temperature_neg=sapo_temperature_neg,
            vespo_k_pos=vespo_k_pos,
            vespo_lambda_pos=vespo_lambda_pos,
            vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg,
        )
    )
    if _cuda.is_cuda(logp):
        loss_t, grad_t, values = _cuda.policy_loss(
            logp, old_logp, ref_logp, advantages, mask, options, out=out
        )
        return LossOutput(float(loss_t), grad_t, values)
    lp, half = _arrays.logprobs("logp", logp)
    old = _arrays.same_logprobs("old_logp", old_logp, lp, half)
    ref = _arrays.same_logprobs("ref_logp", ref_logp, lp, half)
    m = _arrays.mask(mask)
    adv = _arrays.advantages(advantages)
    loss, grad, metrics = _core.policy_loss_core(
        lp, old, ref, adv, m, half_dtype=half, options=options, out=out
    )
    return LossOutput(float(loss), grad, dict(metrics))

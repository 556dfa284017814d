"""The float64 torch autograd transcription of the policy loss: TRL 1.16's ``_compute_loss`` and
verl's vanilla loss, every option of ``sgpo_rs.policy_loss`` (docs/formulas.md, sections 2-3).

``torch_grad`` gives ``(loss, dL/dlogp)`` with torch's own tie rules for clamp/min/max (the
gradient conventions the library follows); ``trl_value_and_grad`` calls it the way TRL's trainer
does (TRL's option names, its ``num_items_in_batch`` normaliser and gradient accumulation). The
numpy module ``reference`` holds the independent forward reference; this one is for gradients.
"""

import numpy as np
import reference as ref
import torch

F64 = torch.float64


def _torch_agg(L, M, mode, *, max_completion_length=None, num_items=None, loss_scale_factor=None):
    B, T = M.shape
    LM = L * M
    row_sum, row_cnt = LM.sum(-1), M.sum(-1)
    if mode in ("grpo", "sapo"):
        return (row_sum / row_cnt.clamp(min=1.0)).mean()
    if mode == "bnpo":
        return LM.sum() / M.sum().clamp(min=1.0)
    if mode == "dr_grpo":
        return LM.sum() / (B * (T if max_completion_length is None else max_completion_length))
    if mode in ("dapo", "cispo", "vespo"):
        return LM.sum() / (M.sum().clamp(min=1.0) if num_items is None else num_items)
    if mode == "luspo":
        return row_sum.mean()
    if mode == "token-mean":
        return LM.sum() / M.sum().clamp(min=1e-30)
    valid = (row_cnt > 0).to(L.dtype)
    nvalid = valid.sum().clamp(min=1.0)
    if mode == "seq-mean-token-sum":
        return (row_sum * valid).sum() / nvalid
    if mode == "seq-mean-token-mean":
        return (row_sum / (row_cnt + 1e-8) * valid).sum() / nvalid
    if mode == "seq-mean-token-sum-norm":
        return LM.sum() / (T if loss_scale_factor is None else loss_scale_factor)
    raise ValueError(mode)


def _where(cond, a, b):
    # float64 scalars (torch.where on Python floats would round them to float32 first)
    f64 = torch.float64
    return torch.where(cond, torch.tensor(float(a), dtype=f64), torch.tensor(float(b), dtype=f64))


def torch_grad(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    ref_logp=None,
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=None,
    delta=None,
    loss_type="dapo",
    importance_sampling_level="token",
    kl_estimator="k3",
    kl_bias_correction=True,
    max_completion_length=None,
    num_items=None,
    loss_agg_mode=None,
    loss_scale_factor=None,
    clip_ratio_c=3.0,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
    grad_scale=1.0,
):
    """``(loss, dL/dlogp)`` by torch autograd in float64; clamp/min/max tie semantics are torch's."""
    M = torch.tensor(np.asarray(mask, dtype=np.float64))
    live = M != 0

    def t(x):
        return torch.where(live, torch.tensor(np.asarray(x, dtype=np.float64)), 0.0)

    lp = t(logp).requires_grad_(True)
    old = lp.detach() if old_logp is None else t(old_logp)
    A = torch.tensor(np.asarray(advantages, dtype=np.float64))
    A = A.unsqueeze(1) if A.dim() == 1 else torch.where(live, A, 0.0)
    el = epsilon_low
    eh = epsilon_low if epsilon_high is None else epsilon_high

    log_ratio = lp - old
    if importance_sampling_level == "token":
        lw = log_ratio
    else:
        lw = ((log_ratio * M).sum(-1) / M.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    if loss_type == "vanilla":
        lw = torch.clamp(lw, -20.0, 20.0)
    coef_1 = torch.exp(lw)

    if beta != 0.0:
        rf = t(ref_logp)
        if kl_estimator == "k3":
            kl = torch.exp(rf - lp) - (rf - lp) - 1
        elif kl_estimator == "low_var_kl":
            x = torch.clamp(rf - lp, -20.0, 20.0)
            kl = torch.clamp(torch.exp(x) - x - 1, -10.0, 10.0)
        elif kl_estimator == "k1":
            kl = lp - rf
        elif kl_estimator == "abs":
            kl = (lp - rf).abs()
        elif kl_estimator == "k2":
            kl = 0.5 * (lp - rf).square()
        else:
            raise ValueError(kl_estimator)
        if kl_bias_correction:
            kl = kl * coef_1

    if loss_type in ref.TRL_CLIP_TYPES:
        coef_2 = torch.clamp(coef_1, 1 - el, 1 + eh)
        c1 = coef_1 if delta is None else torch.clamp(coef_1, max=delta)
        L = -torch.min(c1 * A, coef_2 * A)
    elif loss_type == "cispo":
        L = -torch.clamp(coef_1, max=eh).detach() * A * lp
    elif loss_type == "sapo":
        temps = _where(A > 0, sapo_temperature_pos, sapo_temperature_neg)
        L = -(torch.sigmoid(temps * (coef_1 - 1)) * 4 / temps) * A
    elif loss_type == "vespo":
        with torch.no_grad():
            seq = (torch.clamp(log_ratio, -20.0, 20.0) * M).sum(-1, keepdim=True)
            log_w = torch.clamp(seq, float(np.log(1e-8)), 20.0)
            nonneg = A >= 0
            k = _where(nonneg, vespo_k_pos, vespo_k_neg)
            lam = _where(nonneg, vespo_lambda_pos, vespo_lambda_neg).clamp(min=1e-4)
            phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(0.0, 0.0, 0.0)
        L = -phi * A * lp
    elif loss_type == "vanilla":
        L1 = -A * coef_1
        L2 = -A * torch.clamp(coef_1, 1 - el, 1 + eh)
        Lc = torch.maximum(L1, L2)
        L3 = (-A * clip_ratio_c).expand_as(Lc)
        L = torch.where(A < 0, torch.min(L3, Lc), Lc)
    else:
        raise ValueError(loss_type)
    L = L.expand(M.shape)
    if beta != 0.0:
        L = L + beta * kl
    mode = loss_agg_mode or ("token-mean" if loss_type == "vanilla" else loss_type)
    loss = _torch_agg(
        L,
        M,
        mode,
        max_completion_length=max_completion_length,
        num_items=num_items,
        loss_scale_factor=loss_scale_factor,
    )
    if lp.numel():
        (loss * grad_scale).backward()
        grad = lp.grad.numpy()
    else:
        grad = np.zeros(lp.shape)
    return float(loss.detach()), grad


def trl_value_and_grad(
    lp,
    old,
    ref_lp,
    adv,
    mask,
    *,
    loss_type,
    epsilon=0.2,
    use_bias_correction_kl=True,
    max_completion_length=None,
    num_items_in_batch=None,
    current_gradient_accumulation_steps=1,
    steps_per_generation=1,
    num_processes=1,
    **options,
):
    """TRL's loss and ``d loss / d lp`` (float64 torch tensors) as its trainer computes them in
    training mode for one process: the dapo family divides by ``num_items_in_batch`` (default: the
    mask's token count) scaled by ``gas / (num_processes * steps_per_generation)``, the others by
    the gradient-accumulation steps ``gas``."""
    gas = current_gradient_accumulation_steps
    dapo_family = loss_type in ref.TRL_NUM_ITEMS_TYPES
    num_items = None
    if dapo_family:
        tokens = (
            float(mask.detach().to(F64).sum()) if num_items_in_batch is None else float(num_items_in_batch)
        )
        num_items = max(tokens, 1.0) / num_processes * gas / steps_per_generation
    scale = 1.0 if dapo_family else 1.0 / gas
    loss, grad = torch_grad(
        lp.detach(),
        None if old is None else old.detach(),
        adv.detach(),
        mask.detach(),
        ref_logp=None if ref_lp is None else ref_lp.detach(),
        loss_type=loss_type,
        epsilon_low=epsilon,
        kl_bias_correction=use_bias_correction_kl,
        max_completion_length=lp.shape[1] if max_completion_length is None else max_completion_length,
        num_items=num_items,
        grad_scale=scale,
        **options,
    )
    return torch.tensor(loss * scale, dtype=F64), torch.from_numpy(grad)

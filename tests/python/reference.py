"""Independent float64 numpy reference for sgpo-rs.

Written from the math in ``docs/design.md``, ``docs/formulas.md`` and the
public docstrings of ``sgpo_rs.{rewards,advantages,loss}`` (never from the Rust code). Where the
documents leave a detail open, TRL 1.16's ``GRPOTrainer._compute_loss`` / ``get_gamma_weights`` and
verl's ``core_algos`` decide; each such choice is commented.

Everything here is plain float64 numpy, slow and obvious on purpose: loops over groups, explicit
broadcasting with TRL's shapes ((B, 1) for per-sequence quantities), no fused tricks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import sgpo_rs

# Which loss types exist comes from the engine's registry (names only, no math): a new loss type
# reaches every suite that iterates these, and fails there until this module implements it.
LOSS_TYPES = sgpo_rs.LOSS_TYPES
TRL_CLIP_TYPES = tuple(name for name, info in sgpo_rs.loss_types().items() if info.trl_clipped)
# TRL's own rule (a fact about TRL, not read from the library): these loss types divide by
# num_items, into which TRL folds the gradient-accumulation steps; the others divide by the steps.
TRL_NUM_ITEMS_TYPES = ("dapo", "cispo", "vespo")
KL_ESTIMATORS = ("k3", "low_var_kl", "k1", "abs", "k2")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# --------------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------------


def groups(n: int, group_size: Optional[int] = None, group_ids: Any = None) -> List[np.ndarray]:
    """Row indices of each group: ``group_size`` consecutive rows (TRL), or equal ids (verl uid).

    The order of the groups is irrelevant to every quantity computed here.
    """
    if (group_size is None) == (group_ids is None):
        raise ValueError("give exactly one of group_size and group_ids")
    if group_size is not None:
        assert n % group_size == 0
        return [np.arange(s, s + group_size) for s in range(0, n, group_size)]
    ids = list(group_ids)
    assert len(ids) == n
    members: Dict[Any, List[int]] = {}
    for i, gid in enumerate(ids):
        members.setdefault(gid, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in members.values()]


# --------------------------------------------------------------------------------------------------
# SGPO rewards
# --------------------------------------------------------------------------------------------------


def sgpo_rewards(
    rewards,
    first_error=None,
    num_steps=None,
    *,
    group_size=None,
    group_ids=None,
    correct=None,
    credit_scale=0.5,
    mode="all_negative",
    credit=None,
    rule="prefix",
    beta=5.0,
    gamma=0.5,
) -> Dict[str, Any]:
    """The SGPO reward rule, with the prefix (``f(c) = c``) or logistic
    (``f(c) = 1 / (1 + exp(-beta (c - gamma)))``) credit rule: credited rows get
    ``r + credit_scale * f(c)``.

    Returns a dict with ``rewards``, ``credit``, ``all_negative``, ``diversified`` (per row) and
    ``stats`` (``num_groups``, ``all_negative_groups``, ``diversified_groups``,
    ``judge_missing_groups``, ``mean_credit``).

    Rules (docs/design.md "The SGPO reward rule" and the ``sgpo_rewards`` docstring):

    - scorable row: reward is not NaN. Unscorable rows keep NaN, get no credit and are ignored when
      deciding whether a group is all-negative or whether it misses verdicts.
    - correct: given, else ``reward > 0``; only scorable rows count.
    - judged row: ``first_error >= -1`` (or a non-NaN ``credit``); ``c = first_error / num_steps``,
      ``1`` for ``-1``. ``.credit`` holds ``c`` for every judged row (also unscorable or
      not-credited ones) and 0 for unjudged rows.
    - rows that would be credited: "all_negative": the scorable rows of a group that has at least
      one scorable row and no correct scorable row; "all_incorrect": the scorable incorrect rows of
      every group.
    - a group with rows to credit is diversified when all of them are judged, else it is a
      ``judge_missing`` group (plain GRPO, no credit given).
    - ``all_negative`` (per row / per group): the group has at least one scorable row and none of its
      scorable rows is correct. (Choice: a group whose rows are all unscorable is *not*
      all-negative - there is nothing to learn from and nothing to diversify.)
    - ``mean_credit``: mean ``c`` over credited rows, 0 when none.
    """
    r = np.asarray(rewards, dtype=np.float64)
    n = r.shape[0]
    scorable = ~np.isnan(r)
    if correct is None:
        ok = np.zeros(n, dtype=bool)
        ok[scorable] = r[scorable] > 0
    else:
        ok = np.asarray(correct).astype(bool)
    ok = ok & scorable

    if credit is not None:
        c_in = np.asarray(credit, dtype=np.float64)
        judged = ~np.isnan(c_in)
        c = np.where(judged, c_in, 0.0)
    else:
        k = np.asarray(first_error, dtype=np.int64)
        s = np.asarray(num_steps, dtype=np.int64)
        judged = k >= -1
        c = np.zeros(n, dtype=np.float64)
        for i in range(n):
            if k[i] == -1:
                c[i] = 1.0
            elif k[i] >= 0:
                c[i] = k[i] / s[i]

    out = r.copy()
    all_negative = np.zeros(n, dtype=bool)
    diversified = np.zeros(n, dtype=bool)
    stats = {
        "num_groups": 0,
        "all_negative_groups": 0,
        "diversified_groups": 0,
        "judge_missing_groups": 0,
    }
    for g in groups(n, group_size, group_ids):
        stats["num_groups"] += 1
        neg = bool(scorable[g].any() and not ok[g].any())
        if neg:
            stats["all_negative_groups"] += 1
            all_negative[g] = True
        if mode == "all_negative":
            to_credit = g[scorable[g]] if neg else g[:0]
        elif mode == "all_incorrect":
            to_credit = g[scorable[g] & ~ok[g]]
        else:
            raise ValueError(mode)
        if to_credit.size == 0:
            continue
        if judged[to_credit].all():
            stats["diversified_groups"] += 1
            diversified[to_credit] = True
            with np.errstate(over="ignore"):  # exp -> inf, 1 / inf = 0: the limit
                f = c[to_credit] if rule == "prefix" else 1.0 / (1.0 + np.exp(-beta * (c[to_credit] - gamma)))
            out[to_credit] = r[to_credit] + credit_scale * f
        else:
            stats["judge_missing_groups"] += 1
    stats["mean_credit"] = float(c[diversified].mean()) if diversified.any() else 0.0
    # Credited groups whose scorable rewards differ after the credit; the mean reward before it.
    stats["varied_groups"] = 0
    for g in groups(n, group_size, group_ids):
        if diversified[g].any():
            values = out[g][~np.isnan(out[g])].astype(np.float32)
            stats["varied_groups"] += int(values.size > 0 and values.max() > values.min())
    stats["outcome_reward_mean"] = float(r[scorable].mean()) if scorable.any() else float("nan")
    return {
        "rewards": out,
        "credit": c,
        "all_negative": all_negative,
        "diversified": diversified,
        "stats": stats,
    }


# --------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------


def _unbiased_std(x: np.ndarray) -> float:
    """Centred two-pass unbiased std of the finite values; NaN for fewer than two."""
    x = x[~np.isnan(x)]
    if x.size < 2:
        return math.nan
    mu = x.sum() / x.size
    return math.sqrt(((x - mu) ** 2).sum() / (x.size - 1))


def group_advantages(rewards, *, group_size=None, group_ids=None, scale="group", eps=1e-4, singleton="zero"):
    """TRL's advantages (consecutive groups, NaN rows left out, nan_to_num at the end), or verl's
    (``singleton="unit"``: a group with one scorable row has mean 0 and std 1)."""
    r = np.asarray(rewards, dtype=np.float64)
    n = r.shape[0]
    a = np.full(n, np.nan)
    batch_std = _unbiased_std(r)
    for g in groups(n, group_size, group_ids):
        rg = r[g]
        fin = ~np.isnan(rg)
        cnt = int(fin.sum())
        if cnt == 0:
            continue
        if cnt == 1 and singleton == "unit":
            mu, std = 0.0, 1.0
        else:
            mu = rg[fin].sum() / cnt
            std = _unbiased_std(rg) if scale != "batch" else batch_std
        if scale == "none":
            a[g] = rg - mu
        else:
            a[g] = (rg - mu) / (std + eps)
        if cnt == 1 and singleton != "unit":
            # TRL: the std of one value is NaN (or the centred value is exactly 0): advantage 0.
            a[g] = np.where(fin, 0.0, np.nan)
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def token_advantages(advantages, mask):
    a = np.asarray(advantages, dtype=np.float64)
    m = np.asarray(mask).astype(np.float64)
    return a[:, None] * m


# --------------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------------


def _sigmoid(x):
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def kl_per_token(lp, ref, estimator):
    if estimator == "k3":
        x = ref - lp
        return np.exp(x) - x - 1.0
    if estimator == "low_var_kl":
        x = np.clip(ref - lp, -20.0, 20.0)
        return np.clip(np.exp(x) - x - 1.0, -10.0, 10.0)
    if estimator == "k1":
        return lp - ref
    if estimator == "abs":
        return np.abs(lp - ref)
    if estimator == "k2":
        return 0.5 * (lp - ref) ** 2
    raise ValueError(estimator)


def _global_masked_mean(x, M, per_seq):
    """TRL's ``global_masked_mean``: a per-sequence quantity ((B, 1) in TRL) is a plain mean over all
    rows; a per-token one a token-weighted mean, ``sum(x M) / max(sum M, 1)``.

    (Choice: "per-sequence" is decided by construction - sequence-level ratio or 1-D advantages - not
    by TRL's ``x.shape[1] == 1`` test, which would also treat every T = 1 batch as per-sequence.)
    """
    if per_seq:
        return float(x[:, 0].sum() / max(x.shape[0], 1))
    x = np.broadcast_to(x, M.shape)
    return float((x * M).sum() / max(M.sum(), 1.0))


def _masked_seq_mean(x, M, per_seq):
    if per_seq:
        return x[:, 0]
    x = np.broadcast_to(x, M.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * M).sum(-1) / M.sum(-1)


def _nanmin(x):
    x = x[~np.isnan(x)]
    return float(x.min()) if x.size else math.nan


def _nanmax(x):
    x = x[~np.isnan(x)]
    return float(x.max()) if x.size else math.nan


def _verl_masked_mean(x, M):
    s = M.sum()
    return float((x * M).sum() / s) if s > 0 else 0.0


def aggregate(L, M, mode, *, max_completion_length=None, num_items=None, loss_scale_factor=None):
    """Sum a (B, T) per-token loss into the scalar loss (docs/formulas.md, sections 2 and 3)."""
    B, T = M.shape
    LM = L * M
    row_sum = LM.sum(-1)
    row_cnt = M.sum(-1)
    if mode in ("grpo", "sapo"):
        return float((row_sum / np.maximum(row_cnt, 1.0)).mean())
    if mode == "bnpo":
        return float(LM.sum() / max(M.sum(), 1.0))
    if mode == "dr_grpo":
        mcl = T if max_completion_length is None else max_completion_length
        return float(LM.sum() / (B * mcl)) if B * mcl > 0 else 0.0
    if mode in ("dapo", "cispo", "vespo"):
        norm = max(M.sum(), 1.0) if num_items is None else float(num_items)
        return float(LM.sum() / norm)
    if mode == "luspo":
        return float(row_sum.mean())
    if mode == "token-mean":
        s = M.sum()
        return float(LM.sum() / s) if s > 0 else 0.0
    valid = row_cnt > 0
    nvalid = max(int(valid.sum()), 1)
    if mode == "seq-mean-token-sum":
        return float(row_sum[valid].sum() / nvalid)
    if mode == "seq-mean-token-mean":
        return float((row_sum[valid] / (row_cnt[valid] + 1e-8)).sum() / nvalid)
    if mode == "seq-mean-token-sum-norm":
        f = T if loss_scale_factor is None else loss_scale_factor
        return float(LM.sum() / f) if f > 0 else 0.0
    raise ValueError(mode)


def policy_loss(
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
    magnitudes=False,
):
    """Forward value and metrics of the GRPO-family loss, float64. Returns ``(loss, metrics)``.

    With ``magnitudes=True`` also a dict of the same reductions applied to ``|per-token value|``
    (``"loss"``, ``"kl"``): the scale of the terms a result sums, i.e. what rounding errors of a
    correctly computed sum are relative to when the terms cancel.
    """
    M = np.asarray(mask).astype(np.float64)
    live = M != 0
    # Masked-out tokens are never read: replace them by 0 so poisoned padding cannot leak.
    lp = np.where(live, np.asarray(logp, dtype=np.float64), 0.0)
    old = lp if old_logp is None else np.where(live, np.asarray(old_logp, dtype=np.float64), 0.0)
    A = np.asarray(advantages, dtype=np.float64)
    adv_per_seq = A.ndim == 1
    A = A[:, None] if adv_per_seq else np.where(live, A, 0.0)  # TRL: (B,) -> (B, 1)
    B, T = M.shape
    el = float(epsilon_low)
    eh = el if epsilon_high is None else float(epsilon_high)
    log_ratio = lp - old

    if loss_type == "vanilla":
        # verl: the log ratio is clamped to +-20 before exp. (Choice: with
        # importance_sampling_level="sequence" the clamped per-sequence mean is used.)
        lw = log_ratio
        if importance_sampling_level == "sequence":
            lw = (log_ratio * M).sum(-1, keepdims=True) / np.maximum(M.sum(-1, keepdims=True), 1.0)
        d = np.clip(lw, -20.0, 20.0)
        r = np.exp(d)
    else:
        if importance_sampling_level == "token":
            lw = log_ratio
        elif importance_sampling_level == "sequence":
            lw = (log_ratio * M).sum(-1, keepdims=True) / np.maximum(M.sum(-1, keepdims=True), 1.0)
        else:
            raise ValueError(importance_sampling_level)
        r = np.exp(lw)

    metrics: Dict[str, float] = {}
    kl = None
    if beta != 0.0:
        ref = np.where(live, np.asarray(ref_logp, dtype=np.float64), 0.0)
        kl = kl_per_token(lp, ref, kl_estimator)
        if kl_bias_correction:
            kl = kl * r
        kl = np.broadcast_to(kl, (B, T))
        metrics["kl"] = _global_masked_mean(kl, M, per_seq=False)

    phi = None
    if loss_type in TRL_CLIP_TYPES:
        c2 = np.clip(r, 1 - el, 1 + eh)
        c1 = r if delta is None else np.minimum(r, delta)
        L = -np.minimum(c1 * A, c2 * A)
    elif loss_type == "cispo":
        L = -np.minimum(r, eh) * A * lp
    elif loss_type == "sapo":
        tau = np.where(A > 0, sapo_temperature_pos, sapo_temperature_neg)
        L = -(_sigmoid(tau * (r - 1)) * 4 / tau) * A
    elif loss_type == "vespo":
        lr_c = np.clip(log_ratio, -20.0, 20.0)
        seq = (lr_c * M).sum(-1, keepdims=True)
        log_w = np.clip(seq, math.log(1e-8), 20.0)
        w = np.exp(log_w)
        nonneg = A >= 0
        k = np.where(nonneg, vespo_k_pos, vespo_k_neg)
        lam = np.maximum(np.where(nonneg, vespo_lambda_pos, vespo_lambda_neg), 1e-4)
        with np.errstate(over="ignore", invalid="ignore"):
            phi = np.nan_to_num(np.exp(lam + k * log_w - lam * w), nan=0.0, posinf=0.0, neginf=0.0)
        L = -phi * A * lp
    elif loss_type == "vanilla":
        L1 = -A * r
        L2 = -A * np.clip(r, 1 - el, 1 + eh)
        Lc = np.maximum(L1, L2)
        L3 = -A * clip_ratio_c
        L = np.where(A < 0, np.minimum(L3, Lc), Lc)
        bL1, bL2, bLc, bL3 = (np.broadcast_to(x, (B, T)) for x in (L1, L2, Lc, L3))
        bneg = np.broadcast_to(A < 0, (B, T))
        metrics["pg_clipfrac"] = _verl_masked_mean((bL2 > bL1).astype(float), M)
        metrics["ppo_kl"] = _verl_masked_mean(np.broadcast_to(-d, (B, T)), M)
        metrics["pg_clipfrac_lower"] = _verl_masked_mean(((bLc > bL3) & bneg).astype(float), M)
    else:
        raise ValueError(loss_type)

    L = np.broadcast_to(L, (B, T))
    if kl is not None:
        L = L + beta * kl

    ratio_per_seq = importance_sampling_level == "sequence" and adv_per_seq
    if loss_type in TRL_CLIP_TYPES:
        # TRL reassigns coef_1 = clamp(coef_1, max=delta) before logging: the metrics see c1.
        low = ((c1 < 1 - el) & (A < 0)).astype(float)
        high = ((c1 > 1 + eh) & (A > 0)).astype(float)
        region = np.maximum(low, high)
        metrics["clip_ratio/low_mean"] = _global_masked_mean(low, M, ratio_per_seq)
        metrics["clip_ratio/high_mean"] = _global_masked_mean(high, M, ratio_per_seq)
        metrics["clip_ratio/region_mean"] = _global_masked_mean(region, M, ratio_per_seq)
        metrics["clip_ratio/low_min"] = _nanmin(_masked_seq_mean(low, M, ratio_per_seq))
        metrics["clip_ratio/high_max"] = _nanmax(_masked_seq_mean(high, M, ratio_per_seq))
    elif loss_type == "cispo":
        clipped = ((r > eh) & (A > 0)).astype(float)
        metrics["cispo_clip_ratio"] = _global_masked_mean(clipped, M, ratio_per_seq)
    elif loss_type == "vespo":
        metrics["vespo/phi_seq_mean"] = _global_masked_mean(phi, M, adv_per_seq)

    mode = loss_agg_mode
    if mode is None:
        mode = "token-mean" if loss_type == "vanilla" else loss_type
    agg = dict(
        max_completion_length=max_completion_length, num_items=num_items, loss_scale_factor=loss_scale_factor
    )
    loss = aggregate(L, M, mode, **agg)
    if not magnitudes:
        return loss, metrics
    sizes = {"loss": aggregate(np.abs(L), M, mode, **agg)}
    if kl is not None:
        sizes["kl"] = _global_masked_mean(np.abs(kl), M, per_seq=False)
    return loss, metrics, sizes


# --------------------------------------------------------------------------------------------------
# Shared test helpers (inputs and comparisons); not part of the reference math.
# --------------------------------------------------------------------------------------------------

MASK_KINDS = ("bool", "int64", "uint8", "float32")


def assert_close(actual, ref, rtol=1e-6, what=""):
    """float32 outputs against the float64 reference: ``rtol`` and ``atol = rtol * max(1, |ref|)``.

    The atol term covers values that should be ~0 but come out of a cancellation of O(|ref|) terms.
    """
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    finite = ref[np.isfinite(ref)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, ref, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=what)


def assert_metrics_close(actual: Dict[str, float], ref: Dict[str, float], rtol=1e-6):
    assert set(actual) == set(ref), (sorted(actual), sorted(ref))
    for key, value in ref.items():
        assert_close(actual[key], value, rtol=rtol, what=key)


def make_mask(rng, B, T, kind="bool", *, empty_row=True, density=0.75):
    live = rng.random((B, T)) < density
    if T >= 3:
        # a gap in the middle of a row (tool-call style), not only right padding
        live[:, T // 2] = False
    if empty_row and B >= 2:
        live[rng.integers(B)] = False
    if kind == "bool":
        return live
    if kind == "int64":
        return live.astype(np.int64)
    if kind == "uint8":
        return live.astype(np.uint8)
    if kind == "float32":
        return (live * rng.uniform(0.2, 1.5, size=(B, T))).astype(np.float32)
    if kind == "float64":
        return live * rng.uniform(0.2, 1.5, size=(B, T))
    if kind == "small_float32":  # rows whose weights sum to less than 1
        return (live * rng.uniform(0.02, 0.3, size=(B, T))).astype(np.float32)
    raise ValueError(kind)


def make_loss_inputs(
    rng,
    B,
    T,
    *,
    extreme=True,
    adv2d=False,
    mask_kind="bool",
    dtype=np.float32,
    empty_row=True,
    ratio_scale=0.25,
):
    """``(logp, old_logp, ref_logp, advantages, mask)``.

    Log-ratios are mostly small (around the clip range) and, with ``extreme``, about 10% of the
    tokens get a log-ratio anywhere in [-30, 30] (some exactly +-30).
    """
    lp = -rng.exponential(1.5, size=(B, T))
    lr = rng.normal(0.0, ratio_scale, size=(B, T))
    if extreme and B * T:
        wild = rng.random((B, T)) < 0.1
        lr[wild] = rng.uniform(-30.0, 30.0, size=int(wild.sum()))
        flat = lr.reshape(-1)
        flat[rng.integers(flat.size)] = 30.0
        flat[rng.integers(flat.size)] = -30.0
    old = lp - lr
    ref = lp + rng.normal(0.0, 0.5, size=(B, T))
    adv = rng.normal(size=(B, T) if adv2d else (B,)).astype(np.float32)
    mask = make_mask(rng, B, T, mask_kind, empty_row=empty_row)
    return lp.astype(dtype), old.astype(dtype), ref.astype(dtype), adv, mask

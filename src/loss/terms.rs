//! Per-token formulas of the policy loss and their derivatives, written to match torch autograd:
//! `clamp` passes gradient only strictly inside its bounds, and an elementwise `min`/`max` splits
//! the gradient 0.5/0.5 at exact ties. Every formula is branch-free (selects only) so the token
//! loop that calls it vectorises.

use super::options::KlEstimator;
use crate::numeric::exp::exp;

/// `1.0` if `cond` else `0.0`.
#[inline(always)]
pub(crate) fn flag(cond: bool) -> f64 {
    if cond {
        1.0
    } else {
        0.0
    }
}

pub(crate) use crate::numeric::clamp;

/// `d clamp(x, lo, hi) / dx`
#[inline(always)]
pub(crate) fn clamp_slope(x: f64, lo: f64, hi: f64) -> f64 {
    flag(x > lo && x < hi)
}

/// torch's backward weight of `u` in `min(u, v)`; `v` gets `1 - weight`.
#[inline(always)]
fn min_weight(u: f64, v: f64) -> f64 {
    if u < v {
        1.0
    } else if u == v {
        0.5
    } else {
        0.0
    }
}

/// One token's loss, its two derivative paths (through the importance ratio `r`:
/// `d_ratio = dL/dr`; directly through the log-probability: `d_logp`), and up to three metric
/// values the loss type logs. The metric values are an array, so the token loop that sums them
/// stays branch-free for every objective; which slot holds what is named by the objective's
/// constants ([`Clipped::LOW`], [`Vanilla::CLIPFRAC`], ...).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenTerm {
    pub loss: f64,
    pub d_ratio: f64,
    pub d_logp: f64,
    pub metrics: [f64; 3],
}

/// The metric array with `values` at their slots, 0 elsewhere (constant-folded).
#[inline(always)]
fn slots<const N: usize>(values: [(usize, f64); N]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (slot, value) in values {
        out[slot] = value;
    }
    out
}

/// A per-token policy objective (the loss type's formula). `a` is the token's advantage, `lp` its
/// log-probability, `d` its (clamped where the loss clamps it) log ratio.
pub(crate) trait Objective: Sync {
    fn term(&self, r: f64, a: f64, lp: f64, d: f64) -> TokenTerm;
}

/// TRL's clipped objective `-min(c1 A, c2 A)` with `c2 = clamp(r, 1 - el, 1 + eh)` and
/// `c1 = clamp(r, max = delta)` (`delta = inf` when unset). Metrics: TRL's low, high and region
/// clip indicators (computed on `c1`, as TRL does after the delta clamp).
pub(crate) struct Clipped {
    pub lo: f64,
    pub hi: f64,
    pub delta: f64,
}

impl Clipped {
    /// Metric slots: clipped low (`c1 < 1 - el`, `A < 0`), clipped high, either.
    pub const LOW: usize = 0;
    pub const HIGH: usize = 1;
    pub const REGION: usize = 2;
}

impl Objective for Clipped {
    #[inline(always)]
    fn term(&self, r: f64, a: f64, _lp: f64, _d: f64) -> TokenTerm {
        let c1 = r.min(self.delta);
        let dc1 = flag(r < self.delta);
        let c2 = clamp(r, self.lo, self.hi);
        let dc2 = clamp_slope(r, self.lo, self.hi);
        let (u, v) = (c1 * a, c2 * a);
        let wu = min_weight(u, v);
        let low = c1 < self.lo && a < 0.0;
        let high = c1 > self.hi && a > 0.0;
        TokenTerm {
            loss: -u.min(v),
            d_ratio: -a * (wu * dc1 + (1.0 - wu) * dc2),
            d_logp: 0.0,
            metrics: slots([
                (Self::LOW, flag(low)),
                (Self::HIGH, flag(high)),
                (Self::REGION, flag(low || high)),
            ]),
        }
    }
}

/// verl's vanilla PPO loss with dual clip: `Lc = max(-A r, -A clip(r))`; for `A < 0`,
/// `min(-A c, Lc)`. Metrics: `pg_clipfrac` (L2 > L1), `pg_clipfrac_lower`, and `-d` for `ppo_kl`.
pub(crate) struct Vanilla {
    pub lo: f64,
    pub hi: f64,
    pub clip_ratio_c: f64,
}

impl Vanilla {
    /// Metric slots: `pg_clipfrac` (L2 > L1), `pg_clipfrac_lower`, and `-d` (for `ppo_kl`).
    pub const CLIPFRAC: usize = 0;
    pub const CLIPFRAC_LOWER: usize = 1;
    pub const NEG_LOG_RATIO: usize = 2;
}

impl Objective for Vanilla {
    #[inline(always)]
    fn term(&self, r: f64, a: f64, _lp: f64, d: f64) -> TokenTerm {
        let l1 = -a * r;
        let l2 = -a * clamp(r, self.lo, self.hi);
        // max(l1, l2) = -min(-l1, -l2): l1 gets the weight of -l1 in that min.
        let w1 = min_weight(-l1, -l2);
        let lc = l1.max(l2);
        let d_lc = -a * (w1 + (1.0 - w1) * clamp_slope(r, self.lo, self.hi));
        let l3 = -a * self.clip_ratio_c;
        let negative = a < 0.0;
        // min(l3, lc): l3 is a constant, lc gets 1 - weight(l3).
        let wc = 1.0 - min_weight(l3, lc);
        TokenTerm {
            loss: if negative { l3.min(lc) } else { lc },
            d_ratio: if negative { wc * d_lc } else { d_lc },
            d_logp: 0.0,
            metrics: slots([
                (Self::CLIPFRAC, flag(l2 > l1)),
                (Self::CLIPFRAC_LOWER, flag(lc > l3 && negative)),
                (Self::NEG_LOG_RATIO, -d),
            ]),
        }
    }
}

/// CISPO: `-clamp(r, max = eh).detach() * A * lp`. Metric: `(r > eh) & (A > 0)`.
pub(crate) struct Cispo {
    pub eh: f64,
}

impl Cispo {
    /// Metric slot: the ratio capped (`r > eh`, `A > 0`).
    pub const CAPPED: usize = 0;
}

impl Objective for Cispo {
    #[inline(always)]
    fn term(&self, r: f64, a: f64, lp: f64, _d: f64) -> TokenTerm {
        let coef = r.min(self.eh);
        TokenTerm {
            loss: -coef * a * lp,
            d_ratio: 0.0,
            d_logp: -coef * a,
            metrics: slots([(Self::CAPPED, flag(r > self.eh && a > 0.0))]),
        }
    }
}

/// SAPO: `-(sigmoid(tau (r - 1)) * 4 / tau) * A`, `tau` by the sign of `A`.
pub(crate) struct Sapo {
    pub tau_pos: f64,
    pub tau_neg: f64,
}

impl Objective for Sapo {
    #[inline(always)]
    fn term(&self, r: f64, a: f64, _lp: f64, _d: f64) -> TokenTerm {
        let tau = if a > 0.0 { self.tau_pos } else { self.tau_neg };
        let s = 1.0 / (1.0 + exp(-tau * (r - 1.0)));
        TokenTerm {
            loss: -(s * 4.0 / tau) * a,
            d_ratio: -4.0 * a * s * (1.0 - s),
            d_logp: 0.0,
            metrics: [0.0; 3],
        }
    }
}

/// VESPO's detached gamma weight `phi(w) = exp(lam + k log w - lam w)` (0 where it overflows).
pub(crate) fn vespo_phi(log_w: f64, k: f64, lam: f64) -> f64 {
    let lam = lam.max(1e-4);
    let phi = (lam + k * log_w - lam * log_w.exp()).exp();
    if phi.is_finite() {
        phi
    } else {
        0.0
    }
}

/// VESPO: `-phi * A * lp` with the row's weight for `A >= 0` and `A < 0`. Metric: `phi`.
pub(crate) struct Vespo {
    pub phi_nonneg: f64,
    pub phi_neg: f64,
}

impl Vespo {
    /// Metric slot: the token's weight `phi`.
    pub const PHI: usize = 0;

    /// The weight for a token with advantage `a`.
    #[inline(always)]
    pub(crate) fn phi(&self, a: f64) -> f64 {
        if a >= 0.0 {
            self.phi_nonneg
        } else {
            self.phi_neg
        }
    }
}

impl Objective for Vespo {
    #[inline(always)]
    fn term(&self, _r: f64, a: f64, lp: f64, _d: f64) -> TokenTerm {
        let phi = self.phi(a);
        TokenTerm {
            loss: -phi * a * lp,
            d_ratio: 0.0,
            d_logp: -phi * a,
            metrics: slots([(Self::PHI, phi)]),
        }
    }
}

/// Whether [`kl`] needs `exp(ref - lp)`, and the clamp verl applies to `ref - lp` first.
pub(crate) fn kl_exp_range(estimator: KlEstimator) -> Option<(f64, f64)> {
    match estimator {
        KlEstimator::K3 => Some((f64::NEG_INFINITY, f64::INFINITY)),
        KlEstimator::LowVarKl => Some((-20.0, 20.0)),
        KlEstimator::K1 | KlEstimator::Abs | KlEstimator::K2 => None,
    }
}

/// A KL estimate `kl`, its derivative `d` with respect to `lp`, and `kl + d` computed without
/// cancellation, from the gap `x = ref - lp` and `e = exp(x)` clamped as [`kl_exp_range`] says
/// (`e` is unused by k1, abs and k2). `kl + d` is the bias-corrected KL's token-level gradient
/// over `r`: for k3 it is `-x`, where `kl` and `d` alone reach `e^|x|` and cancel.
#[inline(always)]
pub(crate) fn kl(estimator: KlEstimator, x: f64, e: f64) -> (f64, f64, f64) {
    let (kl, d) = match estimator {
        KlEstimator::K1 => (-x, 1.0),
        KlEstimator::Abs => (x.abs(), flag(x < 0.0) - flag(x > 0.0)),
        KlEstimator::K2 => (0.5 * x * x, -x),
        KlEstimator::K3 => (e - x - 1.0, 1.0 - e),
        KlEstimator::LowVarKl => {
            let clamped = clamp(x, -20.0, 20.0);
            let y = e - clamped - 1.0;
            let slope = clamp_slope(y, -10.0, 10.0) * (e - 1.0) * -clamp_slope(x, -20.0, 20.0);
            (clamp(y, -10.0, 10.0), slope)
        }
    };
    let sum = if estimator == KlEstimator::K3 {
        -x
    } else {
        kl + d
    };
    (kl, d, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite difference of `f` at `x`.
    fn fd(f: impl Fn(f64) -> f64, x: f64) -> f64 {
        let h = 1e-6;
        (f(x + h) - f(x - h)) / (2.0 * h)
    }

    #[test]
    fn derivatives_match_finite_differences_away_from_kinks() {
        let clipped = Clipped {
            lo: 0.8,
            hi: 1.2,
            delta: 1.5,
        };
        let vanilla = Vanilla {
            lo: 0.8,
            hi: 1.2,
            clip_ratio_c: 3.0,
        };
        let sapo = Sapo {
            tau_pos: 1.0,
            tau_neg: 1.05,
        };
        for &r in &[0.3, 0.95, 1.1, 1.7, 4.0] {
            for &a in &[-1.3, 0.7] {
                let objectives: [&dyn Objective; 3] = [&clipped, &vanilla, &sapo];
                for p in objectives {
                    let t = p.term(r, a, -1.0, 0.0);
                    let g = fd(|r| p.term(r, a, -1.0, 0.0).loss, r);
                    assert!((t.d_ratio - g).abs() < 1e-6, "r={r} a={a}");
                }
            }
        }
        for est in [
            KlEstimator::K1,
            KlEstimator::Abs,
            KlEstimator::K2,
            KlEstimator::K3,
            KlEstimator::LowVarKl,
        ] {
            for &lp in &[-3.0, -0.5] {
                let kl_at = |lp: f64| {
                    let x: f64 = -1.0 - lp;
                    kl(est, x, x.clamp(-20.0, 20.0).exp())
                };
                let (kl_value, d, sum) = kl_at(lp);
                assert!((kl_value + d - sum).abs() < 1e-12, "{est:?}");
                assert!((d - fd(|lp| kl_at(lp).0, lp)).abs() < 1e-6, "{est:?}");
            }
        }
    }

    #[test]
    fn ties_split_like_torch() {
        let clipped = Clipped {
            lo: 0.8,
            hi: 1.2,
            delta: f64::INFINITY,
        };
        // Inside the clip range c1 == c2: torch splits 0.5/0.5 and the slope is -A.
        assert_eq!(clipped.term(1.0, 2.0, 0.0, 0.0).d_ratio, -2.0);
        // At the clamp boundary torch passes no gradient through the clamp.
        assert_eq!(clipped.term(1.2, -1.0, 0.0, 0.0).d_ratio, 0.5);
    }
}

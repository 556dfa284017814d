//! Per-token formulas of the policy loss and their derivatives, written to match torch autograd:
//! `clamp` passes gradient only strictly inside its bounds, and an elementwise `min`/`max` splits
//! the gradient 0.5/0.5 at exact ties.

use super::options::KlEstimator;

/// `d clamp(x, lo, hi) / dx`
#[inline(always)]
pub(crate) fn clamp_slope(x: f64, lo: f64, hi: f64) -> f64 {
    if x > lo && x < hi {
        1.0
    } else {
        0.0
    }
}

/// `min(u, v)` with the weights torch's backward gives `(du, dv)`.
#[inline(always)]
pub(crate) fn min_split(u: f64, v: f64) -> (f64, f64, f64) {
    if u < v {
        (u, 1.0, 0.0)
    } else if v < u {
        (v, 0.0, 1.0)
    } else {
        (u, 0.5, 0.5)
    }
}

/// `max(u, v)` with torch's backward weights `(du, dv)`.
#[inline(always)]
pub(crate) fn max_split(u: f64, v: f64) -> (f64, f64, f64) {
    let (m, dv, du) = min_split(v, u);
    (m, du, dv)
}

/// One token's loss and its two derivative paths: through the importance ratio `r`
/// (`d_ratio = dL/dr`) and directly through the log-probability (`d_logp`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenTerm {
    pub loss: f64,
    pub d_ratio: f64,
    pub d_logp: f64,
}

/// TRL's clipped objective `-min(c1 A, c2 A)` with `c2 = clamp(r, 1 - el, 1 + eh)` and
/// `c1 = clamp(r, max = delta)` when `delta` is set, else `r`.
#[inline(always)]
pub(crate) fn clipped(r: f64, a: f64, lo: f64, hi: f64, delta: Option<f64>) -> TokenTerm {
    let (c1, dc1) = match delta {
        Some(delta) => (r.min(delta), if r < delta { 1.0 } else { 0.0 }),
        None => (r, 1.0),
    };
    let c2 = r.clamp(lo, hi);
    let dc2 = clamp_slope(r, lo, hi);
    let (m, wu, wv) = min_split(c1 * a, c2 * a);
    TokenTerm {
        loss: -m,
        d_ratio: -a * (wu * dc1 + wv * dc2),
        d_logp: 0.0,
    }
}

/// verl's vanilla PPO loss with dual clip: `Lc = max(-A r, -A clip(r))`; for `A < 0`,
/// `min(-A c, Lc)`. Returns the term plus the metric flags `(L2 > L1, Lc > L3 and A < 0)`.
#[inline(always)]
pub(crate) fn vanilla(r: f64, a: f64, lo: f64, hi: f64, c: f64) -> (TokenTerm, bool, bool) {
    let l1 = -a * r;
    let l2 = -a * r.clamp(lo, hi);
    let (lc, w1, w2) = max_split(l1, l2);
    let d_lc = w1 * -a + w2 * -a * clamp_slope(r, lo, hi);
    let clipped_high = l2 > l1;
    if a < 0.0 {
        let l3 = -a * c;
        let (m, w3, wc) = min_split(l3, lc);
        let _ = w3; // L3 is a constant: no gradient.
        (
            TokenTerm {
                loss: m,
                d_ratio: wc * d_lc,
                d_logp: 0.0,
            },
            clipped_high,
            lc > l3,
        )
    } else {
        (
            TokenTerm {
                loss: lc,
                d_ratio: d_lc,
                d_logp: 0.0,
            },
            clipped_high,
            false,
        )
    }
}

/// CISPO: `-clamp(r, max = eh).detach() * A * lp`.
#[inline(always)]
pub(crate) fn cispo(r: f64, a: f64, lp: f64, eh: f64) -> TokenTerm {
    let coef = r.min(eh);
    TokenTerm {
        loss: -coef * a * lp,
        d_ratio: 0.0,
        d_logp: -coef * a,
    }
}

/// SAPO: `-(sigmoid(tau (r - 1)) * 4 / tau) * A`, `tau` by the sign of `A`.
#[inline(always)]
pub(crate) fn sapo(r: f64, a: f64, tau_pos: f64, tau_neg: f64) -> TokenTerm {
    let tau = if a > 0.0 { tau_pos } else { tau_neg };
    let s = 1.0 / (1.0 + (-tau * (r - 1.0)).exp());
    TokenTerm {
        loss: -(s * 4.0 / tau) * a,
        d_ratio: -4.0 * a * s * (1.0 - s),
        d_logp: 0.0,
    }
}

/// VESPO's detached gamma weight `phi(w) = exp(lam + k log w - lam w)` (0 where it overflows).
#[inline(always)]
pub(crate) fn vespo_phi(log_w: f64, k: f64, lam: f64) -> f64 {
    let lam = lam.max(1e-4);
    let phi = (lam + k * log_w - lam * log_w.exp()).exp();
    if phi.is_finite() {
        phi
    } else {
        0.0
    }
}

/// VESPO: `-phi * A * lp`.
#[inline(always)]
pub(crate) fn vespo(phi: f64, a: f64, lp: f64) -> TokenTerm {
    TokenTerm {
        loss: -phi * a * lp,
        d_ratio: 0.0,
        d_logp: -phi * a,
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

/// A KL estimate and its derivative with respect to `lp`. `e` is `exp(ref - lp)` clamped as
/// [`kl_exp_range`] says (computed in the vectorised pass; unused by k1, abs and k2).
#[inline(always)]
pub(crate) fn kl(estimator: KlEstimator, lp: f64, reference: f64, e: f64) -> (f64, f64) {
    match estimator {
        KlEstimator::K1 => (lp - reference, 1.0),
        KlEstimator::Abs => {
            let d = lp - reference;
            let slope = if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            };
            (d.abs(), slope)
        }
        KlEstimator::K2 => {
            let d = lp - reference;
            (0.5 * d * d, d)
        }
        KlEstimator::K3 => {
            let x = reference - lp;
            (e - x - 1.0, 1.0 - e)
        }
        KlEstimator::LowVarKl => {
            let raw = reference - lp;
            let x = raw.clamp(-20.0, 20.0);
            let y = e - x - 1.0;
            let value = y.clamp(-10.0, 10.0);
            let slope = clamp_slope(y, -10.0, 10.0) * (e - 1.0) * -clamp_slope(raw, -20.0, 20.0);
            (value, slope)
        }
    }
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
        for &r in &[0.3, 0.95, 1.1, 1.7] {
            for &a in &[-1.3, 0.7] {
                let t = clipped(r, a, 0.8, 1.2, Some(1.5));
                let g = fd(|r| clipped(r, a, 0.8, 1.2, Some(1.5)).loss, r);
                assert!((t.d_ratio - g).abs() < 1e-6, "clipped r={r} a={a}");
                let t = sapo(r, a, 1.0, 1.05);
                assert!((t.d_ratio - fd(|r| sapo(r, a, 1.0, 1.05).loss, r)).abs() < 1e-6);
                let (t, _, _) = vanilla(r, a, 0.8, 1.2, 3.0);
                let g = fd(|r| vanilla(r, a, 0.8, 1.2, 3.0).0.loss, r);
                assert!((t.d_ratio - g).abs() < 1e-6, "vanilla r={r} a={a}");
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
                let (_, d) = kl(est, lp, -1.0);
                assert!(
                    (d - fd(|lp| kl(est, lp, -1.0).0, lp)).abs() < 1e-6,
                    "{est:?}"
                );
            }
        }
    }

    #[test]
    fn ties_split_like_torch() {
        // Inside the clip range c1 == c2: torch splits 0.5/0.5 and the slope is -A.
        let t = clipped(1.0, 2.0, 0.8, 1.2, None);
        assert_eq!(t.d_ratio, -2.0);
        // At the clamp boundary torch passes no gradient through the clamp.
        let t = clipped(1.2, -1.0, 0.8, 1.2, None);
        assert_eq!(t.d_ratio, 0.5);
    }
}

//! Group-normalised advantages (TRL and verl semantics) and their broadcast over tokens.
//!
//! `A_i = (R_i - mean_g) / (std + eps)` with the unbiased (Bessel) standard deviation. Statistics
//! use a two-pass, centred variance accumulated in f64: the one-pass `E[x^2] - E[x]^2` form loses
//! the small spreads that judge-diversified rewards have (verl issue 6348: rewards
//! `[1.0, 1.00001]` with eps 1e-6 must give +-0.6196).

use rayon::prelude::*;

use crate::elem::{is_valid_weight, MaskElem};
use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::rows::Rows;

/// What the centred reward is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The group's own standard deviation (TRL `scale_rewards="group"`, verl).
    Group,
    /// The standard deviation of the whole batch (TRL `"batch"`); the mean stays per group.
    Batch,
    /// No division: `A_i = R_i - mean_g` (TRL `"none"`, verl `norm_adv_by_std_in_grpo=False`).
    None,
}

impl Scale {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "group" => Ok(Scale::Group),
            "batch" => Ok(Scale::Batch),
            "none" => Ok(Scale::None),
            other => Err(Error::Choice {
                arg: "scale",
                allowed: "\"group\", \"batch\", \"none\"".into(),
                got: other.to_string(),
            }),
        }
    }
}

/// What a group with a single scorable row gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Singleton {
    /// Advantage 0: its std is undefined (TRL: NaN, then `nan_to_num`).
    Zero,
    /// Mean 0 and std 1, so `A = R / (1 + eps)` (verl).
    Unit,
}

impl Singleton {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "zero" => Ok(Singleton::Zero),
            "unit" => Ok(Singleton::Unit),
            other => Err(Error::Choice {
                arg: "singleton",
                allowed: "\"zero\", \"unit\"".into(),
                got: other.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvantageOptions {
    pub scale: Scale,
    pub eps: f64,
    pub singleton: Singleton,
}

impl AdvantageOptions {
    /// TRL's `GRPOTrainer` defaults.
    pub const TRL: AdvantageOptions = AdvantageOptions {
        scale: Scale::Group,
        eps: 1e-4,
        singleton: Singleton::Zero,
    };
    /// verl's `compute_grpo_outcome_advantage` defaults.
    pub const VERL: AdvantageOptions = AdvantageOptions {
        scale: Scale::Group,
        eps: 1e-6,
        singleton: Singleton::Unit,
    };
}

/// Mean and unbiased std of the non-NaN values yielded by `values` (two passes, f64).
/// `std` is NaN when fewer than two values count.
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (usize, f64, f64) {
    let (mut n, mut sum) = (0usize, 0.0f64);
    for v in values.clone().filter(|v| !v.is_nan()) {
        n += 1;
        sum += v;
    }
    if n == 0 {
        return (0, f64::NAN, f64::NAN);
    }
    let mean = sum / n as f64;
    if n < 2 {
        return (n, mean, f64::NAN);
    }
    let centred: f64 = values
        .filter(|v| !v.is_nan())
        .map(|v| (v - mean) * (v - mean))
        .sum();
    (n, mean, (centred / (n - 1) as f64).sqrt())
}

/// Group-normalised advantages of per-row rewards. NaN rewards mark unscorable rows: they are left
/// out of every statistic and get advantage 0, as do rows whose statistics are undefined.
pub fn group_advantages(
    rewards: &[f64],
    groups: &Groups,
    options: AdvantageOptions,
) -> Result<Vec<f32>> {
    groups.check_rows("rewards", rewards.len())?;
    if !options.eps.is_finite() || options.eps < 0.0 {
        return Err(Error::value(
            "eps",
            format!("expected a finite value >= 0, got {}", options.eps),
        ));
    }
    if let Some(row) = rewards.iter().position(|r| r.is_infinite()) {
        return Err(Error::NonFinite {
            arg: "rewards",
            value: rewards[row],
            at: format!("row {row} (NaN marks an unscorable row; infinity is not allowed)"),
        });
    }
    let batch_std = match options.scale {
        Scale::Batch => mean_std(rewards.iter().copied()).2,
        _ => f64::NAN,
    };
    // (mean, divisor) per group; a NaN divisor or mean gives advantage 0.
    let stats: Vec<(f64, f64)> = (0..groups.num_groups())
        .map(|g| {
            let (n, mean, std) = mean_std(groups.members(g).map(|row| rewards[row]));
            if n == 1 && options.singleton == Singleton::Unit {
                return (
                    0.0,
                    if options.scale == Scale::None {
                        1.0
                    } else {
                        1.0 + options.eps
                    },
                );
            }
            let divisor = match options.scale {
                Scale::Group => std + options.eps,
                Scale::Batch => batch_std + options.eps,
                Scale::None => 1.0,
            };
            (mean, divisor)
        })
        .collect();
    let mut out = vec![0.0f32; rewards.len()];
    for (row, slot) in out.iter_mut().enumerate() {
        let (mean, divisor) = stats[groups.group_of(row)];
        let a = (rewards[row] - mean) / divisor;
        if a.is_nan() {
            // TRL's nan_to_num: unscorable rows and undefined statistics give 0.
            continue;
        }
        let a32 = a as f32;
        if !a32.is_finite() {
            return Err(Error::Overflow {
                arg: "rewards",
                detail: format!("the advantage of row {row} is {a}; rescale the rewards"),
            });
        }
        *slot = a32;
    }
    Ok(out)
}

/// Rows per rayon task: large enough that scheduling is noise next to the copy.
const TOKEN_ROWS_PER_TASK: usize = 16;

/// `out[i, t] = advantages[i] * mask[i, t]` for an `(N, L)` row-major mask, in one pass.
pub fn token_advantages<M: MaskElem>(
    advantages: &[f32],
    mask: &[M],
    len: usize,
    out: &mut [f32],
) -> Result<()> {
    let rows = advantages.len();
    if rows.checked_mul(len) != Some(mask.len()) {
        return Err(Error::shape(
            "mask",
            format!("({rows}, L) matching advantages ({rows},)"),
            format!("{} elements", mask.len()),
        ));
    }
    token_advantages_rows(advantages, Rows::contiguous("mask", mask, rows, len)?, out)
}

/// `(N, L)` from the shapes of `advantages` (`(N,)`) and `mask` (`(N, L)`), with one message for
/// every entry point.
pub fn token_shape(advantages: &[usize], mask: &[usize]) -> Result<(usize, usize)> {
    let &[rows] = advantages else {
        return Err(Error::shape(
            "advantages",
            "(N,) (one value per row)",
            crate::error::shape_text(advantages),
        ));
    };
    match *mask {
        [r, len] if r == rows => Ok((rows, len)),
        _ => Err(Error::shape(
            "mask",
            format!("({rows}, L) matching advantages ({rows},)"),
            crate::error::shape_text(mask),
        )),
    }
}

/// [`token_advantages`] over mask rows that may stand apart (a column slice of a wider mask);
/// `out` is C-contiguous `(N, L)`.
pub fn token_advantages_rows<M: MaskElem>(
    advantages: &[f32],
    mask: Rows<'_, M>,
    out: &mut [f32],
) -> Result<()> {
    let (rows, len) = (advantages.len(), mask.len());
    if mask.num_rows() != rows {
        return Err(Error::shape(
            "mask",
            format!("({rows}, L) matching advantages ({rows},)"),
            format!("({}, {len})", mask.num_rows()),
        ));
    }
    if out.len() != rows * len {
        return Err(Error::shape(
            "out",
            format!("({rows}, {len})"),
            format!("{} elements", out.len()),
        ));
    }
    if let Some(row) = advantages.iter().position(|a| !a.is_finite()) {
        return Err(Error::NonFinite {
            arg: "advantages",
            value: advantages[row] as f64,
            at: format!("row {row}"),
        });
    }
    if mask.is_empty() {
        return Ok(());
    }
    let bad = out
        .par_chunks_mut(TOKEN_ROWS_PER_TASK * len)
        .enumerate()
        .map(|(task, out)| {
            let first_row = task * TOKEN_ROWS_PER_TASK;
            let mut bad: Option<(usize, usize, f32)> = None;
            for (r, out) in out.chunks_mut(len).enumerate() {
                let row = first_row + r;
                let (a, mask) = (advantages[row], mask.row(row));
                let mut all_valid = true;
                for (o, &m) in out.iter_mut().zip(mask) {
                    let w = m.weight();
                    *o = a * w;
                    // A weight of 3e38 times an advantage of 2 overflows: reject, as bad weights.
                    all_valid &= !M::NEEDS_CHECK || (is_valid_weight(w) && o.is_finite());
                }
                if !all_valid && bad.is_none() {
                    let t = mask
                        .iter()
                        .position(|m| !is_valid_weight(m.weight()))
                        .unwrap_or(0);
                    bad = Some((row, t, mask[t].weight()));
                }
            }
            bad
        })
        .find_first(|bad| bad.is_some())
        .flatten();
    if let Some((row, t, w)) = bad {
        return Err(Error::value(
            "mask",
            format!("expected finite weights >= 0, got {w} at ({row}, {t})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_variance_group_keeps_its_scale() {
        // verl issue 6348: a one-pass variance with a floor gave +-0.005 here. Exact value:
        // 5e-6 / (sqrt(2) * 5e-6 + 1e-6) = 0.619497.
        let groups = Groups::contiguous(2, 2).unwrap();
        let a = group_advantages(&[1.0, 1.00001], &groups, AdvantageOptions::VERL).unwrap();
        let expected = 5e-6 / (2f64.sqrt() * 5e-6 + 1e-6);
        assert!(
            (a[1] as f64 - expected).abs() < 1e-5 && a[0] == -a[1],
            "{a:?}"
        );
    }

    #[test]
    fn nan_rows_and_singletons_give_zero_in_trl_semantics() {
        let groups = Groups::contiguous(4, 2).unwrap();
        let a =
            group_advantages(&[1.0, f64::NAN, 0.0, 2.0], &groups, AdvantageOptions::TRL).unwrap();
        assert_eq!(&a[..2], &[0.0, 0.0]);
        assert!(a[2] < 0.0 && a[3] > 0.0);
    }

    #[test]
    fn verl_singleton_has_unit_std() {
        let groups = Groups::from_ids(&[5, 6, 5]).unwrap();
        let a = group_advantages(&[1.0, 3.0, 0.0], &groups, AdvantageOptions::VERL).unwrap();
        assert!((a[1] as f64 - 3.0 / (1.0 + 1e-6)).abs() < 1e-6);
    }

    #[test]
    fn token_broadcast_multiplies_by_mask() {
        let mut out = vec![f32::NAN; 6];
        token_advantages(&[2.0, -1.0], &[1i64, 1, 0, 0, 1, 1], 3, &mut out).unwrap();
        assert_eq!(out, vec![2.0, 2.0, 0.0, 0.0, -1.0, -1.0]);
        let err = token_advantages(&[2.0], &[1.0f32, f32::NAN], 2, &mut out[..2]).unwrap_err();
        assert!(matches!(err, Error::Value { arg: "mask", .. }));
    }
}

//! The SGPO reward rule: give the responses of an all-wrong group credit for how far they got
//! before their first wrong step, so the group's rewards differ and its advantages are non-zero.
//!
//! Per row `i`: outcome reward `r_i`, correctness (`correct_i`, default `r_i > 0`) and the judge's
//! verdict. The verdict is either `first_error_i` of `num_steps_i` (0-based index of the earliest
//! wrong step; `-1` the judge found none; `-2` not judged) or a credit in `[0, 1]` given directly
//! (NaN = not judged). Prefix credit is `c_i = first_error_i / num_steps_i`, and `1` for `-1`.
//! A group is diversified when it is eligible (mode) and every row that would be credited has a
//! verdict; then `r'_i = r_i + credit_scale * f(c_i)` on those rows, `f` the credit rule
//! ([`crate::credit_rule`]: `c` itself, or the paper's logistic map). Rows whose reward is NaN are
//! "unscorable" (TRL's convention): they keep NaN, are never credited, and do not count when
//! deciding whether a group is all-negative.

pub use crate::credit_rule::CreditRule;
use crate::error::{Error, Result};
use crate::groups::Groups;

/// A verdict meaning "the judge found no wrong step".
pub const NO_ERROR_FOUND: i64 = -1;
/// A verdict meaning "not judged" (or the judge failed).
pub const NOT_JUDGED: i64 = -2;

/// Which groups get credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiversifyMode {
    /// Only groups whose scorable responses are all incorrect (the paper's setting).
    AllNegative,
    /// Incorrect responses of every group, mixed groups included (an extension: keep
    /// `credit_scale` below the correct/incorrect reward margin).
    AllIncorrect,
}

impl DiversifyMode {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "all_negative" => Ok(DiversifyMode::AllNegative),
            "all_incorrect" => Ok(DiversifyMode::AllIncorrect),
            other => Err(Error::Choice {
                arg: "mode",
                allowed: "\"all_negative\", \"all_incorrect\"".into(),
                got: other.to_string(),
            }),
        }
    }
}

/// The judge's verdicts, one per row.
#[derive(Debug, Clone, Copy)]
pub enum Verdicts<'a> {
    /// Step verdicts: `first_error` in `{-2, -1, 0 .. num_steps - 1}`.
    Steps {
        first_error: &'a [i64],
        num_steps: &'a [i64],
    },
    /// Credits in `[0, 1]` computed elsewhere (PRM min/product rules); NaN = not judged.
    Credit(&'a [f64]),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardOptions {
    pub credit_scale: f64,
    pub mode: DiversifyMode,
    /// How a score becomes credit: the added reward is `credit_scale * rule.apply(c)`.
    pub rule: CreditRule,
}

impl Default for RewardOptions {
    fn default() -> Self {
        RewardOptions {
            credit_scale: 0.5,
            mode: DiversifyMode::AllNegative,
            rule: CreditRule::Prefix,
        }
    }
}

/// Group counts, as logged under `sgpo/*`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardStats {
    pub num_groups: usize,
    /// Groups with at least one scorable row and no correct scorable row.
    pub all_negative_groups: usize,
    /// Groups in which at least one row received credit.
    pub diversified_groups: usize,
    /// Eligible groups left as plain GRPO because a row that needed a verdict had none.
    pub judge_missing_groups: usize,
    /// Mean score `c_i` over the credited rows (0 when none was credited), before the rule.
    pub mean_credit: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SgpoRewards {
    /// Diversified rewards (float32); equal to the input on rows that got no credit.
    pub rewards: Vec<f32>,
    /// Credit `c_i` in `[0, 1]` of every judged row; 0 on rows without a verdict.
    pub credit: Vec<f32>,
    /// Row belongs to an all-negative group.
    pub all_negative: Vec<bool>,
    /// Row received `credit_scale * f(c_i)`.
    pub diversified: Vec<bool>,
    pub stats: RewardStats,
}

/// Credit of one row, `None` when the row has no verdict. Validates the row's verdict.
fn row_credit(verdicts: &Verdicts<'_>, row: usize) -> Result<Option<f64>> {
    match *verdicts {
        Verdicts::Steps {
            first_error,
            num_steps,
        } => {
            let (k, n) = (first_error[row], num_steps[row]);
            if n < 0 {
                return Err(Error::value(
                    "num_steps",
                    format!("expected values >= 1, got {n} at row {row}"),
                ));
            }
            if k < NOT_JUDGED {
                return Err(Error::value(
                    "first_error",
                    format!("expected -2 (not judged), -1 (no wrong step) or a step index >= 0, got {k} at row {row}"),
                ));
            }
            if k == NOT_JUDGED {
                return Ok(None);
            }
            if n == 0 {
                return Err(Error::value(
                    "num_steps",
                    format!(
                        "expected values >= 1 on judged rows, got 0 at row {row} (first_error {k})"
                    ),
                ));
            }
            if k >= n {
                return Err(Error::value(
                    "first_error",
                    format!("expected a step index below num_steps ({n}), got {k} at row {row}"),
                ));
            }
            if k == NO_ERROR_FOUND {
                Ok(Some(1.0))
            } else {
                Ok(Some(k as f64 / n as f64))
            }
        }
        Verdicts::Credit(credit) => {
            let c = credit[row];
            if c.is_nan() {
                Ok(None)
            } else if (0.0..=1.0).contains(&c) {
                Ok(Some(c))
            } else {
                Err(Error::value(
                    "credit",
                    format!("expected values in [0, 1] (NaN = not judged), got {c} at row {row}"),
                ))
            }
        }
    }
}

/// Applies the SGPO reward rule to one batch.
pub fn sgpo_rewards(
    rewards: &[f64],
    verdicts: Verdicts<'_>,
    correct: Option<&[bool]>,
    groups: &Groups,
    options: RewardOptions,
) -> Result<SgpoRewards> {
    groups.check_rows("rewards", rewards.len())?;
    match verdicts {
        Verdicts::Steps {
            first_error,
            num_steps,
        } => {
            groups.check_rows("first_error", first_error.len())?;
            groups.check_rows("num_steps", num_steps.len())?;
        }
        Verdicts::Credit(credit) => groups.check_rows("credit", credit.len())?,
    }
    if let Some(correct) = correct {
        groups.check_rows("correct", correct.len())?;
    }
    if !options.credit_scale.is_finite() || options.credit_scale < 0.0 {
        return Err(Error::value(
            "credit_scale",
            format!("expected a finite value >= 0, got {}", options.credit_scale),
        ));
    }
    options.rule.validate()?;
    if let Some(row) = rewards.iter().position(|r| r.is_infinite()) {
        return Err(Error::NonFinite {
            arg: "rewards",
            value: rewards[row],
            at: format!("row {row} (NaN marks an unscorable row; infinity is not allowed)"),
        });
    }

    let num_rows = rewards.len();
    let mut credit = vec![0.0f32; num_rows];
    let mut row_credits = Vec::with_capacity(num_rows);
    for (row, slot) in credit.iter_mut().enumerate() {
        let c = row_credit(&verdicts, row)?;
        *slot = c.unwrap_or(0.0) as f32;
        row_credits.push(c);
    }
    let is_correct = |row: usize| match correct {
        Some(correct) => correct[row],
        None => rewards[row] > 0.0,
    };

    let mut out = SgpoRewards {
        rewards: rewards.iter().map(|&r| r as f32).collect(),
        credit,
        all_negative: vec![false; num_rows],
        diversified: vec![false; num_rows],
        stats: RewardStats {
            num_groups: groups.num_groups(),
            ..RewardStats::default()
        },
    };
    let mut credit_sum = 0.0f64;
    let mut credited_rows = 0usize;
    for g in 0..groups.num_groups() {
        let scorable = || groups.members(g).filter(|&row| !rewards[row].is_nan());
        let any_scorable = scorable().next().is_some();
        let all_negative = any_scorable && !scorable().any(is_correct);
        if all_negative {
            out.stats.all_negative_groups += 1;
            for row in groups.members(g) {
                out.all_negative[row] = true;
            }
        }
        let eligible = match options.mode {
            DiversifyMode::AllNegative => all_negative,
            DiversifyMode::AllIncorrect => true,
        };
        let mut to_credit = scorable().filter(|&row| !is_correct(row)).peekable();
        if !eligible || to_credit.peek().is_none() {
            continue;
        }
        let to_credit: Vec<usize> = to_credit.collect();
        if to_credit.iter().any(|&row| row_credits[row].is_none()) {
            out.stats.judge_missing_groups += 1;
            continue;
        }
        out.stats.diversified_groups += 1;
        for row in to_credit {
            let c = row_credits[row].unwrap_or(0.0);
            out.rewards[row] = (rewards[row] + options.credit_scale * options.rule.apply(c)) as f32;
            out.diversified[row] = true;
            credit_sum += c;
            credited_rows += 1;
        }
    }
    if credited_rows > 0 {
        out.stats.mean_credit = credit_sum / credited_rows as f64;
    }
    if let Some(row) = out.rewards.iter().position(|r| r.is_infinite()) {
        return Err(Error::Overflow {
            arg: "rewards",
            detail: format!(
                "the reward of row {row} does not fit float32; rescale the rewards or credit_scale"
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps<'a>(first_error: &'a [i64], num_steps: &'a [i64]) -> Verdicts<'a> {
        Verdicts::Steps {
            first_error,
            num_steps,
        }
    }

    #[test]
    fn all_negative_group_gets_prefix_credit() {
        let groups = Groups::contiguous(4, 2).unwrap();
        let out = sgpo_rewards(
            &[0.0, 0.0, 1.0, 0.0],
            steps(&[1, 3, -2, 0], &[4, 4, 2, 2]),
            None,
            &groups,
            RewardOptions::default(),
        )
        .unwrap();
        assert_eq!(out.rewards, vec![0.125, 0.375, 1.0, 0.0]);
        assert_eq!(out.diversified, vec![true, true, false, false]);
        assert_eq!(out.all_negative, vec![true, true, false, false]);
        assert_eq!(out.stats.diversified_groups, 1);
        assert_eq!(out.stats.all_negative_groups, 1);
        assert!((out.stats.mean_credit - 0.5).abs() < 1e-12);
    }

    #[test]
    fn unjudged_row_leaves_group_plain() {
        let groups = Groups::contiguous(2, 2).unwrap();
        let out = sgpo_rewards(
            &[0.0, 0.0],
            steps(&[-1, -2], &[3, 3]),
            None,
            &groups,
            RewardOptions::default(),
        )
        .unwrap();
        assert_eq!(out.rewards, vec![0.0, 0.0]);
        assert_eq!(out.stats.judge_missing_groups, 1);
        assert_eq!(out.credit, vec![1.0, 0.0]);
    }

    #[test]
    fn all_incorrect_mode_credits_mixed_groups() {
        let groups = Groups::contiguous(3, 3).unwrap();
        let options = RewardOptions {
            credit_scale: 0.5,
            mode: DiversifyMode::AllIncorrect,
            ..RewardOptions::default()
        };
        let out = sgpo_rewards(
            &[1.0, 0.0, 0.0],
            steps(&[-2, 1, 0], &[0, 2, 2]),
            None,
            &groups,
            options,
        )
        .unwrap();
        assert_eq!(out.rewards, vec![1.0, 0.25, 0.0]);
        assert_eq!(out.all_negative, vec![false; 3]);
    }

    #[test]
    fn bad_verdicts_are_rejected_with_their_argument() {
        let groups = Groups::contiguous(1, 1).unwrap();
        let run = |k: i64, n: i64| {
            sgpo_rewards(
                &[0.0],
                steps(&[k], &[n]),
                None,
                &groups,
                RewardOptions::default(),
            )
        };
        assert!(matches!(
            run(-3, 2),
            Err(Error::Value {
                arg: "first_error",
                ..
            })
        ));
        assert!(matches!(
            run(2, 2),
            Err(Error::Value {
                arg: "first_error",
                ..
            })
        ));
        assert!(matches!(
            run(0, 0),
            Err(Error::Value {
                arg: "num_steps",
                ..
            })
        ));
        assert!(matches!(
            run(-2, -1),
            Err(Error::Value {
                arg: "num_steps",
                ..
            })
        ));
        assert!(run(-2, 0).is_ok());
    }
}

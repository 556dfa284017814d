//! How a response's trajectory score becomes reward credit.
//!
//! The judge gives each wrong response a score `c` in `[0, 1]`: the share of its reasoning before
//! the first wrong step (by steps, or by length). The credit rule maps it to the amount added to
//! the reward, `credit_scale * f(c)`:
//! - `Prefix`: `f(c) = c`, linear in how far the response got.
//! - `Logistic { beta, gamma }`: `f(c) = sigma(beta * (c - gamma))`, the paper's map (with
//!   `credit_scale = 1` on 0/1 rewards a wrong response's reward becomes `sigma(..)` in place of
//!   0). `beta > 0` sets the steepness and `gamma` the score at which the credit is one half. It
//!   squeezes the extremes: scores far below `gamma` earn almost nothing and scores far above
//!   almost the full amount. Group normalisation removes an affine change of the rewards, not
//!   this one, so the two rules give different advantages.
//!
//! Both maps increase with `c`, so a later first error never earns less.

use crate::error::{Error, Result};

/// The paper's steepness and threshold, as a public reimplementation sets them.
pub const PAPER_BETA: f64 = 5.0;
pub const PAPER_GAMMA: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum CreditRule {
    /// `f(c) = c`.
    #[default]
    Prefix,
    /// `f(c) = 1 / (1 + exp(-beta * (c - gamma)))`.
    Logistic { beta: f64, gamma: f64 },
}

impl CreditRule {
    /// The rule named `name` (`"prefix"` or `"logistic"`); `beta` and `gamma` are checked for
    /// the logistic rule and ignored by the prefix rule.
    pub fn parse(name: &str, beta: f64, gamma: f64) -> Result<Self> {
        let rule = match name {
            "prefix" => CreditRule::Prefix,
            "logistic" => CreditRule::Logistic { beta, gamma },
            other => {
                return Err(Error::Choice {
                    arg: "rule",
                    allowed: "\"prefix\", \"logistic\"".into(),
                    got: other.to_string(),
                })
            }
        };
        rule.validate()?;
        Ok(rule)
    }

    pub fn validate(&self) -> Result<()> {
        if let CreditRule::Logistic { beta, gamma } = *self {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(Error::value(
                    "beta",
                    format!("expected a finite steepness > 0 (the credit must increase with the score), got {beta}"),
                ));
            }
            if !gamma.is_finite() {
                return Err(Error::value(
                    "gamma",
                    format!("expected a finite threshold, got {gamma}"),
                ));
            }
        }
        Ok(())
    }

    /// `f(c)` for a score `c` in `[0, 1]`.
    pub fn apply(&self, c: f64) -> f64 {
        match *self {
            CreditRule::Prefix => c,
            // exp of a large positive argument is +inf and 1 / inf = 0: no NaN at any beta.
            CreditRule::Logistic { beta, gamma } => 1.0 / (1.0 + (-beta * (c - gamma)).exp()),
        }
    }

    /// `(code, beta, gamma)` as the CUDA kernel takes them (0 prefix, 1 logistic).
    pub fn code(&self) -> (i32, f64, f64) {
        match *self {
            CreditRule::Prefix => (0, 0.0, 0.0),
            CreditRule::Logistic { beta, gamma } => (1, beta, gamma),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_increasing_and_half_at_gamma() {
        let rule = CreditRule::parse("logistic", PAPER_BETA, PAPER_GAMMA).unwrap();
        assert!((rule.apply(0.5) - 0.5).abs() < 1e-15);
        let values: Vec<f64> = (0..=10).map(|k| rule.apply(k as f64 / 10.0)).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]));
        let steep = CreditRule::parse("logistic", 1e6, 0.5).unwrap();
        assert_eq!(steep.apply(0.0), 0.0);
        assert_eq!(steep.apply(1.0), 1.0);
    }

    #[test]
    fn bad_parameters_name_their_argument() {
        for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                CreditRule::parse("logistic", beta, 0.5),
                Err(Error::Value { arg: "beta", .. })
            ));
        }
        assert!(matches!(
            CreditRule::parse("logistic", 5.0, f64::NAN),
            Err(Error::Value { arg: "gamma", .. })
        ));
        assert!(matches!(
            CreditRule::parse("sigmoid", 5.0, 0.5),
            Err(Error::Choice { arg: "rule", .. })
        ));
        // The prefix rule ignores beta and gamma.
        assert_eq!(
            CreditRule::parse("prefix", f64::NAN, f64::NAN).unwrap(),
            CreditRule::Prefix
        );
    }
}

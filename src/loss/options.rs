//! The knobs of the policy loss, parsed from the names TRL and verl use.

use super::registry::DefaultAggregation;
pub use super::registry::LossType;
use crate::error::{Error, Result};

/// Whether the importance ratio is per token or one per sequence (GSPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportanceSamplingLevel {
    Token,
    /// `log w_i = sum_t(log_ratio * M) / max(sum_t M, 1)`, shared by the row's tokens.
    Sequence,
}

impl ImportanceSamplingLevel {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "token" => Ok(ImportanceSamplingLevel::Token),
            "sequence" => Ok(ImportanceSamplingLevel::Sequence),
            other => Err(Error::Choice {
                arg: "importance_sampling_level",
                allowed: "\"token\", \"sequence\"".into(),
                got: other.to_string(),
            }),
        }
    }

    /// The name [`ImportanceSamplingLevel::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            ImportanceSamplingLevel::Token => "token",
            ImportanceSamplingLevel::Sequence => "sequence",
        }
    }
}

/// KL(current || reference) estimator per token, with `x = ref - lp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlEstimator {
    /// `lp - ref`
    K1,
    /// `|lp - ref|`
    Abs,
    /// `0.5 (lp - ref)^2` (verl "mse")
    K2,
    /// `exp(x) - x - 1`, unclamped (TRL)
    K3,
    /// verl's k3: `x` clamped to +-20, the result clamped to +-10
    LowVarKl,
}

impl KlEstimator {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "k1" => KlEstimator::K1,
            "abs" => KlEstimator::Abs,
            "k2" | "mse" => KlEstimator::K2,
            "k3" => KlEstimator::K3,
            "low_var_kl" => KlEstimator::LowVarKl,
            other => {
                return Err(Error::Choice {
                    arg: "kl_estimator",
                    allowed: "\"k1\", \"abs\", \"k2\", \"k3\", \"low_var_kl\"".into(),
                    got: other.to_string(),
                })
            }
        })
    }

    /// The name [`KlEstimator::parse`] reads (verl's `"mse"` is read as `"k2"`).
    pub fn name(self) -> &'static str {
        match self {
            KlEstimator::K1 => "k1",
            KlEstimator::Abs => "abs",
            KlEstimator::K2 => "k2",
            KlEstimator::K3 => "k3",
            KlEstimator::LowVarKl => "low_var_kl",
        }
    }
}

/// How per-token losses `L * M` become one number: `loss = sum_i rho_i * sum_t M L`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    /// TRL grpo/sapo: `mean_b(sum_t M L / max(sum_t M, 1))` over all rows.
    RowMeanOfTokenMeans,
    /// TRL bnpo and dapo without `num_items`: `sum(M L) / max(sum M, 1)`.
    TokenMean,
    /// verl "token-mean": `sum(M L) / sum M` (0 when no token counts); differs from
    /// [`Aggregation::TokenMean`] only for fractional weights summing below 1.
    VerlTokenMean,
    /// `sum(M L) / divisor` (TRL dr_grpo `B * max_completion_length`, dapo `num_items`,
    /// verl "seq-mean-token-sum-norm").
    Divisor(f64),
    /// TRL luspo: `mean_b(sum_t M L)` over all rows.
    RowMeanOfTokenSums,
    /// verl "seq-mean-token-sum": mean of `sum_t M L` over rows with tokens.
    ValidRowMeanOfTokenSums,
    /// verl "seq-mean-token-mean": mean of `sum_t M L / (sum_t M + 1e-8)` over rows with tokens.
    ValidRowMeanOfTokenMeans,
}

impl Aggregation {
    /// Parses a verl `loss_agg_mode`; `len` is the padded length used by the "-norm" mode when
    /// no `loss_scale_factor` is given.
    pub fn parse_verl(name: &str, loss_scale_factor: Option<f64>, len: usize) -> Result<Self> {
        Ok(match name {
            "token-mean" => Aggregation::VerlTokenMean,
            "seq-mean-token-sum" => Aggregation::ValidRowMeanOfTokenSums,
            "seq-mean-token-mean" => Aggregation::ValidRowMeanOfTokenMeans,
            "seq-mean-token-sum-norm" => {
                Aggregation::Divisor(loss_scale_factor.unwrap_or(len.max(1) as f64))
            }
            other => {
                return Err(Error::Choice {
                    arg: "loss_agg_mode",
                    allowed: "\"token-mean\", \"seq-mean-token-sum\", \"seq-mean-token-mean\", \"seq-mean-token-sum-norm\"".into(),
                    got: other.to_string(),
                })
            }
        })
    }

    /// The aggregation `loss_type` uses by default (its registry row; verl's vanilla loss
    /// defaults to token-mean).
    pub fn for_loss_type(
        loss_type: LossType,
        batch: usize,
        max_completion_length: usize,
        num_items: Option<f64>,
    ) -> Self {
        match loss_type.spec().aggregation {
            DefaultAggregation::RowMeanOfTokenMeans => Aggregation::RowMeanOfTokenMeans,
            DefaultAggregation::TokenMean => Aggregation::TokenMean,
            DefaultAggregation::VerlTokenMean => Aggregation::VerlTokenMean,
            DefaultAggregation::BatchTimesMaxLength => {
                Aggregation::Divisor(batch as f64 * max_completion_length as f64)
            }
            DefaultAggregation::NumItems => match num_items {
                Some(n) => Aggregation::Divisor(n),
                None => Aggregation::TokenMean,
            },
            DefaultAggregation::RowMeanOfTokenSums => Aggregation::RowMeanOfTokenSums,
        }
    }

    /// Whether the row weights need the batch's token or valid-row count.
    pub(crate) fn needs_batch_counts(self) -> bool {
        matches!(
            self,
            Aggregation::TokenMean
                | Aggregation::VerlTokenMean
                | Aggregation::ValidRowMeanOfTokenSums
                | Aggregation::ValidRowMeanOfTokenMeans
        )
    }

    /// `rho_i` for a row with token count `n`, given the batch's row count, token count and
    /// count of rows that have tokens.
    pub(crate) fn row_weight(self, n: f64, rows: usize, tokens: f64, valid_rows: usize) -> f64 {
        let valid = valid_rows.max(1) as f64;
        match self {
            Aggregation::RowMeanOfTokenMeans => 1.0 / (rows as f64 * n.max(1.0)),
            Aggregation::TokenMean => 1.0 / tokens.max(1.0),
            Aggregation::VerlTokenMean if tokens > 0.0 => 1.0 / tokens,
            Aggregation::VerlTokenMean => 0.0,
            Aggregation::Divisor(d) => 1.0 / d,
            Aggregation::RowMeanOfTokenSums => 1.0 / rows as f64,
            Aggregation::ValidRowMeanOfTokenSums if n > 0.0 => 1.0 / valid,
            Aggregation::ValidRowMeanOfTokenMeans if n > 0.0 => 1.0 / (valid * (n + 1e-8)),
            Aggregation::ValidRowMeanOfTokenSums | Aggregation::ValidRowMeanOfTokenMeans => 0.0,
        }
    }
}

/// Every parameter of [`crate::loss::policy_loss`]. `Default` is TRL 1.16's `GRPOConfig`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossOptions {
    pub loss_type: LossType,
    pub importance_sampling_level: ImportanceSamplingLevel,
    pub epsilon_low: f64,
    /// `None`: equal to `epsilon_low`.
    pub epsilon_high: Option<f64>,
    /// TRL two-sided clipping: the unclipped ratio is capped at `delta`.
    pub delta: Option<f64>,
    pub beta: f64,
    pub kl_estimator: KlEstimator,
    /// Multiply the KL by the importance ratio (TRL `use_bias_correction_kl`).
    pub kl_bias_correction: bool,
    /// TRL dr_grpo divisor; `None`: the padded length `T`.
    pub max_completion_length: Option<usize>,
    /// TRL dapo/cispo/vespo normaliser; `None`: `max(sum M, 1)`.
    pub num_items: Option<f64>,
    /// Overrides the loss type's own aggregation (verl `loss_agg_mode`).
    pub aggregation: Option<Aggregation>,
    /// Multiplies the returned gradient (not the loss).
    pub grad_scale: f64,
    /// verl dual-clip constant `c` for negative advantages (vanilla only).
    pub clip_ratio_c: f64,
    pub sapo_temperature_pos: f64,
    pub sapo_temperature_neg: f64,
    pub vespo_k_pos: f64,
    pub vespo_lambda_pos: f64,
    pub vespo_k_neg: f64,
    pub vespo_lambda_neg: f64,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            loss_type: LossType::Dapo,
            importance_sampling_level: ImportanceSamplingLevel::Token,
            epsilon_low: 0.2,
            epsilon_high: None,
            delta: None,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_bias_correction: true,
            max_completion_length: None,
            num_items: None,
            aggregation: None,
            grad_scale: 1.0,
            clip_ratio_c: 3.0,
            sapo_temperature_pos: 1.0,
            sapo_temperature_neg: 1.05,
            vespo_k_pos: 2.0,
            vespo_lambda_pos: 3.0,
            vespo_k_neg: 3.0,
            vespo_lambda_neg: 2.0,
        }
    }
}

fn check_finite(arg: &'static str, value: f64, lower: f64, what: &str) -> Result<()> {
    if !value.is_finite() || value < lower {
        return Err(Error::value(
            arg,
            format!("expected a finite value {what}, got {value}"),
        ));
    }
    Ok(())
}

impl LossOptions {
    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon_low)
    }

    /// The aggregation for a `(batch, len)` batch: the override (verl `loss_agg_mode`), else the
    /// loss type's own (TRL), with `max_completion_length` defaulting to `len`.
    pub fn aggregation_for(&self, batch: usize, len: usize) -> Aggregation {
        let max_completion_length = self.max_completion_length.unwrap_or(len.max(1));
        self.aggregation.unwrap_or_else(|| {
            Aggregation::for_loss_type(self.loss_type, batch, max_completion_length, self.num_items)
        })
    }

    /// Checks every scalar; the aggregation is resolved against the batch shape.
    pub(crate) fn validate(&self) -> Result<()> {
        check_finite("epsilon_low", self.epsilon_low, 0.0, ">= 0")?;
        if let Some(eh) = self.epsilon_high {
            check_finite("epsilon_high", eh, 0.0, ">= 0")?;
        }
        if let Some(delta) = self.delta {
            check_finite("delta", delta, 0.0, "> 0")?;
            if delta == 0.0 {
                return Err(Error::value("delta", "expected a finite value > 0, got 0"));
            }
        }
        if !self.beta.is_finite() {
            return Err(Error::value(
                "beta",
                format!("expected a finite value, got {}", self.beta),
            ));
        }
        if self.max_completion_length == Some(0) {
            return Err(Error::value(
                "max_completion_length",
                "expected a value >= 1, got 0",
            ));
        }
        if let Some(n) = self.num_items {
            if !n.is_finite() || n <= 0.0 {
                return Err(Error::value(
                    "num_items",
                    format!("expected a finite value > 0, got {n}"),
                ));
            }
        }
        if let Some(Aggregation::Divisor(d)) = self.aggregation {
            if !d.is_finite() || d <= 0.0 {
                return Err(Error::value(
                    "loss_scale_factor",
                    format!("expected a finite value > 0, got {d}"),
                ));
            }
        }
        if !self.grad_scale.is_finite() {
            return Err(Error::value(
                "grad_scale",
                format!("expected a finite value, got {}", self.grad_scale),
            ));
        }
        if self.loss_type == LossType::Vanilla
            && !(self.clip_ratio_c.is_finite() && self.clip_ratio_c > 1.0)
        {
            return Err(Error::value(
                "clip_ratio_c",
                format!("expected a finite value > 1, got {}", self.clip_ratio_c),
            ));
        }
        for (arg, v) in [
            ("sapo_temperature_pos", self.sapo_temperature_pos),
            ("sapo_temperature_neg", self.sapo_temperature_neg),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(Error::value(
                    arg,
                    format!("expected a finite value > 0, got {v}"),
                ));
            }
        }
        for (arg, v) in [
            ("vespo_k_pos", self.vespo_k_pos),
            ("vespo_lambda_pos", self.vespo_lambda_pos),
            ("vespo_k_neg", self.vespo_k_neg),
            ("vespo_lambda_neg", self.vespo_lambda_neg),
        ] {
            if !v.is_finite() {
                return Err(Error::value(
                    arg,
                    format!("expected a finite value, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse() {
        for t in super::super::registry::LOSS_TYPES
            .iter()
            .map(|spec| spec.loss_type)
        {
            assert_eq!(LossType::parse(t.name()).unwrap(), t);
        }
        for l in [
            ImportanceSamplingLevel::Token,
            ImportanceSamplingLevel::Sequence,
        ] {
            assert_eq!(ImportanceSamplingLevel::parse(l.name()).unwrap(), l);
        }
        use KlEstimator::*;
        for k in [K1, Abs, K2, K3, LowVarKl] {
            assert_eq!(KlEstimator::parse(k.name()).unwrap(), k);
        }
    }
}

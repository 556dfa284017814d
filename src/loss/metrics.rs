//! Per-row partial sums of the loss kernel and their reduction into the loss and the metrics TRL
//! and verl log (same keys as their trainers).

use super::options::{ImportanceSamplingLevel, LossType};
use super::{AdvantageView, LossOutput, RowKernel};
use crate::elem::{FloatElem, MaskElem};
use crate::error::{Error, Result};

/// One row's sums, each weighted by the token's mask weight.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowMetrics {
    pub error: Option<Error>,
    pub tokens: f64,
    pub loss: f64,
    pub loss_weighted: f64,
    pub kl: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
    pub cispo_clipped: f64,
    pub phi: f64,
    pub pg_clipfrac: f64,
    pub pg_clipfrac_lower: f64,
    pub ppo_kl: f64,
    /// Per-sequence values, used where TRL's tensors are `(B, 1)` (sequence-level ratio with
    /// per-row advantages; VESPO's weight with per-row advantages).
    pub clip_low_row: f64,
    pub clip_high_row: f64,
    pub clip_region_row: f64,
    pub cispo_row: f64,
    pub phi_row: f64,
}

/// Named scalar metrics, in a fixed order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LossMetrics(pub Vec<(&'static str, f64)>);

impl LossMetrics {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }
}

pub(crate) fn reduce<T: FloatElem, M: MaskElem>(
    rows: &[RowMetrics],
    kernel: &RowKernel<'_, '_, T, M>,
) -> Result<LossOutput> {
    if let Some(error) = rows.iter().find_map(|r| r.error.clone()) {
        return Err(error);
    }
    let options = kernel.options;
    let per_row_advantages = matches!(kernel.inputs.advantages, AdvantageView::PerRow(_));
    let sequence = options.importance_sampling_level == ImportanceSamplingLevel::Sequence;
    let sum = |f: fn(&RowMetrics) -> f64| rows.iter().map(f).sum::<f64>();
    let tokens = sum(|r| r.tokens);
    // TRL: (x * mask).sum() / mask.sum().clamp(min=1); for (B, 1) tensors the plain row mean.
    let token_mean = |f: fn(&RowMetrics) -> f64| sum(f) / tokens.max(1.0);
    let row_mean = |f: fn(&RowMetrics) -> f64| sum(f) / rows.len() as f64;
    // TRL's per-sequence min/max skip rows without tokens (NaN under nanmin/nanmax).
    let per_sequence = |f: fn(&RowMetrics) -> f64| {
        rows.iter()
            .filter(|r| r.tokens > 0.0)
            .map(move |r| f(r) / r.tokens)
    };

    let loss = sum(|r| r.loss_weighted);
    if !loss.is_finite() || loss.abs() > f32::MAX as f64 {
        return Err(Error::Overflow {
            arg: "loss",
            detail: format!("the loss is {loss}; check the log-probability gaps"),
        });
    }
    let mut metrics = Vec::new();
    if options.beta != 0.0 {
        metrics.push(("kl", token_mean(|r| r.kl)));
    }
    match options.loss_type {
        t if t.is_trl_clipped() => {
            if sequence && per_row_advantages {
                metrics.push(("clip_ratio/low_mean", row_mean(|r| r.clip_low_row)));
                metrics.push(("clip_ratio/high_mean", row_mean(|r| r.clip_high_row)));
                metrics.push(("clip_ratio/region_mean", row_mean(|r| r.clip_region_row)));
                let low_min = rows.iter().map(|r| r.clip_low_row).fold(f64::NAN, f64::min);
                let high_max = rows
                    .iter()
                    .map(|r| r.clip_high_row)
                    .fold(f64::NAN, f64::max);
                metrics.push(("clip_ratio/low_min", low_min));
                metrics.push(("clip_ratio/high_max", high_max));
            } else {
                metrics.push(("clip_ratio/low_mean", token_mean(|r| r.clip_low)));
                metrics.push(("clip_ratio/high_mean", token_mean(|r| r.clip_high)));
                metrics.push(("clip_ratio/region_mean", token_mean(|r| r.clip_region)));
                metrics.push((
                    "clip_ratio/low_min",
                    per_sequence(|r| r.clip_low).fold(f64::NAN, f64::min),
                ));
                metrics.push((
                    "clip_ratio/high_max",
                    per_sequence(|r| r.clip_high).fold(f64::NAN, f64::max),
                ));
            }
        }
        LossType::Cispo => {
            let value = if sequence && per_row_advantages {
                row_mean(|r| r.cispo_row)
            } else {
                token_mean(|r| r.cispo_clipped)
            };
            metrics.push(("cispo_clip_ratio", value));
        }
        LossType::Vespo => {
            let value = if per_row_advantages {
                row_mean(|r| r.phi_row)
            } else {
                token_mean(|r| r.phi)
            };
            metrics.push(("vespo/phi_seq_mean", value));
        }
        LossType::Vanilla => {
            // verl's masked_mean: 0 when no token counts.
            let verl_mean =
                |f: fn(&RowMetrics) -> f64| if tokens > 0.0 { sum(f) / tokens } else { 0.0 };
            metrics.push(("pg_clipfrac", verl_mean(|r| r.pg_clipfrac)));
            metrics.push(("ppo_kl", verl_mean(|r| r.ppo_kl)));
            metrics.push(("pg_clipfrac_lower", verl_mean(|r| r.pg_clipfrac_lower)));
        }
        _ => {}
    }
    Ok(LossOutput {
        loss,
        metrics: LossMetrics(metrics),
    })
}

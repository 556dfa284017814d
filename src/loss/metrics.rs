//! Per-row partial sums of the loss kernel and their reduction into the loss and the metrics TRL
//! and verl log (same keys as their trainers).

use super::options::{ImportanceSamplingLevel, LossOptions, LossType};
use super::row::RowSums;
use super::terms::{Cispo, Clipped, Vanilla, Vespo};
use super::LossOutput;
use crate::error::{Error, Result};

/// Named scalar metrics, in a fixed order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LossMetrics(pub Vec<(&'static str, f64)>);

impl LossMetrics {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }
}

/// Sums the rows in index order into the loss and the metrics.
pub(crate) fn reduce(
    rows: &[RowSums],
    options: &LossOptions,
    per_row_advantages: bool,
) -> Result<LossOutput> {
    let sequence = options.importance_sampling_level == ImportanceSamplingLevel::Sequence;
    let sum = |f: fn(&RowSums) -> f64| rows.iter().map(f).sum::<f64>();
    let tokens = sum(|r| r.tokens);
    // TRL: (x * mask).sum() / mask.sum().clamp(min=1); for (B, 1) tensors the plain row mean.
    let token_mean = |f: fn(&RowSums) -> f64| sum(f) / tokens.max(1.0);
    let row_mean = |f: fn(&RowSums) -> f64| sum(f) / rows.len() as f64;
    // TRL's per-sequence min/max skip rows without tokens (NaN under nanmin/nanmax).
    let per_sequence = |f: fn(&RowSums) -> f64| {
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
                metrics.push((
                    "clip_ratio/low_mean",
                    row_mean(|r| r.clip_row[Clipped::LOW]),
                ));
                metrics.push((
                    "clip_ratio/high_mean",
                    row_mean(|r| r.clip_row[Clipped::HIGH]),
                ));
                metrics.push((
                    "clip_ratio/region_mean",
                    row_mean(|r| r.clip_row[Clipped::REGION]),
                ));
                let low_min = rows
                    .iter()
                    .map(|r| r.clip_row[Clipped::LOW])
                    .fold(f64::NAN, f64::min);
                let high_max = rows
                    .iter()
                    .map(|r| r.clip_row[Clipped::HIGH])
                    .fold(f64::NAN, f64::max);
                metrics.push(("clip_ratio/low_min", low_min));
                metrics.push(("clip_ratio/high_max", high_max));
            } else {
                metrics.push((
                    "clip_ratio/low_mean",
                    token_mean(|r| r.metrics[Clipped::LOW]),
                ));
                metrics.push((
                    "clip_ratio/high_mean",
                    token_mean(|r| r.metrics[Clipped::HIGH]),
                ));
                metrics.push((
                    "clip_ratio/region_mean",
                    token_mean(|r| r.metrics[Clipped::REGION]),
                ));
                metrics.push((
                    "clip_ratio/low_min",
                    per_sequence(|r| r.metrics[Clipped::LOW]).fold(f64::NAN, f64::min),
                ));
                metrics.push((
                    "clip_ratio/high_max",
                    per_sequence(|r| r.metrics[Clipped::HIGH]).fold(f64::NAN, f64::max),
                ));
            }
        }
        LossType::Cispo => {
            let value = if sequence && per_row_advantages {
                row_mean(|r| r.cispo_row)
            } else {
                token_mean(|r| r.metrics[Cispo::CAPPED])
            };
            metrics.push(("cispo_clip_ratio", value));
        }
        LossType::Vespo => {
            let value = if per_row_advantages {
                row_mean(|r| r.phi_row)
            } else {
                token_mean(|r| r.metrics[Vespo::PHI])
            };
            metrics.push(("vespo/phi_seq_mean", value));
        }
        LossType::Vanilla => {
            // verl's masked_mean: 0 when no token counts.
            let verl_mean =
                |f: fn(&RowSums) -> f64| if tokens > 0.0 { sum(f) / tokens } else { 0.0 };
            metrics.push(("pg_clipfrac", verl_mean(|r| r.metrics[Vanilla::CLIPFRAC])));
            metrics.push(("ppo_kl", verl_mean(|r| r.metrics[Vanilla::NEG_LOG_RATIO])));
            metrics.push((
                "pg_clipfrac_lower",
                verl_mean(|r| r.metrics[Vanilla::CLIPFRAC_LOWER]),
            ));
        }
        _ => {}
    }
    // Extreme but finite inputs can push a metric past f64's range; never hand back inf.
    // (`clip_ratio/low_min`/`high_max` are NaN when no row has tokens, as TRL's nanmin gives.)
    if let Some((key, value)) = metrics.iter().find(|(_, v)| v.is_infinite()) {
        return Err(Error::Overflow {
            arg: "metrics",
            detail: format!("{key} is {value}; check the magnitudes of the inputs"),
        });
    }
    Ok(LossOutput {
        loss,
        metrics: LossMetrics(metrics),
    })
}

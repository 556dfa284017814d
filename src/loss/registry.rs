//! The loss-type registry: everything the library knows about each loss type that is not its
//! per-token formula, in one table. The parser, the default aggregation, the metrics' names, the
//! CUDA host code (kernel codes, metric slots), the Python bindings (`_core.loss_types()`) and the
//! tests all read it, so adding a loss type means a row here, its formula in `terms.rs`/`row.rs`
//! and its CUDA twin in `kernels/loss.cu` (CONTRIBUTING.md has the whole list).

use crate::error::{Error, Result};

/// The per-token policy objective: TRL's eight `loss_type`s plus verl's vanilla PPO loss,
/// declared in the order of [`LOSS_TYPES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    Grpo,
    Bnpo,
    DrGrpo,
    Dapo,
    Cispo,
    Sapo,
    Luspo,
    Vespo,
    /// verl `compute_policy_loss_vanilla`: PPO clip with dual clip for negative advantages.
    Vanilla,
}

impl LossType {
    /// The loss type TRL's `loss_type` (or verl's `loss_mode`) calls `name` (see
    /// [`LOSS_TYPES`]).
    pub fn parse(name: &str) -> Result<Self> {
        LOSS_TYPES
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| spec.loss_type)
            .ok_or_else(|| Error::Choice {
                arg: "loss_type",
                allowed: quoted_names().into(),
                got: name.to_string(),
            })
    }

    /// The name [`LossType::parse`] reads.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The objectives that clip the ratio as PPO does (TRL's clip metrics apply to them).
    pub fn is_trl_clipped(self) -> bool {
        self.spec().trl_clipped
    }
}

/// The framework whose loss a loss type reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// TRL 1.16 `GRPOTrainer._compute_loss` (`loss_type=...`).
    Trl,
    /// verl `core_algos` policy losses (`policy_loss.loss_mode=...`).
    Verl,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Trl => "trl",
            Origin::Verl => "verl",
        }
    }
}

/// How a loss type aggregates `L * M` into the loss by default (without `loss_agg_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAggregation {
    /// `mean_b(sum_t M L / max(sum_t M, 1))`.
    RowMeanOfTokenMeans,
    /// `sum(M L) / max(sum M, 1)`.
    TokenMean,
    /// `sum(M L) / (B * max_completion_length)`.
    BatchTimesMaxLength,
    /// `sum(M L) / num_items` (`max(sum M, 1)` when not given): TRL folds gradient accumulation
    /// into `num_items`, so these loss types are not divided by the accumulation steps.
    NumItems,
    /// `mean_b(sum_t M L)`.
    RowMeanOfTokenSums,
    /// verl `token-mean`: `sum(M L) / sum M`, 0 when no token counts.
    VerlTokenMean,
}

impl DefaultAggregation {
    pub fn name(self) -> &'static str {
        match self {
            DefaultAggregation::RowMeanOfTokenMeans => "row_mean_of_token_means",
            DefaultAggregation::TokenMean => "token_mean",
            DefaultAggregation::BatchTimesMaxLength => "batch_times_max_length",
            DefaultAggregation::NumItems => "num_items",
            DefaultAggregation::RowMeanOfTokenSums => "row_mean_of_token_sums",
            DefaultAggregation::VerlTokenMean => "verl_token_mean",
        }
    }
}

/// One metric a loss type logs (besides `kl`, logged by every loss type when `beta != 0`), and
/// the slot of the CUDA kernel's output that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    pub name: &'static str,
    pub cuda_slot: usize,
    /// The slot's name in `kernels/loss.cu` (`OUT_<NAME>`, defined from this table).
    pub cuda_name: &'static str,
}

/// The CUDA output slot of the `kl` metric (slot 0 is the loss).
pub const KL_CUDA_SLOT: usize = 1;

/// Number of CUDA output slots: the loss and every metric slot below.
pub const CUDA_SLOTS: usize = 12;

const TRL_CLIP_METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "clip_ratio/low_mean",
        cuda_slot: 2,
        cuda_name: "CLIP_LOW_MEAN",
    },
    MetricSpec {
        name: "clip_ratio/high_mean",
        cuda_slot: 3,
        cuda_name: "CLIP_HIGH_MEAN",
    },
    MetricSpec {
        name: "clip_ratio/region_mean",
        cuda_slot: 4,
        cuda_name: "CLIP_REGION_MEAN",
    },
    MetricSpec {
        name: "clip_ratio/low_min",
        cuda_slot: 5,
        cuda_name: "CLIP_LOW_MIN",
    },
    MetricSpec {
        name: "clip_ratio/high_max",
        cuda_slot: 6,
        cuda_name: "CLIP_HIGH_MAX",
    },
];

/// Everything about a loss type but its formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossTypeSpec {
    pub loss_type: LossType,
    /// The name TRL's `loss_type` (or verl's `loss_mode`) uses.
    pub name: &'static str,
    pub origin: Origin,
    /// The objective clips the ratio as PPO does (`-min(c1 A, c2 A)`), so TRL's `clip_ratio/*`
    /// metrics apply and `delta` (two-sided clipping) is meaningful.
    pub trl_clipped: bool,
    pub aggregation: DefaultAggregation,
    /// The metrics, in the order the loss returns them.
    pub metrics: &'static [MetricSpec],
    /// `LT_<NAME>` in `kernels/loss.cu` (defined from this table when the kernels compile).
    pub cuda_code: i32,
}

impl LossTypeSpec {
    /// TRL divides these loss types by the gradient-accumulation steps (the others fold the
    /// steps into `num_items`).
    pub fn divides_by_gradient_accumulation(&self) -> bool {
        self.aggregation != DefaultAggregation::NumItems
    }
}

/// Every loss type, in the order the docs and the error messages list them.
pub const LOSS_TYPES: &[LossTypeSpec] = &[
    LossTypeSpec {
        loss_type: LossType::Grpo,
        name: "grpo",
        origin: Origin::Trl,
        trl_clipped: true,
        aggregation: DefaultAggregation::RowMeanOfTokenMeans,
        metrics: TRL_CLIP_METRICS,
        cuda_code: 0,
    },
    LossTypeSpec {
        loss_type: LossType::Bnpo,
        name: "bnpo",
        origin: Origin::Trl,
        trl_clipped: true,
        aggregation: DefaultAggregation::TokenMean,
        metrics: TRL_CLIP_METRICS,
        cuda_code: 1,
    },
    LossTypeSpec {
        loss_type: LossType::DrGrpo,
        name: "dr_grpo",
        origin: Origin::Trl,
        trl_clipped: true,
        aggregation: DefaultAggregation::BatchTimesMaxLength,
        metrics: TRL_CLIP_METRICS,
        cuda_code: 2,
    },
    LossTypeSpec {
        loss_type: LossType::Dapo,
        name: "dapo",
        origin: Origin::Trl,
        trl_clipped: true,
        aggregation: DefaultAggregation::NumItems,
        metrics: TRL_CLIP_METRICS,
        cuda_code: 3,
    },
    LossTypeSpec {
        loss_type: LossType::Cispo,
        name: "cispo",
        origin: Origin::Trl,
        trl_clipped: false,
        aggregation: DefaultAggregation::NumItems,
        metrics: &[MetricSpec {
            name: "cispo_clip_ratio",
            cuda_slot: 7,
            cuda_name: "CISPO",
        }],
        cuda_code: 4,
    },
    LossTypeSpec {
        loss_type: LossType::Sapo,
        name: "sapo",
        origin: Origin::Trl,
        trl_clipped: false,
        aggregation: DefaultAggregation::RowMeanOfTokenMeans,
        metrics: &[],
        cuda_code: 5,
    },
    LossTypeSpec {
        loss_type: LossType::Luspo,
        name: "luspo",
        origin: Origin::Trl,
        trl_clipped: true,
        aggregation: DefaultAggregation::RowMeanOfTokenSums,
        metrics: TRL_CLIP_METRICS,
        cuda_code: 6,
    },
    LossTypeSpec {
        loss_type: LossType::Vespo,
        name: "vespo",
        origin: Origin::Trl,
        trl_clipped: false,
        aggregation: DefaultAggregation::NumItems,
        metrics: &[MetricSpec {
            name: "vespo/phi_seq_mean",
            cuda_slot: 8,
            cuda_name: "VESPO_PHI",
        }],
        cuda_code: 7,
    },
    LossTypeSpec {
        loss_type: LossType::Vanilla,
        name: "vanilla",
        origin: Origin::Verl,
        trl_clipped: false,
        aggregation: DefaultAggregation::VerlTokenMean,
        metrics: &[
            MetricSpec {
                name: "pg_clipfrac",
                cuda_slot: 9,
                cuda_name: "PG_CLIPFRAC",
            },
            MetricSpec {
                name: "ppo_kl",
                cuda_slot: 10,
                cuda_name: "PPO_KL",
            },
            MetricSpec {
                name: "pg_clipfrac_lower",
                cuda_slot: 11,
                cuda_name: "PG_CLIPFRAC_LOWER",
            },
        ],
        cuda_code: 8,
    },
];

impl LossType {
    /// This loss type's row of [`LOSS_TYPES`] (the table lists the variants in declaration
    /// order, tested below).
    pub fn spec(self) -> &'static LossTypeSpec {
        &LOSS_TYPES[self as usize]
    }
}

/// `"grpo", "bnpo", ...`: the names as the parser's error lists them.
pub fn quoted_names() -> String {
    LOSS_TYPES
        .iter()
        .map(|spec| format!("{:?}", spec.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The C preprocessor lines `kernels/loss.cu` is compiled with: `LT_<NAME>` for each loss type
/// and `OUT_<NAME>` for each slot of the loss kernel's output (`OUT_LOSS`, `OUT_KL`, the metrics).
pub fn cuda_defines() -> String {
    let mut out: String = LOSS_TYPES
        .iter()
        .map(|spec| {
            format!(
                "#define LT_{} {}\n",
                spec.name.to_uppercase(),
                spec.cuda_code
            )
        })
        .collect();
    out.push_str("#define OUT_LOSS 0\n");
    out.push_str(&format!("#define OUT_KL {KL_CUDA_SLOT}\n"));
    let mut slots: Vec<&MetricSpec> = LOSS_TYPES.iter().flat_map(|spec| spec.metrics).collect();
    slots.sort_by_key(|m| m.cuda_slot);
    slots.dedup_by_key(|m| m.cuda_slot);
    for m in slots {
        out.push_str(&format!("#define OUT_{} {}\n", m.cuda_name, m.cuda_slot));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_type_has_one_row_and_distinct_codes_and_slots() {
        use LossType::*;
        let all = [Grpo, Bnpo, DrGrpo, Dapo, Cispo, Sapo, Luspo, Vespo, Vanilla];
        assert_eq!(LOSS_TYPES.len(), all.len());
        for (i, spec) in LOSS_TYPES.iter().enumerate() {
            assert_eq!(
                spec.loss_type as usize, i,
                "{} is out of declaration order",
                spec.name
            );
        }
        for t in all {
            assert_eq!(LOSS_TYPES.iter().filter(|s| s.loss_type == t).count(), 1);
            assert_eq!(t.spec().loss_type, t);
            assert_eq!(LossType::parse(t.spec().name).ok(), Some(t));
        }
        let mut codes: Vec<i32> = LOSS_TYPES.iter().map(|s| s.cuda_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), LOSS_TYPES.len());
        let mut slot_names = std::collections::HashMap::new();
        for spec in LOSS_TYPES {
            for metric in spec.metrics {
                assert!(metric.cuda_slot > KL_CUDA_SLOT && metric.cuda_slot < CUDA_SLOTS);
                let name = slot_names
                    .entry(metric.cuda_slot)
                    .or_insert(metric.cuda_name);
                assert_eq!(
                    *name, metric.cuda_name,
                    "slot {} has two names",
                    metric.cuda_slot
                );
            }
        }
    }

    /// The CPU loss returns exactly the registry's metrics, in its order, at either importance
    /// sampling level (the CUDA path reads its slots from the same rows).
    #[test]
    fn cpu_metrics_are_the_registry_metrics() {
        use crate::loss::{
            policy_loss, AdvantageView, ImportanceSamplingLevel, LossInputs, LossOptions,
        };
        let (batch, len) = (3, 5);
        let logp: Vec<f32> = (0..batch * len)
            .map(|i| -1.0 - 0.1 * (i % 7) as f32)
            .collect();
        let old: Vec<f32> = logp.iter().map(|x| x + 0.05).collect();
        let mask = vec![1.0f32; batch * len];
        let advantages = [0.5f32, -1.0, 2.0];
        for spec in LOSS_TYPES {
            for level in [
                ImportanceSamplingLevel::Token,
                ImportanceSamplingLevel::Sequence,
            ] {
                if spec.loss_type == LossType::Vanilla && level == ImportanceSamplingLevel::Sequence
                {
                    continue; // verl's vanilla loss has no sequence-level ratio
                }
                let options = LossOptions {
                    loss_type: spec.loss_type,
                    importance_sampling_level: level,
                    beta: 0.04,
                    ..LossOptions::default()
                };
                let inputs = LossInputs {
                    logp: &logp,
                    old_logp: Some(&old),
                    ref_logp: Some(&old),
                    advantages: AdvantageView::PerRow(&advantages),
                    mask: &mask,
                    batch,
                    len,
                };
                let mut grad = vec![0.0f32; batch * len];
                let out = policy_loss(&inputs, &options, &mut grad).expect("valid inputs");
                let keys: Vec<&str> = out.metrics.0.iter().map(|(k, _)| *k).collect();
                let mut expected = vec!["kl"];
                expected.extend(spec.metrics.iter().map(|m| m.name));
                assert_eq!(keys, expected, "{} at {level:?}", spec.name);
            }
        }
    }

    #[test]
    fn cuda_defines_name_every_code() {
        let defines = cuda_defines();
        assert!(defines.contains("#define LT_DR_GRPO 2\n"));
        assert!(defines.contains("#define LT_VANILLA 8\n"));
        assert!(defines.contains("#define OUT_KL 1\n"));
        assert!(defines.contains("#define OUT_PG_CLIPFRAC_LOWER 11\n"));
        // Loss types, the loss and kl slots, and the ten metric slots (shared slots once).
        assert_eq!(defines.lines().count(), LOSS_TYPES.len() + 2 + 10);
    }
}

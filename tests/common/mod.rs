//! What the integration tests share: a seeded generator and the option lists they iterate.
//!
//! Each test binary compiles this module on its own and uses part of it, hence the `dead_code`
//! allowance.
#![allow(dead_code)]

use sgpo_rs::loss::registry::LOSS_TYPES;
use sgpo_rs::loss::{ImportanceSamplingLevel, KlEstimator, LossType};

/// Both importance-sampling levels.
pub const LEVELS: [ImportanceSamplingLevel; 2] = [
    ImportanceSamplingLevel::Token,
    ImportanceSamplingLevel::Sequence,
];

/// Every KL estimator.
pub const ESTIMATORS: [KlEstimator; 5] = [
    KlEstimator::K1,
    KlEstimator::Abs,
    KlEstimator::K2,
    KlEstimator::K3,
    KlEstimator::LowVarKl,
];

/// SplitMix64: deterministic inputs from a seed, without a `rand` dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`, from the top 53 bits.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every loss type, from the engine's registry: a new loss type reaches every suite that
/// iterates this without an edit there.
pub fn loss_types() -> impl Iterator<Item = LossType> {
    LOSS_TYPES.iter().map(|spec| spec.loss_type)
}

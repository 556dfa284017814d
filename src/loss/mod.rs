//! The GRPO-family policy loss in one fused pass: loss value, `dL/dlogp` and the metrics TRL and
//! verl log, for `(B, T)` log-probabilities.
//!
//! Rows are independent except for the aggregation's batch counts, so the kernel runs one rayon
//! task per block of rows; every row keeps its own f64 partial sums and the rows are reduced in
//! index order afterwards, so results are bit-identical for any thread count. Tokens whose mask
//! weight is 0 are neutralised: their gradient is 0 and their values never reach a sum, so
//! padding may hold anything (even NaN or -inf). Every unmasked input must be finite.

mod metrics;
mod options;
pub mod registry;
mod row;
mod row_f32;
/// Whether these options are ones per-token float32 arithmetic decides as float64 does (the loss
/// types, level, KL and bounds the float32 paths take: the CPU's where its SIMD level pays off,
/// the CUDA loss's `loss_tokens32` always).
pub use row_f32::handles as float32_handles;
// The CUDA loss takes the same per-token float32 decisions.
#[cfg(feature = "cuda")]
pub(crate) use row_f32::Float32Bounds;
pub mod shapes;
mod terms;

use rayon::prelude::*;

pub use metrics::LossMetrics;
pub use options::{Aggregation, ImportanceSamplingLevel, KlEstimator, LossOptions, LossType};
pub use shapes::{LossDims, LossShapes};

use crate::elem::{FloatElem, MaskElem};
use crate::error::{Error, Result};
use row::{weight_sum_dispatched, RowKernel, RowSums};

/// Advantages per row (`(B,)`, TRL's default) or per token (`(B, T)`).
#[derive(Debug, Clone, Copy)]
pub enum AdvantageView<'a> {
    PerRow(&'a [f32]),
    PerToken(&'a [f32]),
}

/// The `(B, T)` inputs, row-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a, T, M> {
    pub logp: &'a [T],
    /// `None`: on-policy, `old = logp.detach()` (ratio 1, gradient still flows).
    pub old_logp: Option<&'a [T]>,
    /// Required when `beta != 0`.
    pub ref_logp: Option<&'a [T]>,
    pub advantages: AdvantageView<'a>,
    pub mask: &'a [M],
    pub batch: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    pub loss: f64,
    pub metrics: LossMetrics,
}

/// Whether [`policy_loss`] computes per-token values in float32 for inputs of type `T` and these
/// options now: f32, bf16 and f16 inputs of the PPO-clipped losses (TRL's grpo, bnpo, dr_grpo,
/// dapo, luspo, and verl's vanilla dual-clip loss with any `loss_agg_mode`) at token level with
/// any KL estimator but low_var_kl, on an x86-64 CPU with AVX2 (the SIMD level in use:
/// `SGPO_RS_SIMD=portable` turns the path off). Per-token loss and gradient are then within
/// about 5e-7 of their own magnitude of the float64 path's, with the same clip decisions
/// (vanilla's dual clip and its +-20 log-ratio clamp included) and clip metrics; vanilla's
/// `ppo_kl` is the float64 path's up to the order of the sums (the bound and how it is kept are
/// in `row_f32`'s documentation). Everything else runs in float64.
pub fn uses_float32_path<T: FloatElem>(options: &LossOptions) -> bool {
    T::FITS_F32
        && row_f32::handles(options)
        && row_f32::pays_off(crate::numeric::simd::simd_level())
}

/// Computes the loss and writes `grad_scale * dL/dlogp` into `grad` (`B * T` floats).
///
/// Precision: see [`uses_float32_path`]; sums are accumulated in float64 on both paths.
pub fn policy_loss<T: FloatElem, M: MaskElem>(
    inputs: &LossInputs<'_, T, M>,
    options: &LossOptions,
    grad: &mut [f32],
) -> Result<LossOutput> {
    options.validate()?;
    check_shapes(inputs, grad.len())?;
    if options.beta != 0.0 && inputs.ref_logp.is_none() {
        return Err(Error::value("ref_logp", "required when beta != 0"));
    }
    if let AdvantageView::PerRow(adv) = inputs.advantages {
        if let Some(row) = adv.iter().position(|a| !a.is_finite()) {
            return Err(Error::NonFinite {
                arg: "advantages",
                value: adv[row] as f64,
                at: format!("row {row}"),
            });
        }
    }
    let (batch, len) = (inputs.batch, inputs.len);
    let aggregation = options.aggregation_for(batch, len);
    // Aggregations normalised by batch counts need every row's token weight first; the rows
    // then reuse those sums instead of summing their masks again.
    let row_tokens = if aggregation.needs_batch_counts() {
        Some(row_token_weights(inputs.mask, len)?)
    } else {
        None
    };
    let (tokens, valid_rows) = row_tokens.as_deref().map_or((0.0, 0), |counts| {
        let tokens = counts.iter().sum::<f64>();
        (tokens, counts.iter().filter(|&&n| n > 0.0).count())
    });
    let row_weight = |n: f64| aggregation.row_weight(n, batch, tokens, valid_rows);
    let row = RowKernel {
        inputs,
        options,
        row_weight: &row_weight,
        row_tokens: row_tokens.as_deref(),
        float32: uses_float32_path::<T>(options),
    };
    let rows: Vec<Result<RowSums>> = grad
        .par_chunks_mut(len)
        .enumerate()
        .map(|(i, grad_row)| row.run(i, grad_row))
        .collect();
    let rows = rows.into_iter().collect::<Result<Vec<RowSums>>>()?;
    metrics::reduce(
        &rows,
        options,
        matches!(inputs.advantages, AdvantageView::PerRow(_)),
    )
}

fn check_shapes<T, M>(inputs: &LossInputs<'_, T, M>, grad_len: usize) -> Result<()> {
    let (batch, len) = (inputs.batch, inputs.len);
    if batch == 0 {
        return Err(Error::value(
            "logp",
            "expected at least one row, got an empty batch",
        ));
    }
    let expected = format!("({batch}, {len})");
    if len == 0 {
        return Err(Error::value(
            "logp",
            "expected at least one token per row (T >= 1), got T = 0",
        ));
    }
    let n = batch.checked_mul(len).ok_or_else(|| {
        Error::shape(
            "logp",
            "(B, T) with B * T addressable",
            format!("({batch}, {len})"),
        )
    })?;
    let check = |arg: &'static str, got: usize| -> Result<()> {
        if got != n {
            return Err(Error::shape(
                arg,
                expected.clone(),
                format!("{got} elements"),
            ));
        }
        Ok(())
    };
    check("logp", inputs.logp.len())?;
    if let Some(old) = inputs.old_logp {
        check("old_logp", old.len())?;
    }
    if let Some(reference) = inputs.ref_logp {
        check("ref_logp", reference.len())?;
    }
    check("mask", inputs.mask.len())?;
    check("grad", grad_len)?;
    match inputs.advantages {
        AdvantageView::PerRow(adv) if adv.len() != batch => Err(Error::shape(
            "advantages",
            format!("({batch},) or {expected}"),
            format!("{} elements", adv.len()),
        )),
        AdvantageView::PerToken(adv) if adv.len() != n => Err(Error::shape(
            "advantages",
            format!("({batch},) or {expected}"),
            format!("{} elements", adv.len()),
        )),
        _ => Ok(()),
    }
}

/// Every row's token weight (mask sum), in row order; validates the mask on the way.
fn row_token_weights<M: MaskElem>(mask: &[M], len: usize) -> Result<Vec<f64>> {
    let per_row: Vec<Result<f64>> = mask
        .par_chunks(len)
        .enumerate()
        .map(|(i, row)| weight_sum_dispatched(row, i))
        .collect();
    per_row.into_iter().collect()
}

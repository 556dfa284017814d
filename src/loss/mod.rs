//! The GRPO-family policy loss in one fused pass: loss value, `dL/dlogp` and the metrics TRL and
//! verl log, for `(B, T)` log-probabilities.
//!
//! Rows are independent except for the aggregation's batch counts, so the kernel runs one rayon
//! task per block of rows; every row keeps its own f64 partial sums and the rows are reduced in
//! index order afterwards, so results are bit-identical for any thread count. Tokens whose mask
//! weight is 0 are skipped entirely: their gradient is 0 and their values are never read, so
//! padding may hold anything (even -inf). Every unmasked input must be finite.

mod metrics;
mod options;
mod terms;

use rayon::prelude::*;

pub use metrics::LossMetrics;
pub use options::{Aggregation, ImportanceSamplingLevel, KlEstimator, LossOptions, LossType};

use crate::elem::{is_valid_weight, FloatElem, MaskElem};
use crate::error::{Error, Result};
use crate::exp;
use metrics::RowMetrics;
use terms::TokenTerm;

/// Tokens per vectorised pre-pass: two f64 buffers of this size stay in L1.
const CHUNK: usize = 512;

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

/// Computes the loss and writes `grad_scale * dL/dlogp` into `grad` (`B * T` floats).
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
    let max_completion_length = options.max_completion_length.unwrap_or(len.max(1));
    let aggregation = options.aggregation.unwrap_or_else(|| {
        Aggregation::for_loss_type(
            options.loss_type,
            batch,
            max_completion_length,
            options.num_items,
        )
    });
    let (tokens, valid_rows) = if aggregation.needs_batch_counts() {
        batch_counts(inputs.mask, len)?
    } else {
        (0.0, 0)
    };
    let kernel = RowKernel {
        inputs,
        options,
        aggregation,
        tokens,
        valid_rows,
    };
    let rows: Vec<RowMetrics> = if len == 0 {
        (0..batch).map(|i| kernel.row(i, &mut [])).collect()
    } else {
        grad.par_chunks_mut(len)
            .enumerate()
            .map(|(i, grad_row)| kernel.row(i, grad_row))
            .collect()
    };
    metrics::reduce(&rows, &kernel)
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
    let n = batch * len;
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

/// Total token weight and number of rows with any weight; validates the mask on the way.
fn batch_counts<M: MaskElem>(mask: &[M], len: usize) -> Result<(f64, usize)> {
    if len == 0 {
        return Ok((0.0, 0));
    }
    let per_row: Vec<Result<f64>> = mask
        .par_chunks(len)
        .enumerate()
        .map(|(i, row)| row_weight_sum(row, i))
        .collect();
    let (mut tokens, mut valid_rows) = (0.0, 0);
    for n in per_row {
        let n = n?;
        tokens += n;
        valid_rows += usize::from(n > 0.0);
    }
    Ok((tokens, valid_rows))
}

fn row_weight_sum<M: MaskElem>(row: &[M], i: usize) -> Result<f64> {
    let mut n = 0.0f64;
    let mut valid = true;
    for &m in row {
        let w = m.weight();
        valid &= !M::NEEDS_CHECK || is_valid_weight(w);
        n += w as f64;
    }
    if !valid {
        let t = row
            .iter()
            .position(|m| !is_valid_weight(m.weight()))
            .unwrap_or(0);
        return Err(Error::value(
            "mask",
            format!(
                "expected finite weights >= 0, got {} at ({i}, {t})",
                row[t].weight()
            ),
        ));
    }
    Ok(n)
}

/// Everything a row needs; shared read-only by the rayon tasks.
pub(crate) struct RowKernel<'k, 'a, T, M> {
    pub(crate) inputs: &'k LossInputs<'a, T, M>,
    pub(crate) options: &'k LossOptions,
    pub(crate) aggregation: Aggregation,
    pub(crate) tokens: f64,
    pub(crate) valid_rows: usize,
}

/// Where a non-finite value was found.
fn non_finite(arg: &'static str, value: f64, i: usize, t: usize) -> Error {
    Error::NonFinite {
        arg,
        value,
        at: format!("({i}, {t}) (an unmasked token)"),
    }
}

impl<T: FloatElem, M: MaskElem> RowKernel<'_, '_, T, M> {
    fn row(&self, i: usize, grad: &mut [f32]) -> RowMetrics {
        match self.row_checked(i, grad) {
            Ok(row) => row,
            Err(error) => RowMetrics {
                error: Some(error),
                ..RowMetrics::default()
            },
        }
    }

    fn row_checked(&self, i: usize, grad: &mut [f32]) -> Result<RowMetrics> {
        let inp = self.inputs;
        let opt = self.options;
        let len = inp.len;
        let span = i * len..(i + 1) * len;
        let lp = &inp.logp[span.clone()];
        let old = inp.old_logp.map(|o| &o[span.clone()]);
        let reference = inp.ref_logp.map(|r| &r[span.clone()]);
        let mask = &inp.mask[span.clone()];
        let adv_at = |t: usize| -> f64 {
            match inp.advantages {
                AdvantageView::PerRow(a) => a[i] as f64,
                AdvantageView::PerToken(a) => a[i * len + t] as f64,
            }
        };
        let log_ratio = |t: usize| -> Result<f64> {
            let l = lp[t].to_f64();
            if !l.is_finite() {
                return Err(non_finite("logp", l, i, t));
            }
            match old {
                Some(old) => {
                    let o = old[t].to_f64();
                    if !o.is_finite() {
                        return Err(non_finite("old_logp", o, i, t));
                    }
                    Ok(l - o)
                }
                None => Ok(0.0),
            }
        };

        // Row pre-pass (row stays in cache): token weight, and the sequence-level log ratios.
        let n = row_weight_sum(mask, i)?;
        let sequence = opt.importance_sampling_level == ImportanceSamplingLevel::Sequence;
        let vespo = opt.loss_type == LossType::Vespo;
        let (mut seq_log_ratio, mut vespo_log_ratio) = (0.0f64, 0.0f64);
        if sequence || vespo {
            for (t, &m) in mask.iter().enumerate() {
                let w = m.weight() as f64;
                if w != 0.0 {
                    let d = log_ratio(t)?;
                    seq_log_ratio += d * w;
                    vespo_log_ratio += d.clamp(-20.0, 20.0) * w;
                }
            }
            seq_log_ratio /= n.max(1.0);
        }
        // verl clamps the log ratio to +-20 before exponentiating; TRL does not.
        let ratio_of = |lw: f64| -> (f64, f64) {
            if opt.loss_type == LossType::Vanilla {
                (
                    lw.clamp(-20.0, 20.0).exp(),
                    terms::clamp_slope(lw, -20.0, 20.0),
                )
            } else {
                (lw.exp(), 1.0)
            }
        };
        let (seq_ratio, seq_slope) = ratio_of(seq_log_ratio);
        let vespo_log_w = vespo_log_ratio.clamp(1e-8f64.ln(), 20.0);

        let rho = self
            .aggregation
            .row_weight(n, inp.batch, self.tokens, self.valid_rows);
        let scale = rho * opt.grad_scale;
        let (lo, hi) = (1.0 - opt.epsilon_low, 1.0 + opt.epsilon_high());
        let mut row = RowMetrics {
            tokens: n,
            ..RowMetrics::default()
        };
        // Sum over the row of w_t * dL_t/dr (sequence level: r is shared by the row).
        let mut seq_d_ratio = 0.0f64;

        // Vectorised pre-pass per chunk: the exponentials (ratio, KL), kept in L1 for the main loop.
        let token_ratio = !sequence && old.is_some();
        let ratio_clamp = if opt.loss_type == LossType::Vanilla {
            20.0
        } else {
            f64::INFINITY
        };
        let kl_range = if opt.beta != 0.0 {
            terms::kl_exp_range(opt.kl_estimator)
        } else {
            None
        };
        let mut ratio_buf = [1.0f64; CHUNK];
        let mut kl_exp_buf = [1.0f64; CHUNK];
        for start in (0..len).step_by(CHUNK) {
            let end = (start + CHUNK).min(len);
            let chunk = start..end;
            if token_ratio {
                exp::masked_diff_exp(
                    &lp[chunk.clone()],
                    old.map(|o| &o[chunk.clone()]),
                    &mask[chunk.clone()],
                    -ratio_clamp,
                    ratio_clamp,
                    &mut ratio_buf,
                );
            }
            if let (Some((lo, hi)), Some(reference)) = (kl_range, reference) {
                exp::masked_diff_exp(
                    &reference[chunk.clone()],
                    Some(&lp[chunk.clone()]),
                    &mask[chunk.clone()],
                    lo,
                    hi,
                    &mut kl_exp_buf,
                );
            }
            for t in chunk {
                let w = mask[t].weight() as f64;
                if w == 0.0 {
                    if !grad.is_empty() {
                        grad[t] = 0.0;
                    }
                    continue;
                }
                let l = lp[t].to_f64();
                let d = log_ratio(t)?;
                let a = adv_at(t);
                if !a.is_finite() {
                    return Err(non_finite("advantages", a, i, t));
                }
                let (r, slope) = if sequence {
                    (seq_ratio, seq_slope)
                } else if opt.loss_type == LossType::Vanilla {
                    (ratio_buf[t - start], terms::clamp_slope(d, -20.0, 20.0))
                } else {
                    (ratio_buf[t - start], 1.0)
                };
                let mut term = match opt.loss_type {
                    LossType::Cispo => {
                        row.cispo_clipped +=
                            w * f64::from(u8::from(r > opt.epsilon_high() && a > 0.0));
                        terms::cispo(r, a, l, opt.epsilon_high())
                    }
                    LossType::Sapo => {
                        terms::sapo(r, a, opt.sapo_temperature_pos, opt.sapo_temperature_neg)
                    }
                    LossType::Vespo => {
                        let (k, lam) = if a >= 0.0 {
                            (opt.vespo_k_pos, opt.vespo_lambda_pos)
                        } else {
                            (opt.vespo_k_neg, opt.vespo_lambda_neg)
                        };
                        let phi = terms::vespo_phi(vespo_log_w, k, lam);
                        row.phi += w * phi;
                        terms::vespo(phi, a, l)
                    }
                    LossType::Vanilla => {
                        let (term, clipped, lower) = terms::vanilla(r, a, lo, hi, opt.clip_ratio_c);
                        row.pg_clipfrac += w * f64::from(u8::from(clipped));
                        row.pg_clipfrac_lower += w * f64::from(u8::from(lower && a < 0.0));
                        row.ppo_kl += w * -d.clamp(-20.0, 20.0);
                        term
                    }
                    _ => {
                        let shown = opt.delta.map_or(r, |delta| r.min(delta));
                        let low = shown < lo && a < 0.0;
                        let high = shown > hi && a > 0.0;
                        row.clip_low += w * f64::from(u8::from(low));
                        row.clip_high += w * f64::from(u8::from(high));
                        row.clip_region += w * f64::from(u8::from(low || high));
                        terms::clipped(r, a, lo, hi, opt.delta)
                    }
                };
                if opt.beta != 0.0 {
                    let reference = reference.map_or(l, |rf| rf[t].to_f64());
                    if !reference.is_finite() {
                        return Err(non_finite("ref_logp", reference, i, t));
                    }
                    let (kl, d_kl) =
                        terms::kl(opt.kl_estimator, l, reference, kl_exp_buf[t - start]);
                    let kl_term = if opt.kl_bias_correction {
                        term.d_ratio += opt.beta * kl;
                        term.d_logp += opt.beta * r * d_kl;
                        kl * r
                    } else {
                        term.d_logp += opt.beta * d_kl;
                        kl
                    };
                    term.loss += opt.beta * kl_term;
                    row.kl += w * kl_term;
                }
                let TokenTerm {
                    loss,
                    d_ratio,
                    d_logp,
                } = term;
                row.loss += w * loss;
                if grad.is_empty() {
                    continue;
                }
                let g = if sequence {
                    seq_d_ratio += w * d_ratio;
                    scale * w * d_logp
                } else {
                    scale * w * (d_logp + d_ratio * r * slope)
                };
                grad[t] = g as f32;
            }
        }
        if sequence && seq_d_ratio != 0.0 {
            // d log w_i / d lp_t = M_t / max(n, 1): spread the row's ratio gradient over its tokens.
            let common = scale * seq_d_ratio * seq_ratio * seq_slope / n.max(1.0);
            for (g, &m) in grad.iter_mut().zip(mask) {
                let w = m.weight() as f64;
                if w != 0.0 {
                    *g = (*g as f64 + common * w) as f32;
                }
            }
        }
        if let Some(t) = grad.iter().position(|g| !g.is_finite()) {
            return Err(Error::Overflow {
                arg: "grad",
                detail: format!(
                    "the gradient at ({i}, {t}) is {}; check the log-probability gaps",
                    grad[t]
                ),
            });
        }
        if let AdvantageView::PerRow(adv) = inp.advantages {
            // TRL's per-sequence metric values ((B, 1) tensors): defined even for empty rows.
            let a = adv[i] as f64;
            let (k, lam) = if a >= 0.0 {
                (opt.vespo_k_pos, opt.vespo_lambda_pos)
            } else {
                (opt.vespo_k_neg, opt.vespo_lambda_neg)
            };
            row.phi_row = terms::vespo_phi(vespo_log_w, k, lam);
            let shown = opt.delta.map_or(seq_ratio, |delta| seq_ratio.min(delta));
            let low = shown < lo && a < 0.0;
            let high = shown > hi && a > 0.0;
            row.clip_low_row = f64::from(u8::from(low));
            row.clip_high_row = f64::from(u8::from(high));
            row.clip_region_row = f64::from(u8::from(low || high));
            row.cispo_row = f64::from(u8::from(seq_ratio > opt.epsilon_high() && a > 0.0));
        }
        row.loss_weighted = rho * row.loss;
        Ok(row)
    }
}

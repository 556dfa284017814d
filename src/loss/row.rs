//! One row of the fused loss: loss sum, gradient and metric sums of a `(T,)` slice.
//!
//! The row is processed in chunks of [`CHUNK`] tokens. A pre-pass (generic over the input and
//! mask element types) converts the chunk to f64 buffers - weights, log-probs, advantages, log
//! ratios and their exponentials - replacing masked-out tokens by harmless values and recording
//! whether any unmasked input is non-finite. The main pass (generic over the loss type only) is
//! branch-free per token and accumulates into [`LANES`] fixed lanes, so it vectorises and its
//! sums have a fixed order whatever the thread count.

// The chunk loops walk up to eight parallel buffers with one index; zipping them all would
// hide the formulas.
#![allow(clippy::needless_range_loop)]

use super::options::{ImportanceSamplingLevel, KlEstimator, LossOptions, LossType};
use super::terms::{self, Objective};
use super::{AdvantageView, LossInputs};
use crate::elem::{is_valid_weight, FloatElem, MaskElem};
use crate::error::{Error, Result};
use crate::numeric::exp;
use crate::numeric::simd::simd_dispatch;

/// Tokens per chunk: the chunk's sixteen f64 buffers (16 KiB) stay in L1.
const CHUNK: usize = 128;
/// Independent accumulators per sum (a multiple of the widest f64 vector).
const LANES: usize = 8;

/// A sum kept in [`LANES`] lanes: lane `t % LANES` takes token `t`.
#[derive(Clone, Copy)]
struct Lanes([f64; LANES]);

impl Lanes {
    const ZERO: Lanes = Lanes([0.0; LANES]);

    #[inline(always)]
    fn add(&mut self, lane: usize, x: f64) {
        self.0[lane] += x;
    }

    /// Adds `w[k] * x[k]` to lane `k % LANES` (slices start at a multiple of `LANES`).
    #[inline(always)]
    fn add_weighted(&mut self, w: &[f64], x: &[f64]) {
        let (w_blocks, x_blocks) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
        let (w_rest, x_rest) = (w_blocks.remainder(), x_blocks.remainder());
        for (w, x) in w_blocks.zip(x_blocks) {
            for j in 0..LANES {
                self.0[j] += w[j] * x[j];
            }
        }
        for j in 0..w_rest.len().min(x_rest.len()) {
            self.0[j] += w_rest[j] * x_rest[j];
        }
    }

    fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

simd_dispatch! {
    /// [`weight_sum`] compiled for the SIMD level in use (additions only, in the same order, so
    /// every level gives the same sum).
    pub(crate) fn weight_sum_dispatched<M: MaskElem>(row: &[M], i: usize) -> Result<f64> => weight_sum
}

/// Sum of a row's mask weights (lanes for speed, fixed order); errors on a negative or
/// non-finite weight.
#[inline(always)]
pub(crate) fn weight_sum<M: MaskElem>(row: &[M], i: usize) -> Result<f64> {
    if let Some(bytes) = M::as_bytes(row) {
        // A bool mask: the sum is a count, exact in any order (so the same as the lanes below
        // give), of bytes summed in 32-bit lanes.
        let count = bytes
            .chunks(1 << 20)
            .map(|block| block.iter().map(|&b| u32::from(b)).sum::<u32>() as u64)
            .sum::<u64>();
        return Ok(count as f64);
    }
    let mut lanes = Lanes::ZERO;
    let mut valid = true;
    // Whole blocks of `LANES` tokens, so lane `j` is a register rather than `t % LANES` indexing
    // a stack array (a store-to-load chain per token); same additions in the same order.
    let blocks = row.chunks_exact(LANES);
    let rest = blocks.remainder();
    for block in blocks {
        for (j, &m) in block.iter().enumerate() {
            let w = m.weight();
            valid &= !M::NEEDS_CHECK || is_valid_weight(w);
            lanes.add(j, w as f64);
        }
    }
    for (j, &m) in rest.iter().enumerate() {
        let w = m.weight();
        valid &= !M::NEEDS_CHECK || is_valid_weight(w);
        lanes.add(j, w as f64);
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
    Ok(lanes.total())
}

/// A row's sums, each token weighted by its mask weight.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowSums {
    pub tokens: f64,
    pub loss: f64,
    /// `rho_i * loss`: the row's share of the batch loss.
    pub loss_weighted: f64,
    pub kl: f64,
    /// The loss type's three metric sums, in the slots its objective names
    /// ([`terms::Clipped::LOW`], ...; see [`terms::TokenTerm::metrics`]).
    pub metrics: [f64; 3],
    /// Per-sequence clip indicators (slots of [`terms::Clipped`]) where TRL's tensors are
    /// `(B, 1)`.
    pub clip_row: [f64; 3],
    pub cispo_row: f64,
    pub phi_row: f64,
}

/// What the computation of every row shares (inputs, options, row weights); [`RowKernel::run`]
/// computes one row.
pub(crate) struct RowKernel<'k, 'a, T, M> {
    pub inputs: &'k LossInputs<'a, T, M>,
    pub options: &'k LossOptions,
    /// `rho_i` as a function of the row's token weight.
    pub row_weight: &'k (dyn Fn(f64) -> f64 + Sync),
    /// Each row's token weight, when the batch pass already summed (and validated) the mask.
    pub row_tokens: Option<&'k [f64]>,
    /// Whether the rows take the float32 path (decided once per call:
    /// [`super::uses_float32_path`]).
    pub float32: bool,
}

fn non_finite(arg: &'static str, value: f64, i: usize, t: usize) -> Error {
    Error::NonFinite {
        arg,
        value,
        at: format!("({i}, {t}) (an unmasked token)"),
    }
}

/// The chunk's f64 working set.
struct Buffers {
    w: [f64; CHUNK],
    lp: [f64; CHUNK],
    a: [f64; CHUNK],
    /// Log ratio (clamped where the loss clamps it).
    d: [f64; CHUNK],
    r: [f64; CHUNK],
    /// `dr / dlp` factor from the clamp of the log ratio (1 or 0).
    slope: [f64; CHUNK],
    kl: [f64; CHUNK],
    d_kl: [f64; CHUNK],
    kl_plus_d: [f64; CHUNK],
    loss: [f64; CHUNK],
    d_ratio: [f64; CHUNK],
    d_logp: [f64; CHUNK],
    m0: [f64; CHUNK],
    m1: [f64; CHUNK],
    m2: [f64; CHUNK],
}

impl Buffers {
    fn new() -> Box<Self> {
        Box::new(Buffers {
            w: [0.0; CHUNK],
            lp: [0.0; CHUNK],
            a: [0.0; CHUNK],
            d: [0.0; CHUNK],
            r: [1.0; CHUNK],
            slope: [1.0; CHUNK],
            kl: [0.0; CHUNK],
            d_kl: [0.0; CHUNK],
            kl_plus_d: [0.0; CHUNK],
            loss: [0.0; CHUNK],
            d_ratio: [0.0; CHUNK],
            d_logp: [0.0; CHUNK],
            m0: [0.0; CHUNK],
            m1: [0.0; CHUNK],
            m2: [0.0; CHUNK],
        })
    }
}

impl<T: FloatElem, M: MaskElem> RowKernel<'_, '_, T, M> {
    /// Computes row `i`, writing `grad_scale * dL/dlogp` into `grad` (`T >= 1` entries).
    pub(crate) fn run(&self, i: usize, grad: &mut [f32]) -> Result<RowSums> {
        let opt = self.options;
        let (lo, hi) = (1.0 - opt.epsilon_low, 1.0 + opt.epsilon_high());
        match opt.loss_type {
            LossType::Cispo => self.run_with(
                i,
                grad,
                &terms::Cispo {
                    eh: opt.epsilon_high(),
                },
            ),
            LossType::Sapo => self.run_with(
                i,
                grad,
                &terms::Sapo {
                    tau_pos: opt.sapo_temperature_pos,
                    tau_neg: opt.sapo_temperature_neg,
                },
            ),
            LossType::Vanilla if self.float32 => self.run_f32(i, grad),
            LossType::Vanilla => self.run_with(
                i,
                grad,
                &terms::Vanilla {
                    lo,
                    hi,
                    clip_ratio_c: opt.clip_ratio_c,
                },
            ),
            LossType::Vespo => {
                let log_w = self.vespo_log_w(i)?;
                let vespo = terms::Vespo {
                    phi_nonneg: terms::vespo_phi(log_w, opt.vespo_k_pos, opt.vespo_lambda_pos),
                    phi_neg: terms::vespo_phi(log_w, opt.vespo_k_neg, opt.vespo_lambda_neg),
                };
                let mut sums = self.run_with(i, grad, &vespo)?;
                if let AdvantageView::PerRow(adv) = self.inputs.advantages {
                    // TRL's phi is a (B, 1) tensor here: one value per row, empty rows included.
                    sums.phi_row = vespo.phi(adv[i] as f64);
                }
                Ok(sums)
            }
            _ if self.float32 => self.run_f32(i, grad),
            _ => self.run_f64(i, grad),
        }
    }

    /// Row `i` of a PPO-clipped loss (TRL's grpo family, or verl's vanilla loss) on the float64
    /// path.
    pub(super) fn run_f64(&self, i: usize, grad: &mut [f32]) -> Result<RowSums> {
        let opt = self.options;
        if opt.loss_type == LossType::Vanilla {
            let vanilla = terms::Vanilla {
                lo: 1.0 - opt.epsilon_low,
                hi: 1.0 + opt.epsilon_high(),
                clip_ratio_c: opt.clip_ratio_c,
            };
            return self.run_with(i, grad, &vanilla);
        }
        let policy = terms::Clipped {
            lo: 1.0 - opt.epsilon_low,
            hi: 1.0 + opt.epsilon_high(),
            delta: opt.delta.unwrap_or(f64::INFINITY),
        };
        self.run_with(i, grad, &policy)
    }

    pub(super) fn slices(&self, i: usize) -> RowSlices<'_, T, M> {
        let len = self.inputs.len;
        let span = i * len..(i + 1) * len;
        RowSlices {
            lp: &self.inputs.logp[span.clone()],
            old: self.inputs.old_logp.map(|o| &o[span.clone()]),
            reference: self.inputs.ref_logp.map(|r| &r[span.clone()]),
            mask: &self.inputs.mask[span],
        }
    }

    /// Finds the first unmasked non-finite input of row `i` in tokens `range`.
    pub(super) fn locate_non_finite(&self, i: usize, range: std::ops::Range<usize>) -> Error {
        let s = self.slices(i);
        for t in range {
            if s.mask[t].weight() == 0.0 {
                continue;
            }
            let checks = [
                ("logp", Some(s.lp[t].to_f64())),
                ("old_logp", s.old.map(|o| o[t].to_f64())),
                (
                    "ref_logp",
                    s.reference
                        .filter(|_| self.options.beta != 0.0)
                        .map(|r| r[t].to_f64()),
                ),
                ("advantages", Some(self.advantage(i, t))),
            ];
            for (arg, value) in checks {
                if let Some(v) = value.filter(|v| !v.is_finite()) {
                    return non_finite(arg, v, i, t);
                }
            }
        }
        Error::value("logp", format!("non-finite value in row {i}"))
    }

    #[inline(always)]
    fn advantage(&self, i: usize, t: usize) -> f64 {
        match self.inputs.advantages {
            AdvantageView::PerRow(a) => a[i] as f64,
            AdvantageView::PerToken(a) => a[i * self.inputs.len + t] as f64,
        }
    }

    /// `sum_t log_ratio * M / max(n, 1)` (GSPO's sequence log ratio), unclamped.
    fn sequence_log_ratio(&self, i: usize, n: f64) -> Result<f64> {
        let s = self.slices(i);
        let Some(old) = s.old else { return Ok(0.0) };
        let mut lanes = Lanes::ZERO;
        let mut finite = true;
        for (t, ((lp, old), m)) in s.lp.iter().zip(old).zip(s.mask).enumerate() {
            let w = m.weight() as f64;
            let d = lp.to_f64() - old.to_f64();
            finite &= w == 0.0 || d.is_finite();
            lanes.add(t % LANES, if w != 0.0 { d * w } else { 0.0 });
        }
        if !finite {
            return Err(self.locate_non_finite(i, 0..s.lp.len()));
        }
        Ok(lanes.total() / n.max(1.0))
    }

    /// VESPO's `log w = clamp(sum_t clamp(log_ratio, +-20) * M, log 1e-8, 20)`.
    fn vespo_log_w(&self, i: usize) -> Result<f64> {
        let s = self.slices(i);
        let mut lanes = Lanes::ZERO;
        if let Some(old) = s.old {
            let mut finite = true;
            for (t, ((lp, old), m)) in s.lp.iter().zip(old).zip(s.mask).enumerate() {
                let w = m.weight() as f64;
                let d = lp.to_f64() - old.to_f64();
                finite &= w == 0.0 || d.is_finite();
                lanes.add(
                    t % LANES,
                    if w != 0.0 {
                        d.clamp(-20.0, 20.0) * w
                    } else {
                        0.0
                    },
                );
            }
            if !finite {
                return Err(self.locate_non_finite(i, 0..s.lp.len()));
            }
        }
        Ok(lanes.total().clamp(1e-8f64.ln(), 20.0))
    }

    fn run_with<P: Objective>(&self, i: usize, grad: &mut [f32], policy: &P) -> Result<RowSums> {
        run_with_dispatched(self, i, grad, policy)
    }

    #[inline(always)]
    fn run_with_portable<P: Objective>(
        &self,
        i: usize,
        grad: &mut [f32],
        policy: &P,
    ) -> Result<RowSums> {
        let opt = self.options;
        let s = self.slices(i);
        let len = s.lp.len();
        let n = match self.row_tokens {
            Some(counts) => counts[i],
            None => weight_sum(s.mask, i)?,
        };
        let sequence = opt.importance_sampling_level == ImportanceSamplingLevel::Sequence;
        let vanilla = opt.loss_type == LossType::Vanilla;
        // verl clamps the log ratio to +-20 before exponentiating; TRL does not.
        let ratio_clamp = if vanilla { 20.0 } else { f64::INFINITY };
        let seq_log_ratio = if sequence {
            self.sequence_log_ratio(i, n)?
        } else {
            0.0
        };
        let seq_d = seq_log_ratio.clamp(-ratio_clamp, ratio_clamp);
        let seq_ratio = exp::exp(seq_d);
        let seq_slope = if vanilla {
            terms::clamp_slope(seq_log_ratio, -20.0, 20.0)
        } else {
            1.0
        };

        let rho = (self.row_weight)(n);
        let scale = rho * opt.grad_scale;
        let beta = opt.beta;
        let has_kl = beta != 0.0;
        let bias = terms::flag(opt.kl_bias_correction);

        let mut buf = Buffers::new();
        let (mut loss, mut kl_sum, mut seq_d_ratio) = (Lanes::ZERO, Lanes::ZERO, Lanes::ZERO);
        let mut metrics = [Lanes::ZERO; 3];
        let mut grad_finite = true;
        let mut seq_direct = if sequence {
            vec![0.0f64; len]
        } else {
            Vec::new()
        };

        for start in (0..len).step_by(CHUNK) {
            let end = (start + CHUNK).min(len);
            let m = end - start;
            // Pre-pass: typed inputs to f64, masked-out tokens to neutral values.
            let mut finite = true;
            for (w, m) in buf.w[..m].iter_mut().zip(&s.mask[start..end]) {
                *w = m.weight() as f64;
            }
            for ((out, w), lp) in buf.lp[..m]
                .iter_mut()
                .zip(&buf.w[..m])
                .zip(&s.lp[start..end])
            {
                let lp = lp.to_f64();
                let on = *w != 0.0;
                finite &= !on | lp.is_finite();
                *out = if on { lp } else { 0.0 };
            }
            match self.inputs.advantages {
                AdvantageView::PerRow(adv) => buf.a[..m].fill(adv[i] as f64),
                AdvantageView::PerToken(adv) => {
                    let row = &adv[i * len + start..i * len + end];
                    for ((out, w), a) in buf.a[..m].iter_mut().zip(&buf.w[..m]).zip(row) {
                        let a = *a as f64;
                        let on = *w != 0.0;
                        finite &= !on | a.is_finite();
                        *out = if on { a } else { 0.0 };
                    }
                }
            }
            if sequence {
                buf.d[..m].fill(seq_d);
                buf.r[..m].fill(seq_ratio);
                buf.slope[..m].fill(seq_slope);
            } else if let Some(old) = s.old {
                let old = &old[start..end];
                for k in 0..m {
                    let o = old[k].to_f64();
                    let on = buf.w[k] != 0.0;
                    finite &= !on | o.is_finite();
                    let d = if on { buf.lp[k] - o } else { 0.0 };
                    buf.d[k] = terms::clamp(d, -ratio_clamp, ratio_clamp);
                    buf.slope[k] = if vanilla {
                        terms::clamp_slope(d, -20.0, 20.0)
                    } else {
                        1.0
                    };
                }
                exp::exp_slice(&buf.d[..m], &mut buf.r[..m]);
            } else {
                buf.d[..m].fill(0.0);
                buf.r[..m].fill(1.0);
                buf.slope[..m].fill(1.0);
            }
            if has_kl {
                if let Some(reference) = s.reference {
                    let reference = &reference[start..end];
                    for k in 0..m {
                        let rf = reference[k].to_f64();
                        let on = buf.w[k] != 0.0;
                        finite &= !on | rf.is_finite();
                        // The KL pass reads `ref - lp` through `d_kl` as scratch.
                        buf.d_kl[k] = if on { rf - buf.lp[k] } else { 0.0 };
                    }
                    kl_chunk(opt, &mut buf, m);
                }
            }
            if !finite {
                return Err(self.locate_non_finite(i, start..end));
            }

            // Main passes: elementwise maps (vectorised), then lane sums.
            for k in 0..m {
                let term = policy.term(buf.r[k], buf.a[k], buf.lp[k], buf.d[k]);
                buf.loss[k] = term.loss;
                buf.d_ratio[k] = term.d_ratio;
                buf.d_logp[k] = term.d_logp;
                buf.m0[k] = term.metrics[0];
                buf.m1[k] = term.metrics[1];
                buf.m2[k] = term.metrics[2];
            }
            if has_kl {
                // One loop per level: a `sequence` test inside the loop stayed a branch per
                // vector (masked loads and stores), about 15% of the KL path's time.
                if sequence {
                    kl_terms::<true>(beta, bias, &mut buf, m);
                } else {
                    kl_terms::<false>(beta, bias, &mut buf, m);
                }
                kl_sum.add_weighted(&buf.w[..m], &buf.kl[..m]);
            }
            if sequence {
                // The direct part waits in f64 for the row's ratio term: the two can cancel
                // (bias-corrected KL far from the reference), which float32 would not survive.
                let direct = &mut seq_direct[start..end];
                for k in 0..m {
                    direct[k] = scale * buf.w[k] * buf.d_logp[k];
                }
            } else {
                let g = &mut grad[start..end];
                for k in 0..m {
                    let ratio_path = buf.d_ratio[k] * buf.r[k] * buf.slope[k];
                    g[k] = (scale * buf.w[k] * (buf.d_logp[k] + ratio_path)) as f32;
                }
                grad_finite &= g.iter().fold(true, |ok, v| ok & v.is_finite());
            }
            loss.add_weighted(&buf.w[..m], &buf.loss[..m]);
            seq_d_ratio.add_weighted(&buf.w[..m], &buf.d_ratio[..m]);
            metrics[0].add_weighted(&buf.w[..m], &buf.m0[..m]);
            metrics[1].add_weighted(&buf.w[..m], &buf.m1[..m]);
            metrics[2].add_weighted(&buf.w[..m], &buf.m2[..m]);
        }

        if sequence {
            // d log w_i / d lp_t = M_t / max(n, 1): spread the row's ratio gradient over its tokens.
            let common = scale * seq_d_ratio.total() * seq_ratio * seq_slope / n.max(1.0);
            for ((g, &direct), &m) in grad.iter_mut().zip(&seq_direct).zip(s.mask) {
                let value = (direct + common * m.weight() as f64) as f32;
                grad_finite &= value.is_finite();
                *g = value;
            }
        }
        if !grad_finite {
            let t = grad.iter().position(|g| !g.is_finite()).unwrap_or(0);
            return Err(Error::Overflow {
                arg: "grad",
                detail: format!(
                    "the gradient at ({i}, {t}) is {}; check the log-probability gaps",
                    grad[t]
                ),
            });
        }

        let mut sums = RowSums {
            tokens: n,
            loss: loss.total(),
            kl: kl_sum.total(),
            metrics: metrics.map(|m| m.total()),
            ..RowSums::default()
        };
        sums.loss_weighted = rho * sums.loss;
        self.add_per_row_metrics(i, seq_ratio, &mut sums);
        Ok(sums)
    }

    /// TRL's per-sequence metric values ((B, 1) tensors), which exist even for empty rows, from
    /// the row's sequence-level ratio (1 at token level).
    pub(super) fn add_per_row_metrics(&self, i: usize, seq_ratio: f64, sums: &mut RowSums) {
        let opt = self.options;
        if let AdvantageView::PerRow(adv) = self.inputs.advantages {
            let a = adv[i] as f64;
            let (lo, hi) = (1.0 - opt.epsilon_low, 1.0 + opt.epsilon_high());
            let shown = opt.delta.map_or(seq_ratio, |delta| seq_ratio.min(delta));
            let low = shown < lo && a < 0.0;
            let high = shown > hi && a > 0.0;
            sums.clip_row[terms::Clipped::LOW] = terms::flag(low);
            sums.clip_row[terms::Clipped::HIGH] = terms::flag(high);
            sums.clip_row[terms::Clipped::REGION] = terms::flag(low || high);
            sums.cispo_row = terms::flag(seq_ratio > opt.epsilon_high() && a > 0.0);
        }
    }
}

pub(super) struct RowSlices<'s, T, M> {
    pub lp: &'s [T],
    pub old: Option<&'s [T]>,
    pub reference: Option<&'s [T]>,
    pub mask: &'s [M],
}

/// Adds the KL term (`beta * kl`, times `r` with bias correction) and its gradient to the
/// chunk's policy terms, and leaves the weighted-to-be KL in `kl`. `SEQUENCE`: the sequence-level
/// ratio, whose gradient is spread over the row later with the policy's.
#[inline(always)]
fn kl_terms<const SEQUENCE: bool>(beta: f64, bias: f64, buf: &mut Buffers, m: usize) {
    for k in 0..m {
        // With bias correction the KL is multiplied by r (gradient through r too).
        let r = buf.r[k];
        let kr = bias * r + (1.0 - bias);
        let kl = buf.kl[k];
        buf.loss[k] += beta * kl * kr;
        if SEQUENCE {
            buf.d_ratio[k] += bias * beta * kl;
            buf.d_logp[k] += beta * kr * buf.d_kl[k];
        } else {
            // Token level: the KL's whole gradient, `r (kl' + slope kl)` with bias correction,
            // from the cancellation-free `kl + kl'` where slope is 1.
            let slope = buf.slope[k];
            let corrected = r * (slope * buf.kl_plus_d[k] + (1.0 - slope) * buf.d_kl[k]);
            buf.d_logp[k] += beta * (bias * corrected + (1.0 - bias) * buf.d_kl[k]);
        }
        buf.kl[k] = kl * kr;
    }
}

/// Fills `kl`, `d_kl` and `kl_plus_d` from the gap `ref - lp` held in `d_kl`.
#[inline(always)]
fn kl_chunk(opt: &LossOptions, buf: &mut Buffers, m: usize) {
    let mut e = [1.0f64; CHUNK];
    if let Some((lo, hi)) = terms::kl_exp_range(opt.kl_estimator) {
        let mut gap = [0.0f64; CHUNK];
        for k in 0..m {
            gap[k] = terms::clamp(buf.d_kl[k], lo, hi);
        }
        exp::exp_slice(&gap[..m], &mut e[..m]);
    }
    // One inlined loop per estimator: the estimator is a constant in each, so the loop vectorises.
    match opt.kl_estimator {
        KlEstimator::K1 => fill_kl(KlEstimator::K1, buf, &e, m),
        KlEstimator::Abs => fill_kl(KlEstimator::Abs, buf, &e, m),
        KlEstimator::K2 => fill_kl(KlEstimator::K2, buf, &e, m),
        KlEstimator::K3 => fill_kl(KlEstimator::K3, buf, &e, m),
        KlEstimator::LowVarKl => fill_kl(KlEstimator::LowVarKl, buf, &e, m),
    }
}

#[inline(always)]
fn fill_kl(estimator: KlEstimator, buf: &mut Buffers, e: &[f64; CHUNK], m: usize) {
    for k in 0..m {
        let (kl, d, sum) = terms::kl(estimator, buf.d_kl[k], e[k]);
        buf.kl[k] = kl;
        buf.d_kl[k] = d;
        buf.kl_plus_d[k] = sum;
    }
}

/// [`RowKernel::run_with_portable`] as a free function, for [`simd_dispatch!`].
#[inline(always)]
fn run_with_inline<T: FloatElem, M: MaskElem, P: Objective>(
    kernel: &RowKernel<'_, '_, T, M>,
    i: usize,
    grad: &mut [f32],
    policy: &P,
) -> Result<RowSums> {
    kernel.run_with_portable(i, grad, policy)
}

simd_dispatch! {
    /// One row of the float64 path compiled for the SIMD level in use (the same operations in the
    /// same order at every level: wider vectors, the same results).
    fn run_with_dispatched<T: FloatElem, M: MaskElem, P: Objective>(
        kernel: &RowKernel<'_, '_, T, M>,
        i: usize,
        grad: &mut [f32],
        policy: &P,
    ) -> Result<RowSums> => run_with_inline
}

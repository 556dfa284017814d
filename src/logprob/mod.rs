//! Fused selective log-softmax: the log-probability of one target token per row of logits, and
//! optionally the row's entropy, without materialising the `(N, V)` log-softmax.
//!
//! With `z = logits / T`: `logp_y = z_y - lse(z)`, `H = lse - sum_j p_j z_j`. The forward makes one
//! pass over each row in chunks of [`CHUNK`] logits (the chunk is upcast to f64 in L1, its max
//! taken, then its exponentials summed): an online log-sum-exp keeps the running max `m`,
//! `s = sum e^(z - m)` and `t = sum e^(z - m) (z - m)` (shifted, so `H = ln s - t / s` has no
//! cancellation even for logits of 1e4), rescaling `s` and `t` when the max grows. Sums are kept
//! in [`LANES`] fixed f64 lanes, so results are the same for any thread count.
//!
//! The backward recomputes `m` and `s` (one more pass; skipped when given the forward's stats,
//! [`ForwardOut::stats`] handed back as [`Upstream::stats`]) and writes each `dlogits` element
//! once, in the output's dtype ([`GradElem`]: f32, f64, bf16 or f16, the halves rounded to
//! nearest even):
//! `dz_j = g (1[j=y] - p_j) - g_H p_j (log p_j + H)`, `dlogits_j = dz_j / T`.
//!
//! On x86-64 CPUs with AVX2, FMA and F16C, f32/bf16/f16 logits take the `avx2` path (for
//! `1 / T` in `[2^-32, 2^32]`): the same passes with the exponentials in f32, eight at a time
//! (about 2 ulp), widened to f64 (after adding pairs in f32) before they are summed, so `logp`
//! stays within ~4e-7 absolute of the float64 value (see `avx2`). Everything else (f64 logits,
//! other CPUs, extreme temperatures, [`LogprobOptions::float32_exp`] off) takes the f64 path. Either way the reduction order is fixed
//! per row, so results do not depend on the thread count.
//!
//! Rows are read where they lie ([`RowLayout`], [`LogitRows`]): a `(B, T, V)` view such as TRL's
//! `logits[:, :-1]` needs no copy, and the backward can write into a full-size gradient of the
//! same layout ([`selective_logprobs_backward_rows`]).
//!
//! A logit of `-inf` is allowed and means probability 0 (a banned token): it adds nothing to the
//! sums, its gradient is `g 1[j=y] / T` (the entropy part's limit `p log p -> 0`), and as a target
//! it gives `logp = -inf`. A row whose logits are all `-inf`, NaN and `+inf` are errors.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod checks;
mod layout;
mod row_backward;
mod stats;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

use crate::elem::FloatElem;
pub use crate::elem::GradElem;
use crate::error::{Error, Result};
use crate::numeric::exp::exp;
use checks::{check_common, check_finite, check_len, target, to_f32};
pub use layout::{buffers_overlap, rows_mut, LogitRows, RowLayout};
use row_backward::row_backward;
#[cfg(target_arch = "x86_64")]
use row_backward::row_backward_fast;
#[cfg(target_arch = "x86_64")]
use stats::use_fast;
pub use stats::STATS_PER_ROW;
use stats::{row_stats, RowStats};

/// Logits per chunk: the chunk's three f64 buffers (12 KiB) stay in L1.
const CHUNK: usize = 512;
/// Independent accumulators per sum (a multiple of the widest f64 vector).
const LANES: usize = 8;

/// How the selective log-softmax computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogprobOptions {
    /// `z = logits / temperature`; finite and > 0.
    pub temperature: f64,
    /// Allow float32 exponentials for f32/bf16/f16 logits (the `avx2` path, where the CPU has
    /// AVX2, FMA and F16C): `logp` within ~4e-7 absolute of its float64 value. `false` computes
    /// every element in float64.
    pub float32_exp: bool,
}

impl LogprobOptions {
    /// `temperature`, float32 exponentials allowed.
    pub fn new(temperature: f64) -> Self {
        LogprobOptions {
            temperature,
            float32_exp: true,
        }
    }
}

impl Default for LogprobOptions {
    fn default() -> Self {
        LogprobOptions::new(1.0)
    }
}

/// Where the forward writes, one value per row (`N = targets.len()`).
#[derive(Debug)]
pub struct ForwardOut<'a> {
    pub logp: &'a mut [f32],
    /// The entropy of `softmax(logits / T)`, when asked for.
    pub entropy: Option<&'a mut [f32]>,
    /// Each row's log-sum-exp statistics (`N * STATS_PER_ROW` f64), for [`Upstream::stats`].
    pub stats: Option<&'a mut [f64]>,
}

impl<'a> ForwardOut<'a> {
    /// `logp` only.
    pub fn logp(logp: &'a mut [f32]) -> Self {
        ForwardOut {
            logp,
            entropy: None,
            stats: None,
        }
    }
}

/// What the backward receives, one value per row: `grad_logp` (and `grad_entropy`) hold `N`
/// finite values.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    pub grad_logp: &'a [f32],
    pub grad_entropy: Option<&'a [f32]>,
    /// The statistics [`ForwardOut::stats`] received for the same logits, targets and
    /// temperature: one pass over the logits instead of two, and the same result. A row whose
    /// statistics lack what is needed (no `t` while `grad_entropy` is given) is recomputed. The
    /// logits are not checked again (the forward did).
    pub stats: Option<&'a [f64]>,
}

/// `log softmax(logits / T)[y]` per row and, if asked, the entropy of `softmax(logits / T)` and
/// the rows' statistics, over `N = targets.len()` rows of `vocab` logits.
///
/// Errors: `targets` outside `[0, vocab)`, `temperature` not finite and > 0, a NaN or `+inf`
/// logit (a `-inf` logit is a token of probability 0; a row of only `-inf` is an error),
/// mismatched lengths.
pub fn selective_logprobs<T: FloatElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    options: &LogprobOptions,
    out: ForwardOut<'_>,
) -> Result<()> {
    check_common(vocab, options.temperature)?;
    let rows = LogitRows::dense(logits, vocab, targets.len())?;
    selective_logprobs_rows(rows, targets, options, out)
}

/// [`selective_logprobs`] over rows in any [`RowLayout`] (a `(B, T, V)` view read in place);
/// `targets` has one id per row.
pub fn selective_logprobs_rows<T: FloatElem>(
    logits: LogitRows<'_, T>,
    targets: &[i64],
    options: &LogprobOptions,
    out: ForwardOut<'_>,
) -> Result<()> {
    let ForwardOut {
        logp: logp_out,
        entropy: entropy_out,
        stats: stats_out,
    } = out;
    let layout = logits.layout();
    let (rows, vocab) = (layout.rows, layout.vocab);
    check_common(vocab, options.temperature)?;
    check_len("targets", targets.len(), rows)?;
    check_len("logp_out", logp_out.len(), rows)?;
    if let Some(h) = &entropy_out {
        check_len("entropy_out", h.len(), rows)?;
    }
    if let Some(st) = &stats_out {
        check_len("stats_out", st.len(), rows * STATS_PER_ROW)?;
    }
    let want_entropy = entropy_out.is_some();
    let (inv_t, fast) = (1.0 / options.temperature, options.float32_exp);
    let results: Vec<Result<(f32, f32, RowStats)>> = (0..rows)
        .into_par_iter()
        .map(|i| {
            let row = logits.row(i);
            let y = target(targets, i, vocab)?;
            let stats = row_stats(row, i, inv_t, want_entropy, fast)?;
            let z_y = row[y].to_f64() * inv_t;
            let logp = (z_y - stats.m) - stats.ln_s();
            let h = if want_entropy { stats.entropy() } else { 0.0 };
            Ok((to_f32("logp", logp, i)?, h as f32, stats))
        })
        .collect();
    let mut entropy_out = entropy_out;
    let mut stats_out = stats_out;
    for (i, result) in results.into_iter().enumerate() {
        let (logp, h, stats) = result?;
        logp_out[i] = logp;
        if let Some(out) = entropy_out.as_deref_mut() {
            out[i] = h;
        }
        if let Some(out) = stats_out.as_deref_mut() {
            stats.store(
                &mut out[i * STATS_PER_ROW..(i + 1) * STATS_PER_ROW],
                want_entropy,
            );
        }
    }
    Ok(())
}

/// Gradient of `sum_i grad_logp[i] * logp_i + grad_entropy[i] * H_i` with respect to the logits,
/// written once per element into `dlogits_out` (`N * vocab` elements of any [`GradElem`]: f32,
/// f64, or bf16/f16 rounded to nearest even). Same checks as the forward.
pub fn selective_logprobs_backward<T: FloatElem, O: GradElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    options: &LogprobOptions,
    upstream: &Upstream<'_>,
    dlogits_out: &mut [O],
) -> Result<()> {
    check_common(vocab, options.temperature)?;
    let rows = LogitRows::dense(logits, vocab, targets.len())?;
    let layout = rows.layout();
    if dlogits_out.len() != logits.len() {
        return Err(Error::shape(
            "dlogits_out",
            format!("({}, {vocab})", layout.rows),
            format!("{} elements", dlogits_out.len()),
        ));
    }
    selective_logprobs_backward_rows(rows, targets, options, upstream, dlogits_out, layout)
}

/// [`selective_logprobs_backward`] over rows in any [`RowLayout`], writing `dlogits_out` in
/// `out_layout` (the same rows and vocabulary, rows apart: dense, or the logits' own layout in
/// a full-size gradient, whose other elements are left as they are).
pub fn selective_logprobs_backward_rows<T: FloatElem, O: GradElem>(
    logits: LogitRows<'_, T>,
    targets: &[i64],
    options: &LogprobOptions,
    upstream: &Upstream<'_>,
    dlogits_out: &mut [O],
    out_layout: RowLayout,
) -> Result<()> {
    let Upstream {
        grad_logp,
        grad_entropy,
        stats: saved,
    } = *upstream;
    let layout = logits.layout();
    let (rows, vocab) = (layout.rows, layout.vocab);
    check_common(vocab, options.temperature)?;
    check_len("targets", targets.len(), rows)?;
    if let Some(st) = saved {
        check_len("stats", st.len(), rows * STATS_PER_ROW)?;
    }
    check_len("grad_logp", grad_logp.len(), rows)?;
    if let Some(g) = grad_entropy {
        check_len("grad_entropy", g.len(), rows)?;
    }
    if (out_layout.rows, out_layout.vocab) != (rows, vocab) {
        return Err(Error::shape(
            "dlogits_out",
            format!("({rows}, {vocab}) rows like the logits"),
            format!("({}, {})", out_layout.rows, out_layout.vocab),
        ));
    }
    let out_rows = rows_mut("dlogits_out", dlogits_out, out_layout)?;
    check_finite("grad_logp", grad_logp)?;
    if let Some(g) = grad_entropy {
        check_finite("grad_entropy", g)?;
    }
    let (inv_t, fast) = (1.0 / options.temperature, options.float32_exp);
    let results: Vec<Result<()>> = out_rows
        .into_par_iter()
        .enumerate()
        .map(|(i, out)| (i, (logits.row(i), out)))
        .map(|(i, (row, out))| {
            let y = target(targets, i, vocab)?;
            let want_entropy = grad_entropy.is_some();
            let reuse = saved.and_then(|st| {
                RowStats::load(
                    &st[i * STATS_PER_ROW..(i + 1) * STATS_PER_ROW],
                    want_entropy,
                )
            });
            let stats = match reuse {
                Some(stats) => stats,
                None => row_stats(row, i, inv_t, want_entropy, fast)?,
            };
            let g = grad_logp[i] as f64;
            let g_h = grad_entropy.map_or(0.0, |gh| gh[i] as f64);
            let h = stats.entropy();
            // log p_j = (z_j - m) - ln s.
            let offset = stats.m + stats.ln_s();
            let done = match stats.raw_max {
                // (Saved stats may come from elsewhere: the CPU check is repeated.)
                #[cfg(target_arch = "x86_64")]
                Some(max) if use_fast(fast, inv_t) => {
                    let c = avx2::Backward {
                        max,
                        inv_t,
                        ln_s: stats.ln_s(),
                        g,
                        g_h,
                        h,
                    };
                    c.fits() && row_backward_fast(row, out, &c, grad_entropy.is_some())
                }
                _ => false,
            };
            if !done {
                row_backward(row, out, inv_t, offset, g, g_h, h);
            }
            // The target's element again with its `g 1[j=y]` term, in f64 (so `1 - p_y` is exact
            // to f64 rounding, e.g. 0 for a one-token vocabulary).
            let z_y = row[y].to_f64() * inv_t;
            out[y] = O::from_f64(if z_y == f64::NEG_INFINITY {
                g * inv_t
            } else {
                let log_p = z_y - offset;
                let p = exp(log_p);
                (g * (1.0 - p) - g_h * p * (log_p + h)) * inv_t
            });
            Ok(())
        })
        .collect();
    results.into_iter().collect()
}

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
//! [`selective_logprobs_with_stats`]) and writes each `dlogits` element once, in the output's
//! dtype ([`GradElem`]: f32, f64, bf16 or f16, the halves rounded to nearest even):
//! `dz_j = g (1[j=y] - p_j) - g_H p_j (log p_j + H)`, `dlogits_j = dz_j / T`.
//!
//! On x86-64 CPUs with AVX2, FMA and F16C, f32/bf16/f16 logits take the `avx2` path (for
//! `1 / T` in `[2^-32, 2^32]`): the same passes with the exponentials in f32, eight at a time
//! (about 2 ulp), widened to f64 (after adding pairs in f32) before they are summed, so `logp`
//! stays within ~4e-7 absolute of the float64 value (see `avx2`). Everything else (f64 logits,
//! other CPUs, extreme temperatures) takes the f64 path. Either way the reduction order is fixed
//! per row, so results do not depend on the thread count.
//!
//! A logit of `-inf` is allowed and means probability 0 (a banned token): it adds nothing to the
//! sums, its gradient is `g 1[j=y] / T` (the entropy part's limit `p log p -> 0`), and as a target
//! it gives `logp = -inf`. A row whose logits are all `-inf`, NaN and `+inf` are errors.

// The chunk loops walk the chunk buffers with one index.
#![allow(clippy::needless_range_loop)]

use std::any::TypeId;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::elem::FloatElem;
use crate::error::{Error, Result};
use crate::exp::exp;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Logits per chunk: the chunk's three f64 buffers (12 KiB) stay in L1.
const CHUNK: usize = 512;
/// Independent accumulators per sum (a multiple of the widest f64 vector).
const LANES: usize = 8;

/// Checks the shapes and options shared by the forward and the backward; returns the row count.
fn check_common<T>(logits: &[T], vocab: usize, targets: &[i64], temperature: f64) -> Result<usize> {
    if vocab == 0 {
        return Err(Error::value(
            "logits",
            "expected a vocabulary of at least 1 (the last dimension is 0)",
        ));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::value(
            "temperature",
            format!("expected a finite value > 0, got {temperature}"),
        ));
    }
    let rows = targets.len();
    if Some(logits.len()) != rows.checked_mul(vocab) {
        return Err(Error::shape(
            "logits",
            format!("({rows}, {vocab}) (one row per target)"),
            format!("{} elements", logits.len()),
        ));
    }
    Ok(rows)
}

fn check_len(arg: &'static str, len: usize, rows: usize) -> Result<()> {
    if len != rows {
        return Err(Error::shape(arg, format!("({rows},)"), format!("({len},)")));
    }
    Ok(())
}

/// The row's target index, checked against the vocabulary.
fn target(targets: &[i64], i: usize, vocab: usize) -> Result<usize> {
    let y = targets.get(i).copied().unwrap_or(-1);
    usize::try_from(y)
        .ok()
        .filter(|&y| y < vocab)
        .ok_or_else(|| {
            Error::value(
                "targets",
                format!("expected token ids in [0, {vocab}), got {y} at row {i}"),
            )
        })
}

/// What one pass over a row gives: the max `m` of `z`, `s = sum e^(z - m)`,
/// `t = sum e^(z - m) (z - m)`.
#[derive(Clone, Copy, Debug)]
struct RowStats {
    m: f64,
    s: f64,
    t: f64,
    /// The raw (unscaled) max logit, when the stats came from the `avx2` path.
    raw_max: Option<f32>,
}

/// Values per row in the stats the forward can hand to the backward:
/// `[m, s, t, raw max]` (`t` NaN when the entropy was not asked for, raw max NaN on the f64 path).
pub const STATS_PER_ROW: usize = 4;

impl RowStats {
    fn store(&self, out: &mut [f64], entropy: bool) {
        out[0] = self.m;
        out[1] = self.s;
        out[2] = if entropy { self.t } else { f64::NAN };
        out[3] = self.raw_max.map_or(f64::NAN, |v| v as f64);
    }

    /// Stats stored by [`RowStats::store`]; `None` if they lack what is needed.
    fn load(row: &[f64], entropy: bool) -> Option<Self> {
        let stats = RowStats {
            m: row[0],
            s: row[1],
            // Without the entropy term `t` is never used; 0 as the passes leave it.
            t: if entropy { row[2] } else { 0.0 },
            raw_max: (!row[3].is_nan()).then_some(row[3] as f32),
        };
        let usable =
            stats.m.is_finite() && stats.s >= 1.0 && stats.s.is_finite() && stats.t.is_finite();
        usable.then_some(stats)
    }

    fn ln_s(&self) -> f64 {
        self.s.ln()
    }

    /// `H = ln s - t / s`.
    fn entropy(&self) -> f64 {
        self.ln_s() - self.t / self.s
    }
}

/// The first invalid logit (NaN or `+inf`) of a row as an error.
fn bad_logit<T: FloatElem>(row: &[T], i: usize) -> Error {
    let (j, value) = row
        .iter()
        .map(|x| x.to_f64())
        .enumerate()
        .find(|(_, x)| x.is_nan() || *x == f64::INFINITY)
        .unwrap_or((0, f64::NAN));
    Error::NonFinite {
        arg: "logits",
        value,
        at: format!("({i}, {j}) (a logit may be -inf, never NaN or +inf)"),
    }
}

/// A gradient element the backward writes: float32, float64, or a half type (rounded to nearest
/// even, as torch's casts).
pub trait GradElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    fn from_f64(value: f64) -> Self;
}

impl GradElem for f32 {
    const DTYPE: &'static str = "float32";
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl GradElem for f64 {
    const DTYPE: &'static str = "float64";
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value
    }
}

impl GradElem for bf16 {
    const DTYPE: &'static str = "bfloat16";
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        bf16::from_f64(value)
    }
}

impl GradElem for f16 {
    const DTYPE: &'static str = "float16";
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        f16::from_f64(value)
    }
}

/// `s` as a slice of `U` when `T` is `U`.
fn cast<T: 'static, U: 'static>(s: &[T]) -> Option<&[U]> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: T and U are the same type, so this is the same slice.
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) })
    } else {
        None
    }
}

/// `s` as a mutable slice of `U` when `T` is `U`.
fn cast_mut<T: 'static, U: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: T and U are the same type, so this is the same slice (borrowed exclusively).
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) })
    } else {
        None
    }
}

/// Whether the `avx2` path may run: the CPU has it and `1 / T` keeps its f32 constants normal.
fn use_fast(fast: bool, inv_t: f64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        fast && (2f64.powi(-32)..=2f64.powi(32)).contains(&inv_t) && avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fast, inv_t);
        false
    }
}

/// One row's stats; `entropy` asks for `t`; `fast` allows the `avx2` path.
fn row_stats<T: FloatElem>(
    row: &[T],
    i: usize,
    inv_t: f64,
    entropy: bool,
    fast: bool,
) -> Result<RowStats> {
    #[cfg(target_arch = "x86_64")]
    {
        if use_fast(fast, inv_t) {
            if let Some(stats) = row_stats_fast(row, i, inv_t, entropy) {
                return stats;
            }
        }
    }
    let _ = entropy;
    row_stats_f64(row, i, inv_t)
}

/// The `avx2` path's stats, or `None` for f64 logits.
#[cfg(target_arch = "x86_64")]
fn row_stats_fast<T: FloatElem>(
    row: &[T],
    i: usize,
    inv_t: f64,
    entropy: bool,
) -> Option<Result<RowStats>> {
    /// # Safety
    /// [`avx2::available`] must hold.
    unsafe fn run<U: avx2::Load8>(row: &[U], inv_t: f64, entropy: bool) -> avx2::Stats {
        if entropy {
            avx2::row_stats::<U, true>(row, inv_t)
        } else {
            avx2::row_stats::<U, false>(row, inv_t)
        }
    }
    // SAFETY (all three): the caller checked `avx2::available()` (in `use_fast`).
    let st = if let Some(r) = cast::<T, f32>(row) {
        unsafe { run(r, inv_t, entropy) }
    } else if let Some(r) = cast::<T, bf16>(row) {
        unsafe { run(r, inv_t, entropy) }
    } else if let Some(r) = cast::<T, f16>(row) {
        unsafe { run(r, inv_t, entropy) }
    } else {
        return None;
    };
    if st.bad {
        return Some(Err(bad_logit(row, i)));
    }
    if st.max == f32::NEG_INFINITY {
        return Some(Err(all_banned(i)));
    }
    let m = st.max as f64 * inv_t;
    if !m.is_finite() {
        return Some(Err(overflow(i)));
    }
    Some(Ok(RowStats {
        m,
        s: st.s,
        t: st.t,
        raw_max: Some(st.max),
    }))
}

fn all_banned(i: usize) -> Error {
    Error::value(
        "logits",
        format!("row {i} has no token of non-zero probability (every logit is -inf)"),
    )
}

fn overflow(i: usize) -> Error {
    Error::Overflow {
        arg: "logits",
        detail: format!("row {i}: logits / temperature exceeds float64's range"),
    }
}

/// The f64 path's stats.
fn row_stats_f64<T: FloatElem>(row: &[T], i: usize, inv_t: f64) -> Result<RowStats> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { row_stats_avx2(row, i, inv_t) };
        }
    }
    row_stats_portable(row, i, inv_t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_stats_avx2<T: FloatElem>(row: &[T], i: usize, inv_t: f64) -> Result<RowStats> {
    row_stats_portable(row, i, inv_t)
}

#[inline(always)]
fn row_stats_portable<T: FloatElem>(row: &[T], i: usize, inv_t: f64) -> Result<RowStats> {
    // Padded with -inf (probability 0) to whole blocks of LANES, so the block loops below have
    // a fixed trip count and vectorise.
    let mut z = [f64::NEG_INFINITY; CHUNK];
    let mut d = [0.0f64; CHUNK];
    let mut e = [0.0f64; CHUNK];
    let mut m = f64::NEG_INFINITY;
    let mut s = [0.0f64; LANES];
    let mut t = [0.0f64; LANES];
    let mut valid = true;
    for chunk in row.chunks(CHUNK) {
        let n = chunk.len();
        let padded = n.div_ceil(LANES) * LANES;
        for (dst, x) in z[..n].iter_mut().zip(chunk) {
            let x = x.to_f64();
            // NaN and +inf are invalid; -inf is a banned token.
            valid &= x < f64::INFINITY;
            *dst = x * inv_t;
        }
        for dst in &mut z[n..padded] {
            *dst = f64::NEG_INFINITY;
        }
        let mut cm = [f64::NEG_INFINITY; LANES];
        for block in z[..padded].chunks_exact(LANES) {
            for j in 0..LANES {
                cm[j] = if block[j] > cm[j] { block[j] } else { cm[j] };
            }
        }
        let cm = cm
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        if cm == f64::NEG_INFINITY {
            // Only banned tokens (or NaNs, reported below): nothing to add.
            continue;
        }
        if cm > m {
            if m > f64::NEG_INFINITY {
                let scale = (m - cm).exp();
                let shift = m - cm;
                for lane in 0..LANES {
                    // sum e^(z - cm) (z - cm) = e^(m - cm) (t + s (m - cm)).
                    t[lane] = scale * (t[lane] + s[lane] * shift);
                    s[lane] *= scale;
                }
            }
            m = cm;
        }
        // Three simple loops (shift, exp, sums) vectorise where one fused loop does not.
        for (dk, &zk) in d[..padded].iter_mut().zip(&z[..padded]) {
            *dk = if zk == f64::NEG_INFINITY { 0.0 } else { zk - m };
        }
        for (ek, &dk) in e[..padded].iter_mut().zip(&d[..padded]) {
            *ek = exp(dk);
        }
        let blocks = z[..padded]
            .chunks_exact(LANES)
            .zip(d[..padded].chunks_exact(LANES))
            .zip(e[..padded].chunks_exact(LANES));
        for ((zb, db), eb) in blocks {
            for j in 0..LANES {
                let e = if zb[j] == f64::NEG_INFINITY {
                    0.0
                } else {
                    eb[j]
                };
                s[j] += e;
                t[j] += e * db[j];
            }
        }
    }
    if !valid {
        return Err(bad_logit(row, i));
    }
    if m == f64::NEG_INFINITY {
        return Err(all_banned(i));
    }
    if !m.is_finite() {
        return Err(overflow(i));
    }
    Ok(RowStats {
        m,
        s: s.iter().sum(),
        t: t.iter().sum(),
        raw_max: None,
    })
}

fn to_f32(arg: &'static str, value: f64, i: usize) -> Result<f32> {
    let out = value as f32;
    if value.is_finite() && !out.is_finite() {
        return Err(Error::Overflow {
            arg,
            detail: format!("row {i}: {value:e}"),
        });
    }
    Ok(out)
}

/// `log softmax(logits / T)[y]` per row and, if `entropy_out` is given, the entropy of
/// `softmax(logits / T)`, over `N = targets.len()` rows of `vocab` logits.
///
/// `logp_out` (and `entropy_out`) hold `N` values. Errors: `targets` outside `[0, vocab)`,
/// `temperature` not finite and > 0, a NaN or `+inf` logit (a `-inf` logit is a token of
/// probability 0; a row of only `-inf` is an error), mismatched lengths.
pub fn selective_logprobs<T: FloatElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp_out: &mut [f32],
    entropy_out: Option<&mut [f32]>,
) -> Result<()> {
    forward(
        logits,
        vocab,
        targets,
        temperature,
        logp_out,
        entropy_out,
        None,
        true,
    )
}

/// [`selective_logprobs`], also writing each row's log-sum-exp statistics into `stats_out`
/// (`N * STATS_PER_ROW` f64) for [`selective_logprobs_backward_with_stats`], which then skips
/// its pass over the logits to recompute them.
pub fn selective_logprobs_with_stats<T: FloatElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp_out: &mut [f32],
    entropy_out: Option<&mut [f32]>,
    stats_out: &mut [f64],
) -> Result<()> {
    forward(
        logits,
        vocab,
        targets,
        temperature,
        logp_out,
        entropy_out,
        Some(stats_out),
        true,
    )
}

/// [`selective_logprobs`]; `fast` allows the `avx2` path.
#[allow(clippy::too_many_arguments)]
fn forward<T: FloatElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp_out: &mut [f32],
    entropy_out: Option<&mut [f32]>,
    stats_out: Option<&mut [f64]>,
    fast: bool,
) -> Result<()> {
    let rows = check_common(logits, vocab, targets, temperature)?;
    check_len("logp_out", logp_out.len(), rows)?;
    if let Some(h) = &entropy_out {
        check_len("entropy_out", h.len(), rows)?;
    }
    if let Some(st) = &stats_out {
        check_len("stats_out", st.len(), rows * STATS_PER_ROW)?;
    }
    let want_entropy = entropy_out.is_some();
    let inv_t = 1.0 / temperature;
    let results: Vec<Result<(f32, f32, RowStats)>> = logits
        .par_chunks(vocab)
        .enumerate()
        .map(|(i, row)| {
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
/// f64, or bf16/f16 rounded to nearest even).
///
/// `grad_logp` (and `grad_entropy`) hold `N` finite values. Same checks as the forward.
pub fn selective_logprobs_backward<T: FloatElem, O: GradElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    dlogits_out: &mut [O],
) -> Result<()> {
    backward(
        logits,
        vocab,
        targets,
        temperature,
        grad_logp,
        grad_entropy,
        None,
        dlogits_out,
        true,
    )
}

/// [`selective_logprobs_backward`] with the `stats` that [`selective_logprobs_with_stats`] wrote
/// for the same logits, targets and temperature: one pass over the logits instead of two, and
/// the same result. A row whose stats lack what is needed (no `t` while `grad_entropy` is given)
/// is recomputed. The logits are not checked again (the forward did).
#[allow(clippy::too_many_arguments)]
pub fn selective_logprobs_backward_with_stats<T: FloatElem, O: GradElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    stats: &[f64],
    dlogits_out: &mut [O],
) -> Result<()> {
    backward(
        logits,
        vocab,
        targets,
        temperature,
        grad_logp,
        grad_entropy,
        Some(stats),
        dlogits_out,
        true,
    )
}

/// [`selective_logprobs_backward`]; `fast` allows the `avx2` path.
#[allow(clippy::too_many_arguments)]
fn backward<T: FloatElem, O: GradElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    saved: Option<&[f64]>,
    dlogits_out: &mut [O],
    fast: bool,
) -> Result<()> {
    let rows = check_common(logits, vocab, targets, temperature)?;
    if let Some(st) = saved {
        check_len("stats", st.len(), rows * STATS_PER_ROW)?;
    }
    check_len("grad_logp", grad_logp.len(), rows)?;
    if let Some(g) = grad_entropy {
        check_len("grad_entropy", g.len(), rows)?;
    }
    if dlogits_out.len() != logits.len() {
        return Err(Error::shape(
            "dlogits_out",
            format!("({rows}, {vocab})"),
            format!("{} elements", dlogits_out.len()),
        ));
    }
    let check_grad = |arg: &'static str, g: &[f32]| -> Result<()> {
        match g.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(Error::NonFinite {
                arg,
                value: g[i] as f64,
                at: format!("row {i}"),
            }),
            None => Ok(()),
        }
    };
    check_grad("grad_logp", grad_logp)?;
    if let Some(g) = grad_entropy {
        check_grad("grad_entropy", g)?;
    }
    let inv_t = 1.0 / temperature;
    let results: Vec<Result<()>> = logits
        .par_chunks(vocab)
        .zip(dlogits_out.par_chunks_mut(vocab))
        .enumerate()
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

/// The `avx2` backward for one row; false (nothing written) for f64 logits.
#[cfg(target_arch = "x86_64")]
fn row_backward_fast<T: FloatElem, O: GradElem>(
    row: &[T],
    out: &mut [O],
    c: &avx2::Backward,
    entropy: bool,
) -> bool {
    /// # Safety
    /// [`avx2::available`] must hold and `out.len() == row.len()`.
    unsafe fn run<U: avx2::Load8, V: avx2::Store8>(
        row: &[U],
        out: &mut [V],
        c: &avx2::Backward,
        entropy: bool,
    ) {
        if entropy {
            avx2::row_backward::<U, V, true>(row, out, c)
        } else {
            avx2::row_backward::<U, V, false>(row, out, c)
        }
    }
    /// # Safety
    /// As [`run`].
    unsafe fn with_out<U: avx2::Load8, O: GradElem>(
        row: &[U],
        out: &mut [O],
        c: &avx2::Backward,
        entropy: bool,
    ) -> bool {
        if let Some(o) = cast_mut::<O, f32>(out) {
            run(row, o, c, entropy);
        } else if let Some(o) = cast_mut::<O, f64>(out) {
            run(row, o, c, entropy);
        } else if let Some(o) = cast_mut::<O, bf16>(out) {
            run(row, o, c, entropy);
        } else if let Some(o) = cast_mut::<O, f16>(out) {
            run(row, o, c, entropy);
        } else {
            return false;
        }
        true
    }
    assert_eq!(row.len(), out.len());
    if !avx2::available() {
        return false;
    }
    // SAFETY (all three): `avx2::available()` holds and the lengths are equal (both checked
    // above).
    if let Some(r) = cast::<T, f32>(row) {
        unsafe { with_out(r, out, c, entropy) }
    } else if let Some(r) = cast::<T, bf16>(row) {
        unsafe { with_out(r, out, c, entropy) }
    } else if let Some(r) = cast::<T, f16>(row) {
        unsafe { with_out(r, out, c, entropy) }
    } else {
        false
    }
}

fn row_backward<T: FloatElem, O: GradElem>(
    row: &[T],
    out: &mut [O],
    inv_t: f64,
    offset: f64,
    g: f64,
    g_h: f64,
    h: f64,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function was compiled for.
            unsafe { row_backward_avx2(row, out, inv_t, offset, g, g_h, h) };
            return;
        }
    }
    row_backward_portable(row, out, inv_t, offset, g, g_h, h);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_backward_avx2<T: FloatElem, O: GradElem>(
    row: &[T],
    out: &mut [O],
    inv_t: f64,
    offset: f64,
    g: f64,
    g_h: f64,
    h: f64,
) {
    row_backward_portable(row, out, inv_t, offset, g, g_h, h);
}

/// `out_j = (-g p_j - g_H p_j (log p_j + H)) / T` (the target's `+g / T` is added by the caller).
#[inline(always)]
fn row_backward_portable<T: FloatElem, O: GradElem>(
    row: &[T],
    out: &mut [O],
    inv_t: f64,
    offset: f64,
    g: f64,
    g_h: f64,
    h: f64,
) {
    // Chunked into simple loops (shift, exp, write) so each vectorises.
    let mut z = [0.0f64; CHUNK];
    let mut log_p = [0.0f64; CHUNK];
    let mut p = [0.0f64; CHUNK];
    for (xc, oc) in row.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        let n = xc.len();
        for ((zk, lk), x) in z[..n].iter_mut().zip(&mut log_p[..n]).zip(xc) {
            *zk = x.to_f64() * inv_t;
            *lk = if *zk == f64::NEG_INFINITY {
                0.0
            } else {
                *zk - offset
            };
        }
        for (pk, &lk) in p[..n].iter_mut().zip(&log_p[..n]) {
            *pk = exp(lk);
        }
        for k in 0..n.min(oc.len()) {
            let pk = if z[k] == f64::NEG_INFINITY { 0.0 } else { p[k] };
            oc[k] = O::from_f64((-g * pk - g_h * pk * (log_p[k] + h)) * inv_t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Plain two-pass float64 reference: `(logp_y, H, dlogits)`.
    fn reference(row: &[f64], y: usize, temp: f64, g: f64, g_h: f64) -> (f64, f64, Vec<f64>) {
        let z: Vec<f64> = row.iter().map(|x| x / temp).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = z.iter().map(|v| v - lse).collect();
        let p: Vec<f64> = logp.iter().map(|l| l.exp()).collect();
        let h = -p
            .iter()
            .zip(&logp)
            .map(|(p, l)| if *p == 0.0 { 0.0 } else { p * l })
            .sum::<f64>();
        let grad = (0..row.len())
            .map(|j| {
                let pl = if p[j] == 0.0 {
                    0.0
                } else {
                    p[j] * (logp[j] + h)
                };
                (g * ((j == y) as u8 as f64 - p[j]) - g_h * pl) / temp
            })
            .collect();
        (logp[y], h, grad)
    }

    fn pseudo_logits(n: usize, v: usize, scale: f64) -> Vec<f64> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..n * v)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale
            })
            .collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn check_against_reference(n: usize, v: usize, scale: f64, temp: f64) {
        check_path(n, v, scale, temp, true);
        check_path(n, v, scale, temp, false);
    }

    /// The `avx2` path (where the CPU has it; `fast`) or the f64 path against the reference.
    fn check_path(n: usize, v: usize, scale: f64, temp: f64, fast: bool) {
        let x64 = pseudo_logits(n, v, scale);
        let x: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        let xr: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let targets: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
        let mut logp = vec![0.0f32; n];
        let mut ent = vec![0.0f32; n];
        forward(&x, v, &targets, temp, &mut logp, Some(&mut ent), None, fast).unwrap();
        let g: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
        let gh: Vec<f32> = (0..n).map(|i| -0.25 * i as f32).collect();
        let mut d = vec![0.0f32; n * v];
        backward(&x, v, &targets, temp, &g, Some(&gh), None, &mut d, fast).unwrap();
        // Without the entropy term the gradient is the same formula with g_H = 0.
        let mut d0 = vec![0.0f32; n * v];
        backward(&x, v, &targets, temp, &g, None, None, &mut d0, fast).unwrap();
        for i in 0..n {
            let (lp, h, grad) = reference(
                &xr[i * v..(i + 1) * v],
                targets[i] as usize,
                temp,
                g[i] as f64,
                gh[i] as f64,
            );
            assert!(close(logp[i] as f64, lp, 1e-6), "logp {} vs {lp}", logp[i]);
            assert!(close(ent[i] as f64, h, 1e-6), "entropy {} vs {h}", ent[i]);
            let gmax = grad.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            for j in 0..v {
                let got = d[i * v + j] as f64;
                assert!(
                    (got - grad[j]).abs() <= 1e-6 * gmax.max(1e-30) + 1e-6 * grad[j].abs(),
                    "grad ({i}, {j}): {got} vs {}",
                    grad[j]
                );
            }
            let (_, _, grad0) = reference(
                &xr[i * v..(i + 1) * v],
                targets[i] as usize,
                temp,
                g[i] as f64,
                0.0,
            );
            let gmax = grad0.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            for j in 0..v {
                let got = d0[i * v + j] as f64;
                assert!(
                    (got - grad0[j]).abs() <= 1e-6 * gmax.max(1e-30) + 1e-6 * grad0[j].abs(),
                    "grad without entropy ({i}, {j}): {got} vs {}",
                    grad0[j]
                );
            }
        }
    }

    #[test]
    fn matches_float64_reference() {
        check_against_reference(3, 1, 4.0, 1.0);
        check_against_reference(5, 7, 4.0, 0.7);
        check_against_reference(4, 1000, 20.0, 1.3);
        check_against_reference(2, 2 * CHUNK + 3, 8.0, 1.0);
        check_against_reference(2, 5000, 2e4, 0.7);
    }

    #[test]
    fn large_vocabulary_accuracy() {
        check_against_reference(2, 152_064, 30.0, 1.0);
        check_against_reference(2, 152_064, 3.0, 0.7);
    }

    #[test]
    fn the_max_growing_late_rescales_the_sums() {
        // Increasing logits: the max changes in every chunk.
        let v = 20_000;
        let x: Vec<f32> = (0..2 * v).map(|k| (k % v) as f32 * 1e-3).collect();
        let t = [19_999i64, 3];
        for fast in [true, false] {
            let mut lp = [0.0f32; 2];
            let mut h = [0.0f32; 2];
            forward(&x, v, &t, 0.9, &mut lp, Some(&mut h), None, fast).unwrap();
            let xr: Vec<f64> = x[..v].iter().map(|&v| v as f64).collect();
            for (i, &y) in t.iter().enumerate() {
                let (r, hr, _) = reference(&xr, y as usize, 0.9, 1.0, 0.0);
                assert!(close(lp[i] as f64, r, 1e-6), "{fast} {} vs {r}", lp[i]);
                assert!(close(h[i] as f64, hr, 1e-6), "{fast} {} vs {hr}", h[i]);
            }
        }
    }

    #[test]
    fn half_types_read_like_their_f32_values() {
        let v = 300;
        let x = pseudo_logits(2, v, 10.0);
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f64(v)).collect();
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
        let xbf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        let xhf: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
        let t = [3i64, 299];
        let run = |f: &dyn Fn(&mut [f32])| {
            let mut out = vec![0.0f32; 2];
            f(&mut out);
            out
        };
        let a = run(&|o| selective_logprobs(&xb, v, &t, 1.0, o, None).unwrap());
        let b = run(&|o| selective_logprobs(&xbf, v, &t, 1.0, o, None).unwrap());
        assert_eq!(a, b);
        let a = run(&|o| selective_logprobs(&xh, v, &t, 1.0, o, None).unwrap());
        let b = run(&|o| selective_logprobs(&xhf, v, &t, 1.0, o, None).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn gradients_in_every_output_dtype() {
        // Half outputs are the f32 gradient rounded to nearest even (the target's element is
        // rounded once from f64, so it may differ from the f32 one's rounding by an ulp); f64
        // outputs of f32 logits hold the f32 path's values.
        let (n, v) = (3, 1037);
        let x: Vec<bf16> = pseudo_logits(n, v, 12.0)
            .iter()
            .map(|&v| bf16::from_f64(v))
            .collect();
        let t = [5i64, 1036, 0];
        let g = [1.0f32, -2.5, 0.75];
        let gh = [0.5f32, 1.0, -3.0];
        for fast in [true, false] {
            let mut d32 = vec![0.0f32; n * v];
            backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut d32, fast).unwrap();
            let mut d64 = vec![0.0f64; n * v];
            backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut d64, fast).unwrap();
            let mut db = vec![bf16::ZERO; n * v];
            backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut db, fast).unwrap();
            let mut dh = vec![f16::ZERO; n * v];
            backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut dh, fast).unwrap();
            for k in 0..n * v {
                let is_target = t.iter().enumerate().any(|(i, &y)| k == i * v + y as usize);
                if is_target {
                    let ulp = (db[k].to_f64() - bf16::from_f32(d32[k]).to_f64()).abs();
                    assert!(ulp <= d32[k].abs() as f64 / 64.0, "{k}");
                    continue;
                }
                if fast {
                    assert_eq!(d64[k], d32[k] as f64, "{k}");
                } else {
                    assert!((d64[k] - d32[k] as f64).abs() <= 1e-7 * d64[k].abs(), "{k}");
                }
                // The f64 path rounds each half once from f64; the avx2 path from f32.
                if fast {
                    assert_eq!(db[k], bf16::from_f32(d32[k]), "{k}");
                    assert_eq!(dh[k], f16::from_f32(d32[k]), "{k}");
                } else {
                    assert_eq!(db[k], bf16::from_f64(d64[k]), "{k}");
                    assert_eq!(dh[k], f16::from_f64(d64[k]), "{k}");
                }
            }
        }
    }

    #[test]
    fn saved_stats_give_the_same_backward() {
        let (n, v) = (4, 5000);
        let x: Vec<bf16> = pseudo_logits(n, v, 9.0)
            .iter()
            .map(|&v| bf16::from_f64(v))
            .collect();
        let t = [1i64, 4999, 2500, 0];
        let g = [1.0f32, -0.5, 2.0, 0.25];
        let gh = [0.5f32, 1.0, -1.0, 0.0];
        for fast in [true, false] {
            for entropy in [true, false] {
                let mut lp = vec![0.0f32; n];
                let mut h = vec![0.0f32; n];
                let mut st = vec![0.0f64; n * STATS_PER_ROW];
                let h_out = entropy.then_some(&mut h[..]);
                forward(&x, v, &t, 0.8, &mut lp, h_out, Some(&mut st), fast).unwrap();
                for with_h in [true, false] {
                    let ghs = with_h.then_some(&gh[..]);
                    let mut fresh = vec![bf16::ZERO; n * v];
                    backward(&x, v, &t, 0.8, &g, ghs, None, &mut fresh, fast).unwrap();
                    let mut reused = vec![bf16::ZERO; n * v];
                    backward(&x, v, &t, 0.8, &g, ghs, Some(&st), &mut reused, fast).unwrap();
                    assert!(
                        fresh == reused,
                        "fast {fast} entropy {entropy} with_h {with_h}"
                    );
                }
            }
        }
        let mut d = vec![0.0f32; n * v];
        let e = selective_logprobs_backward_with_stats(&x, v, &t, 0.8, &g, None, &[0.0; 3], &mut d);
        assert!(matches!(e, Err(Error::Shape { arg: "stats", .. })), "{e:?}");
    }

    #[test]
    fn paths_agree_on_banned_tokens_and_bad_logits() {
        for fast in [true, false] {
            let mut row = vec![f32::NEG_INFINITY; 3000];
            row[2999] = 1.0;
            row[17] = -2.0;
            let mut lp = [0.0f32; 2];
            let mut h = [0.0f32; 2];
            let rows: Vec<f32> = row.iter().chain(row.iter()).cloned().collect();
            forward(
                &rows,
                3000,
                &[17, 5],
                1.0,
                &mut lp,
                Some(&mut h),
                None,
                fast,
            )
            .unwrap();
            let (r, hr, _) = reference(&[-2.0, 1.0], 0, 1.0, 1.0, 0.0);
            assert!(close(lp[0] as f64, r, 1e-7), "{fast} {}", lp[0]);
            assert_eq!(lp[1], f32::NEG_INFINITY);
            assert!(close(h[0] as f64, hr, 1e-7), "{fast} {}", h[0]);
            let mut d = vec![0.0f32; 6000];
            backward(
                &rows,
                3000,
                &[17, 5],
                1.0,
                &[1.0, 1.0],
                Some(&[1.0, 1.0]),
                None,
                &mut d,
                fast,
            )
            .unwrap();
            assert!(d.iter().all(|v| v.is_finite()));
            assert_eq!(d[3005], 1.0);
            let mut bad = rows.clone();
            bad[4100] = f32::NAN;
            bad[5000] = f32::INFINITY;
            let e = forward(&bad, 3000, &[17, 5], 1.0, &mut lp, None, None, fast).unwrap_err();
            assert!(e.to_string().contains("(1, 1100)"), "{e}");
            let e = backward(
                &bad,
                3000,
                &[17, 5],
                1.0,
                &[1.0; 2],
                None,
                None,
                &mut d,
                fast,
            );
            assert!(e.unwrap_err().to_string().contains("(1, 1100)"));
        }
    }

    #[test]
    fn negative_infinity_is_a_banned_token() {
        let x = [0.0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        let mut lp = [0.0f32; 2];
        let mut h = [0.0f32; 2];
        let x2: Vec<f32> = x.iter().chain(x.iter()).cloned().collect();
        selective_logprobs(&x2, 4, &[2, 1], 1.0, &mut lp, Some(&mut h)).unwrap();
        let (r, hr, _) = reference(&[0.0, 1.0], 1, 1.0, 1.0, 0.0);
        assert!(close(lp[0] as f64, r, 1e-7));
        assert_eq!(lp[1], f32::NEG_INFINITY);
        assert!(close(h[0] as f64, hr, 1e-7));
        let mut d = vec![0.0f32; 8];
        selective_logprobs_backward(&x2, 4, &[2, 1], 1.0, &[1.0, 1.0], Some(&[1.0, 1.0]), &mut d)
            .unwrap();
        assert!(d.iter().all(|v| v.is_finite()));
        assert_eq!(d[1], 0.0);
        assert_eq!(d[5], 1.0);
        // A whole chunk of banned tokens before the first real one.
        let mut row = vec![f32::NEG_INFINITY; CHUNK + 5];
        row[CHUNK + 2] = 3.0;
        let mut lp = [0.0f32; 1];
        selective_logprobs(&row, CHUNK + 5, &[(CHUNK + 2) as i64], 1.0, &mut lp, None).unwrap();
        assert_eq!(lp[0], 0.0);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_argument() {
        let x = [0.0f32; 6];
        let mut lp = [0.0f32; 2];
        let arg = |e: Error| match e {
            Error::Value { arg, .. }
            | Error::Shape { arg, .. }
            | Error::NonFinite { arg, .. }
            | Error::Overflow { arg, .. } => arg,
            other => panic!("unexpected {other:?}"),
        };
        let err = |t: &[i64], temp: f64, x: &[f32], lp: &mut [f32]| {
            arg(selective_logprobs(x, 3, t, temp, lp, None).unwrap_err())
        };
        assert_eq!(err(&[0, 3], 1.0, &x, &mut lp), "targets");
        assert_eq!(err(&[0, -1], 1.0, &x, &mut lp), "targets");
        assert_eq!(err(&[0, 1], 0.0, &x, &mut lp), "temperature");
        assert_eq!(err(&[0, 1], f64::NAN, &x, &mut lp), "temperature");
        assert_eq!(err(&[0, 1, 2], 1.0, &x, &mut [0.0; 3]), "logits");
        assert_eq!(err(&[0, 1], 1.0, &x, &mut [0.0; 3]), "logp_out");
        let mut bad = x;
        bad[4] = f32::NAN;
        let e = selective_logprobs(&bad, 3, &[0, 1], 1.0, &mut lp, None).unwrap_err();
        assert!(e.to_string().contains("(1, 1)"), "{e}");
        bad[4] = f32::INFINITY;
        assert_eq!(err(&[0, 1], 1.0, &bad, &mut lp), "logits");
        let banned = [f32::NEG_INFINITY; 6];
        assert_eq!(err(&[0, 1], 1.0, &banned, &mut lp), "logits");
        assert_eq!(
            arg(selective_logprobs(&x, 0, &[], 1.0, &mut [], None).unwrap_err()),
            "logits"
        );
        let mut d = [0.0f32; 6];
        let e = selective_logprobs_backward(&x, 3, &[0, 1], 1.0, &[1.0, f32::NAN], None, &mut d);
        assert_eq!(arg(e.unwrap_err()), "grad_logp");
        let e = selective_logprobs_backward(&x, 3, &[0, 1], 1.0, &[1.0], None, &mut d);
        assert_eq!(arg(e.unwrap_err()), "grad_logp");
        let e = selective_logprobs_backward(&x, 3, &[0, 1], 1.0, &[1.0; 2], Some(&[1.0]), &mut d);
        assert_eq!(arg(e.unwrap_err()), "grad_entropy");
        // Overflow of logits / temperature in float64.
        let big = [f32::MAX; 2];
        let e = selective_logprobs(&big, 2, &[0], 1e-300, &mut [0.0], None);
        assert!(matches!(e, Err(Error::Overflow { .. })), "{e:?}");
        // No rows: nothing to do.
        selective_logprobs::<f32>(&[], 3, &[], 1.0, &mut [], None).unwrap();
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let x: Vec<f32> = pseudo_logits(16, 3000, 10.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let t: Vec<i64> = (0..16).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut lp = vec![0.0f32; 16];
                let mut h = vec![0.0f32; 16];
                selective_logprobs(&x, 3000, &t, 0.9, &mut lp, Some(&mut h)).unwrap();
                let mut d = vec![0.0f32; x.len()];
                selective_logprobs_backward(&x, 3000, &t, 0.9, &lp, Some(&h), &mut d).unwrap();
                (lp, h, d)
            })
        };
        assert_eq!(run(1), run(3));
    }
}

//! One pass over a row of logits: its max `m`, `s = sum e^(z - m)` and `t = sum e^(z - m) (z - m)`
//! (the log-sum-exp and entropy statistics), on the float32-exponential `avx2` path or in float64.

// The chunk loops walk the chunk buffers with one index.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::checks::{all_banned, bad_logit, overflow};
use super::{CHUNK, LANES};
use crate::elem::{FloatElem, FloatSlice};
use crate::error::Result;
use crate::numeric::exp::exp;
use crate::numeric::simd::simd_dispatch;

/// What one pass over a row gives: the max `m` of `z`, `s = sum e^(z - m)`,
/// `t = sum e^(z - m) (z - m)`.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowStats {
    pub(super) m: f64,
    pub(super) s: f64,
    pub(super) t: f64,
    /// The raw (unscaled) max logit, when the stats came from the `avx2` path.
    pub(super) raw_max: Option<f32>,
}

/// Values per row in the stats the forward can hand to the backward:
/// `[m, s, t, raw max]` (`t` NaN when the entropy was not asked for, raw max NaN on the f64 path).
pub const STATS_PER_ROW: usize = 4;

impl RowStats {
    pub(super) fn store(&self, out: &mut [f64], entropy: bool) {
        out[0] = self.m;
        out[1] = self.s;
        out[2] = if entropy { self.t } else { f64::NAN };
        out[3] = self.raw_max.map_or(f64::NAN, |v| v as f64);
    }

    /// Stats stored by [`RowStats::store`]; `None` if they lack what is needed.
    pub(super) fn load(row: &[f64], entropy: bool) -> Option<Self> {
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

    pub(super) fn ln_s(&self) -> f64 {
        self.s.ln()
    }

    /// `H = ln s - t / s`.
    pub(super) fn entropy(&self) -> f64 {
        self.ln_s() - self.t / self.s
    }
}

/// Whether the `avx2` path may run: the CPU has it and `1 / T` keeps its f32 constants normal.
pub(super) fn use_fast(fast: bool, inv_t: f64) -> bool {
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
pub(super) fn row_stats<T: FloatElem>(
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
    let st = match T::view(row) {
        FloatSlice::F32(r) => unsafe { run(r, inv_t, entropy) },
        FloatSlice::Bf16(r) => unsafe { run(r, inv_t, entropy) },
        FloatSlice::F16(r) => unsafe { run(r, inv_t, entropy) },
        FloatSlice::F64(_) => return None,
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

simd_dispatch! {
    /// The f64 path's stats, compiled for the SIMD level in use.
    fn row_stats_f64<T: FloatElem>(row: &[T], i: usize, inv_t: f64) -> Result<RowStats> => row_stats_portable
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

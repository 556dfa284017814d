//! One row of the backward: `dlogits_j = (-g p_j - g_H p_j (log p_j + H)) / T` for every logit
//! (the target's `+g / T` is added by the caller), on the `avx2` path or in float64.

// The chunk loops walk the chunk buffers with one index.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::CHUNK;
use crate::elem::{FloatElem, GradElem};
#[cfg(target_arch = "x86_64")]
use crate::elem::{FloatSlice, GradSliceMut};
use crate::numeric::exp::exp;
use crate::numeric::simd::simd_dispatch;

/// The `avx2` backward for one row; false (nothing written) for f64 logits.
#[cfg(target_arch = "x86_64")]
pub(super) fn row_backward_fast<T: FloatElem, O: GradElem>(
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
    ) {
        match O::view_mut(out) {
            GradSliceMut::F32(o) => run(row, o, c, entropy),
            GradSliceMut::F64(o) => run(row, o, c, entropy),
            GradSliceMut::Bf16(o) => run(row, o, c, entropy),
            GradSliceMut::F16(o) => run(row, o, c, entropy),
        }
    }
    assert_eq!(row.len(), out.len());
    if !avx2::available() {
        return false;
    }
    // SAFETY (all three): `avx2::available()` holds and the lengths are equal (both checked
    // above).
    match T::view(row) {
        FloatSlice::F32(r) => unsafe { with_out(r, out, c, entropy) },
        FloatSlice::Bf16(r) => unsafe { with_out(r, out, c, entropy) },
        FloatSlice::F16(r) => unsafe { with_out(r, out, c, entropy) },
        FloatSlice::F64(_) => return false,
    }
    true
}

simd_dispatch! {
    /// [`row_backward_portable`] compiled for the SIMD level in use.
    pub(super) fn row_backward<T: FloatElem, O: GradElem>(
        row: &[T],
        out: &mut [O],
        inv_t: f64,
        offset: f64,
        g: f64,
        g_h: f64,
        h: f64,
    ) => row_backward_portable
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

//! The numeric layer every kernel builds on, and that depends on no kernel: the SIMD level in use
//! and the one way to compile a loop for each level ([`simd`]), the float64 and float32
//! exponentials ([`exp`], [`exp_f32`]) and torch's `clamp`. `loss` and `logprob` use it; it uses
//! neither.

pub(crate) mod exp;
pub(crate) mod exp_f32;
pub mod simd;
#[cfg(target_arch = "x86_64")]
pub(crate) mod v16;

/// `clamp(x, lo, hi)` as torch computes it (NaN stays NaN); unlike `f64::clamp` it has no
/// panic path, which keeps the loops that call it vectorisable.
#[inline(always)]
pub(crate) fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

//! Run-time CPU features: the vectorised loops are compiled for several instruction sets and this
//! picks the variant once per call.
//!
//! The level is the best the CPU has, unless the environment variable `SGPO_RS_SIMD`
//! (`avx512`, `avx2` or `portable`, read once) or [`force_simd_level`] lowers it, so tests can
//! run every path on one machine. A level above what the CPU has is never used.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set level of the vectorised kernels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The baseline the crate is compiled for (SSE2 on x86-64).
    Portable = 0,
    /// AVX2 + FMA: 8 f32 or 4 f64 lanes.
    Avx2 = 1,
    /// AVX-512F (with AVX2 + FMA): 16 f32 or 8 f64 lanes.
    Avx512 = 2,
}

impl SimdLevel {
    /// The name [`SimdLevel::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(SimdLevel::Portable),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            2 => SimdLevel::Avx512,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Portable,
        }
    }
}

/// The best level this CPU supports.
pub fn cpu_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // The macro caches its answer after the first call.
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                SimdLevel::Avx512
            } else {
                SimdLevel::Avx2
            };
        }
    }
    SimdLevel::Portable
}

/// `u8::MAX`: not chosen yet.
static CHOSEN: AtomicU8 = AtomicU8::new(u8::MAX);
static FROM_ENV: OnceLock<SimdLevel> = OnceLock::new();

/// The level the kernels use: the CPU's best, lowered by `SGPO_RS_SIMD` or [`force_simd_level`].
#[inline]
pub fn simd_level() -> SimdLevel {
    let chosen = CHOSEN.load(Ordering::Relaxed);
    if chosen != u8::MAX {
        return SimdLevel::from_u8(chosen);
    }
    let level = *FROM_ENV.get_or_init(|| {
        let best = cpu_simd_level();
        // An unknown name or a level the CPU lacks leaves the best level.
        std::env::var("SGPO_RS_SIMD")
            .ok()
            .and_then(|name| SimdLevel::parse(&name))
            .map_or(best, |wanted| wanted.min(best))
    });
    CHOSEN.store(level as u8, Ordering::Relaxed);
    level
}

/// Makes the kernels use `level` (for tests and benchmarks); `None` returns to the CPU's best.
/// Returns the level now in use, which is `level` capped at what the CPU supports.
pub fn force_simd_level(level: Option<SimdLevel>) -> SimdLevel {
    let best = cpu_simd_level();
    let level = level.map_or(best, |l| l.min(best));
    CHOSEN.store(level as u8, Ordering::Relaxed);
    level
}

/// Whether the kernels may run the code compiled with `#[target_feature(enable = "avx2,fma")]`.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    simd_level() >= SimdLevel::Avx2
}

/// Defines a function that runs `$inner` compiled for the SIMD level in use: the one way the crate
/// writes a loop once and compiles it for AVX-512, AVX2 + FMA and the baseline. `$inner` takes the
/// same arguments and is `#[inline(always)]`, so each variant gets its own code generation.
///
/// ```ignore
/// simd_dispatch! {
///     /// Sum of a row's mask weights.
///     pub(crate) fn weight_sum_dispatched<M: MaskElem>(row: &[M], i: usize) -> Result<f64> => weight_sum
/// }
/// ```
///
/// With `level: SimdLevel` as its first parameter the function runs at that level (decided once
/// by the caller for a whole call) instead of reading [`simd_level`]; the level is not passed on.
macro_rules! simd_dispatch {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $bound:path),+>)?
            (level: SimdLevel, $($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path
    ) => {
        $(#[$attr])*
        $vis fn $name $(<$($g: $bound),+>)? (
            level: $crate::numeric::simd::SimdLevel, $($arg: $ty),*
        ) $(-> $ret)? {
            let _ = level; // read only on x86-64
            $crate::numeric::simd::simd_dispatch!(
                @run level; $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? => $inner
            )
        }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $bound:path),+>)?
            ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path
    ) => {
        $(#[$attr])*
        $vis fn $name $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
            $crate::numeric::simd::simd_dispatch!(
                @run $crate::numeric::simd::simd_level();
                $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? => $inner
            )
        }
    };
    // The body both forms share: the variants, the match on the level, the baseline.
    (
        @run $level:expr; $(<$($g:ident: $bound:path),+>)?
            ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $inner:path
    ) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512 $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2 $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            match $level {
                // SAFETY: a level never exceeds what the CPU supports (`simd_level` and
                // `force_simd_level` cap it).
                $crate::numeric::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                $crate::numeric::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                $crate::numeric::simd::SimdLevel::Portable => {}
            }
        }
        $inner($($arg),*)
    }};
}
pub(crate) use simd_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_never_exceed_the_cpu() {
        for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(level.name()), Some(level));
        }
        assert_eq!(SimdLevel::parse("sse9"), None);
        assert!(simd_level() <= cpu_simd_level());
    }
}

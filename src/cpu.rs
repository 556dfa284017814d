//! Run-time CPU features: the vectorised loops are compiled twice (baseline and AVX2+FMA) and
//! this picks the variant once per call.

/// Whether the CPU can run the code compiled with `#[target_feature(enable = "avx2,fma")]`.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    // The macro caches its answer after the first call.
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

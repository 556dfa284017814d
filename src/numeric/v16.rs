//! Sixteen float32 lanes as one value, for kernels written once with intrinsics and compiled for
//! AVX-512F (one `__m512`) and AVX2 + FMA (two `__m256`).
//!
//! Both implementations apply the same IEEE operations lane by lane (the same fused
//! multiply-adds, `min`/`max` with the same NaN rule, the same comparisons), so a kernel written
//! against [`V16`] gives bit-identical results at both levels. Float64 sums keep 16 lanes too
//! ([`V16::D`]: two `__m512d` or four `__m256d`), token `j` of a block in lane `j` at both levels.
//!
//! Every method is `unsafe`: it may only run on a CPU with the implementation's features, inside
//! a function compiled with them (`#[target_feature(enable = ...)]`), into which these
//! `#[inline(always)]` methods are inlined.

#![cfg(target_arch = "x86_64")]
// The methods are thin wrappers of one or two intrinsics each; their names say what they do.
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

/// Asks for the cache line at `p` (any address: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    // SAFETY: prefetching reads nothing and never faults; SSE is part of x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Sixteen float32 lanes, their masks and sixteen float64 accumulators.
pub(crate) trait V16: Copy {
    /// Sixteen float32 values.
    type F: Copy;
    /// A mask of sixteen lanes.
    type M: Copy;
    /// Sixteen float64 values.
    type D: Copy;

    unsafe fn splat(x: f32) -> Self::F;
    unsafe fn load(p: *const f32) -> Self::F;
    /// Sixteen bytes as floats (`0u8` as `0.0`, `1u8` as `1.0`).
    unsafe fn load_bytes(p: *const u8) -> Self::F;
    /// Lanes where `m` is set are loaded from `p`, the others are 0.
    unsafe fn load_or_zero(m: Self::M, p: *const f32) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c - a * b`, rounded once.
    unsafe fn fnma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `a < b ? a : b` (so `b` where either is NaN).
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// `a > b ? a : b` (so `b` where either is NaN).
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn abs(a: Self::F) -> Self::F;
    /// The sign bit of `a` flipped where `s` has it set (`a * sign(s)` for `s = +-0.0`).
    unsafe fn xor(a: Self::F, s: Self::F) -> Self::F;
    unsafe fn lt(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn le(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn gt(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn ge(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn eq(a: Self::F, b: Self::F) -> Self::M;
    /// `a != b`, true where either is NaN (Rust's `!=`).
    unsafe fn ne(a: Self::F, b: Self::F) -> Self::M;
    /// `!(a <= b)`: true where either is NaN.
    unsafe fn not_le(a: Self::F, b: Self::F) -> Self::M;
    /// Whether either of `a` and `b` is NaN.
    unsafe fn unordered(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn and(a: Self::M, b: Self::M) -> Self::M;
    unsafe fn or(a: Self::M, b: Self::M) -> Self::M;
    /// `a & !b`.
    unsafe fn and_not(a: Self::M, b: Self::M) -> Self::M;
    /// Lane `j` of `m` as bit `j`.
    unsafe fn bits(m: Self::M) -> u32;
    /// `m ? a : b`, lane by lane.
    unsafe fn select(m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    /// `m ? a : 0`, lane by lane.
    unsafe fn keep(m: Self::M, a: Self::F) -> Self::F;
    /// `2^n` for the integer `n` that `shifted = n + 1.5 * 2^23` holds in its low mantissa bits,
    /// `n` in [-126, 127].
    unsafe fn pow2_of_shifted(shifted: Self::F) -> Self::F;

    unsafe fn dload(lanes: &[f64; 16]) -> Self::D;
    /// `acc + x * y` in float64 (`x` and `y` widened exactly, so the product is exact and the
    /// sum rounded once).
    unsafe fn dfma(acc: Self::D, x: Self::F, y: Self::F) -> Self::D;
    /// `acc + x` in float64 (`x` widened exactly).
    unsafe fn dadd(acc: Self::D, x: Self::F) -> Self::D;
    /// The sixteen float64 lanes.
    unsafe fn dlanes(acc: Self::D) -> [f64; 16];
}

/// AVX-512F: one 512-bit register per sixteen lanes, masks in mask registers.
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl V16 for Avx512 {
    type F = __m512;
    type M = __mmask16;
    type D = [__m512d; 2];

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())))
    }
    #[inline(always)]
    unsafe fn load_or_zero(m: __mmask16, p: *const f32) -> __m512 {
        _mm512_maskz_loadu_ps(m, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn abs(a: __m512) -> __m512 {
        _mm512_abs_ps(a)
    }
    #[inline(always)]
    unsafe fn xor(a: __m512, s: __m512) -> __m512 {
        let sign = _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(i32::MIN));
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), sign))
    }
    #[inline(always)]
    unsafe fn lt(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn le(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn gt(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn ge(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn eq(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn ne(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a, b)
    }
    #[inline(always)]
    unsafe fn not_le(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(a, b)
    }
    #[inline(always)]
    unsafe fn unordered(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b)
    }
    #[inline(always)]
    unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    unsafe fn or(a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline(always)]
    unsafe fn and_not(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & !b
    }
    #[inline(always)]
    unsafe fn bits(m: __mmask16) -> u32 {
        m as u32
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, a: __m512, b: __m512) -> __m512 {
        _mm512_mask_blend_ps(m, b, a)
    }
    #[inline(always)]
    unsafe fn keep(m: __mmask16, a: __m512) -> __m512 {
        _mm512_maskz_mov_ps(m, a)
    }
    #[inline(always)]
    unsafe fn pow2_of_shifted(shifted: __m512) -> __m512 {
        // (bits - bits(1.5 * 2^23) + 127) << 23, the subtraction and the bias in one constant.
        let bias = _mm512_set1_epi32(127 - 0x4b40_0000);
        let n = _mm512_add_epi32(_mm512_castps_si512(shifted), bias);
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(n))
    }

    #[inline(always)]
    unsafe fn dload(lanes: &[f64; 16]) -> [__m512d; 2] {
        [
            _mm512_loadu_pd(lanes.as_ptr()),
            _mm512_loadu_pd(lanes.as_ptr().add(8)),
        ]
    }
    #[inline(always)]
    unsafe fn dfma(acc: [__m512d; 2], x: __m512, y: __m512) -> [__m512d; 2] {
        let (x0, x1) = halves512(x);
        let (y0, y1) = halves512(y);
        [
            _mm512_fmadd_pd(x0, y0, acc[0]),
            _mm512_fmadd_pd(x1, y1, acc[1]),
        ]
    }
    #[inline(always)]
    unsafe fn dadd(acc: [__m512d; 2], x: __m512) -> [__m512d; 2] {
        let (x0, x1) = halves512(x);
        [_mm512_add_pd(acc[0], x0), _mm512_add_pd(acc[1], x1)]
    }
    #[inline(always)]
    unsafe fn dlanes(acc: [__m512d; 2]) -> [f64; 16] {
        let mut out = [0.0; 16];
        _mm512_storeu_pd(out.as_mut_ptr(), acc[0]);
        _mm512_storeu_pd(out.as_mut_ptr().add(8), acc[1]);
        out
    }
}

/// Lanes 0-7 and 8-15 of `x`, widened to float64.
#[inline(always)]
unsafe fn halves512(x: __m512) -> (__m512d, __m512d) {
    let lo = _mm512_castps512_ps256(x);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    (_mm512_cvtps_pd(lo), _mm512_cvtps_pd(hi))
}

/// AVX2 + FMA: two 256-bit registers per sixteen lanes, masks as all-ones lanes.
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

/// Applies a `__m256` operation to both halves.
macro_rules! both {
    ($f:ident($($a:expr),*)) => {
        [$f($($a[0]),*), $f($($a[1]),*)]
    };
}

impl V16 for Avx2 {
    type F = [__m256; 2];
    type M = [__m256; 2];
    type D = [__m256d; 4];

    #[inline(always)]
    unsafe fn splat(x: f32) -> [__m256; 2] {
        [_mm256_set1_ps(x); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [__m256; 2] {
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const u8) -> [__m256; 2] {
        let eight =
            |p: *const u8| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())));
        [eight(p), eight(p.add(8))]
    }
    #[inline(always)]
    unsafe fn load_or_zero(m: [__m256; 2], p: *const f32) -> [__m256; 2] {
        Self::keep(m, Self::load(p))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [__m256; 2]) {
        _mm256_storeu_ps(p, v[0]);
        _mm256_storeu_ps(p.add(8), v[1]);
    }
    #[inline(always)]
    unsafe fn add(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_add_ps(a, b))
    }
    #[inline(always)]
    unsafe fn sub(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_sub_ps(a, b))
    }
    #[inline(always)]
    unsafe fn mul(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_mul_ps(a, b))
    }
    #[inline(always)]
    unsafe fn fma(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    unsafe fn fnma(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_fnmadd_ps(a, b, c))
    }
    #[inline(always)]
    unsafe fn min(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_min_ps(a, b))
    }
    #[inline(always)]
    unsafe fn max(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_max_ps(a, b))
    }
    #[inline(always)]
    unsafe fn abs(a: [__m256; 2]) -> [__m256; 2] {
        let sign = _mm256_set1_ps(-0.0);
        [_mm256_andnot_ps(sign, a[0]), _mm256_andnot_ps(sign, a[1])]
    }
    #[inline(always)]
    unsafe fn xor(a: [__m256; 2], s: [__m256; 2]) -> [__m256; 2] {
        let sign = _mm256_set1_ps(-0.0);
        [
            _mm256_xor_ps(a[0], _mm256_and_ps(s[0], sign)),
            _mm256_xor_ps(a[1], _mm256_and_ps(s[1], sign)),
        ]
    }
    #[inline(always)]
    unsafe fn lt(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_LT_OQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_LT_OQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn le(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn gt(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_GT_OQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_GT_OQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn ge(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_GE_OQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_GE_OQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn eq(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_EQ_OQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_EQ_OQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn ne(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn not_le(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_NLE_UQ>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_NLE_UQ>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn unordered(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_cmp_ps::<_CMP_UNORD_Q>(a[0], b[0]),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(a[1], b[1]),
        ]
    }
    #[inline(always)]
    unsafe fn and(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_and_ps(a, b))
    }
    #[inline(always)]
    unsafe fn or(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_or_ps(a, b))
    }
    #[inline(always)]
    unsafe fn and_not(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        // `_mm256_andnot_ps(x, y)` is `!x & y`.
        [_mm256_andnot_ps(b[0], a[0]), _mm256_andnot_ps(b[1], a[1])]
    }
    #[inline(always)]
    unsafe fn bits(m: [__m256; 2]) -> u32 {
        (_mm256_movemask_ps(m[0]) as u32) | ((_mm256_movemask_ps(m[1]) as u32) << 8)
    }
    #[inline(always)]
    unsafe fn select(m: [__m256; 2], a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        [
            _mm256_blendv_ps(b[0], a[0], m[0]),
            _mm256_blendv_ps(b[1], a[1], m[1]),
        ]
    }
    #[inline(always)]
    unsafe fn keep(m: [__m256; 2], a: [__m256; 2]) -> [__m256; 2] {
        both!(_mm256_and_ps(m, a))
    }
    #[inline(always)]
    unsafe fn pow2_of_shifted(shifted: [__m256; 2]) -> [__m256; 2] {
        let bias = _mm256_set1_epi32(127 - 0x4b40_0000);
        let one = |s: __m256| {
            let n = _mm256_add_epi32(_mm256_castps_si256(s), bias);
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n))
        };
        [one(shifted[0]), one(shifted[1])]
    }

    #[inline(always)]
    unsafe fn dload(lanes: &[f64; 16]) -> [__m256d; 4] {
        let p = lanes.as_ptr();
        [
            _mm256_loadu_pd(p),
            _mm256_loadu_pd(p.add(4)),
            _mm256_loadu_pd(p.add(8)),
            _mm256_loadu_pd(p.add(12)),
        ]
    }
    #[inline(always)]
    unsafe fn dfma(acc: [__m256d; 4], x: [__m256; 2], y: [__m256; 2]) -> [__m256d; 4] {
        let (x0, x1, x2, x3) = quarters256(x);
        let (y0, y1, y2, y3) = quarters256(y);
        [
            _mm256_fmadd_pd(x0, y0, acc[0]),
            _mm256_fmadd_pd(x1, y1, acc[1]),
            _mm256_fmadd_pd(x2, y2, acc[2]),
            _mm256_fmadd_pd(x3, y3, acc[3]),
        ]
    }
    #[inline(always)]
    unsafe fn dadd(acc: [__m256d; 4], x: [__m256; 2]) -> [__m256d; 4] {
        let (x0, x1, x2, x3) = quarters256(x);
        [
            _mm256_add_pd(acc[0], x0),
            _mm256_add_pd(acc[1], x1),
            _mm256_add_pd(acc[2], x2),
            _mm256_add_pd(acc[3], x3),
        ]
    }
    #[inline(always)]
    unsafe fn dlanes(acc: [__m256d; 4]) -> [f64; 16] {
        let mut out = [0.0; 16];
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_pd(out.as_mut_ptr().add(4 * j), *a);
        }
        out
    }
}

/// Lanes 0-3, 4-7, 8-11 and 12-15 of `x`, widened to float64.
#[inline(always)]
unsafe fn quarters256(x: [__m256; 2]) -> (__m256d, __m256d, __m256d, __m256d) {
    (
        _mm256_cvtps_pd(_mm256_castps256_ps128(x[0])),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x[0])),
        _mm256_cvtps_pd(_mm256_castps256_ps128(x[1])),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x[1])),
    )
}

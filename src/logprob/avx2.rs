//! The AVX2+FMA+F16C path of the selective log-softmax: exponentials in f32, eight at a time,
//! summed in f64 lanes.
//!
//! Every exponential is `e^((x - M) / T) = 2^((x - M) k)` with `M` the raw (unscaled) running max
//! and `k = log2(e) / T`. `a = x - M` is formed in f32 (exact for bf16/f16 inputs of nearby
//! exponents, else rounded by half an ulp of `a`); `a k` is then carried as `p + err` with `p`
//! rounded and `err` its exact error from an FMA (plus `a k_lo`, `k = k_hi + k_lo`), so the
//! temperature adds no rounding. With `n = round(p)`, `r = (p - n) + err` lies in `[-0.5, 0.5]`
//! and `2^r` is a degree-7 Taylor polynomial (truncation below 1e-8 relative; Estrin's scheme in
//! f32 with FMA, so the loop is not latency bound: about 2 ulp in all), scaled by `2^n` built from
//! exponent bits. In the backward, results under `2^-124` (relative to the row's max) are flushed
//! to 0, which makes `-inf` logits exact zeros and keeps every intermediate a normal number; the
//! forward instead clamps `a k` at -124, so such a term (a `-inf` logit included) adds at most
//! `2^-124` to `s`, next to the max's 1 (nothing, in f64), and is left out of `t`.
//!
//! Two neighbouring exponentials are added in f32 (half an ulp), then widened to f64 lanes, so
//! the sums lose nothing to their length: the row's `s` is within ~3 f32 ulps (relative) of the
//! exact sum and `logp = (z_y - m) - ln s` within about 4e-7 absolute.
//!
//! The max pass reads bf16/f16 logits sixteen at a time as integers: sign-magnitude bits `b` map
//! to `b ^ ((b >> 15) & 0x7fff)`, which orders like the values (`+inf` and positive NaNs above
//! every finite value, negative NaNs below `-inf`), so one signed max and one min find the max
//! and any NaN or `+inf`.

use std::arch::x86_64::*;

use half::{bf16, f16};

/// Logits per chunk: 2048 bf16 (4 KiB) stay in L1 between the max pass and the exp pass.
const CHUNK: usize = 2048;

/// Whether this CPU has the features the path is compiled for.
pub(super) fn available() -> bool {
    crate::numeric::simd::has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
}

/// Logit types read as eight f32 at a time.
pub(super) trait Load8: Copy + Send + Sync + 'static {
    const NEG_INF: Self;
    /// Eight values from `p`.
    ///
    /// # Safety
    /// `p` must point to 8 readable elements and the CPU must have AVX2, FMA and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
    /// The chunk's max (NaNs left out; `-inf` if there is nothing else) and whether it holds a
    /// NaN or `+inf`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn chunk_max(chunk: &[Self]) -> (f32, bool);
    /// Sixteen values from `p` as two vectors, in an order of the type's choosing (the forward
    /// only sums them).
    ///
    /// # Safety
    /// `p` must point to 16 readable elements and the CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load16_any_order(p: *const Self) -> (__m256, __m256) {
        (Self::load8(p), Self::load8(p.add(8)))
    }
}

/// [`Load8::chunk_max`] on f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max_f32_lanes<T: Load8>(chunk: &[T]) -> (f32, bool) {
    let inf = _mm256_set1_ps(f32::INFINITY);
    let full = chunk.len() / 8 * 8;
    let ptr = chunk.as_ptr();
    // `max_ps(x, m)` returns `m` when `x` is NaN, so NaNs never enter the max.
    let mut m0 = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut m1 = m0;
    let mut bad = _mm256_setzero_ps();
    let mut j = 0;
    while j + 16 <= full {
        let x0 = T::load8(ptr.add(j));
        let x1 = T::load8(ptr.add(j + 8));
        m0 = _mm256_max_ps(x0, m0);
        m1 = _mm256_max_ps(x1, m1);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(x0, inf));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(x1, inf));
        j += 16;
    }
    if j < full {
        let x = T::load8(ptr.add(j));
        m0 = _mm256_max_ps(x, m0);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(x, inf));
    }
    if full < chunk.len() {
        let x = load_tail(&chunk[full..]);
        m1 = _mm256_max_ps(x, m1);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(x, inf));
    }
    (hmax(_mm256_max_ps(m0, m1)), _mm256_movemask_ps(bad) != 0)
}

/// The order-preserving integer key of a sign-magnitude 16-bit float.
#[inline(always)]
fn key16(bits: u16) -> i16 {
    let b = bits as i16;
    b ^ ((b >> 15) & 0x7fff)
}

/// [`Load8::chunk_max`] on the bits of a 16-bit float (`bits` of `n` elements) whose `+inf` and
/// `-inf` have the bits `pos_inf` and `neg_inf`: the max key and whether any key is at least
/// `+inf`'s (`+inf`, positive NaN) or below `-inf`'s (negative NaN).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max_key16(bits: *const u16, n: usize, pos_inf: u16, neg_inf: u16) -> (u16, bool) {
    let mask = _mm256_set1_epi16(0x7fff);
    let mut hi = _mm256_set1_epi16(i16::MIN);
    let mut lo = _mm256_set1_epi16(i16::MAX);
    let full = n / 16 * 16;
    let mut j = 0;
    while j < full {
        let b = _mm256_loadu_si256(bits.add(j).cast::<__m256i>());
        let k = _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi16::<15>(b), mask));
        hi = _mm256_max_epi16(hi, k);
        lo = _mm256_min_epi16(lo, k);
        j += 16;
    }
    let mut his = [0i16; 16];
    let mut los = [0i16; 16];
    _mm256_storeu_si256(his.as_mut_ptr().cast::<__m256i>(), hi);
    _mm256_storeu_si256(los.as_mut_ptr().cast::<__m256i>(), lo);
    let mut top = his.iter().copied().fold(i16::MIN, i16::max);
    let mut bottom = los.iter().copied().fold(i16::MAX, i16::min);
    for k in full..n {
        let key = key16(*bits.add(k));
        top = top.max(key);
        bottom = bottom.min(key);
    }
    let bad = top >= key16(pos_inf) || bottom < key16(neg_inf);
    // The key is its own inverse.
    (key16(top as u16) as u16, bad)
}

impl Load8 for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk_max(chunk: &[Self]) -> (f32, bool) {
        max_f32_lanes(chunk)
    }
}

impl Load8 for bf16 {
    const NEG_INF: Self = bf16::NEG_INFINITY;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // bf16 is the top half of an f32: widen the bits and shift them up.
        let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast::<__m128i>()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load16_any_order(p: *const Self) -> (__m256, __m256) {
        // Interleaving zeros below each 16-bit value makes the f32s, lane-interleaved.
        let v = _mm256_loadu_si256(p.cast::<__m256i>());
        let zero = _mm256_setzero_si256();
        (
            _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v)),
        )
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk_max(chunk: &[Self]) -> (f32, bool) {
        // bf16 is `repr(transparent)` over u16, so the slice is `chunk.len()` u16 bits.
        let (key, bad) = max_key16(
            chunk.as_ptr().cast::<u16>(),
            chunk.len(),
            bf16::INFINITY.to_bits(),
            bf16::NEG_INFINITY.to_bits(),
        );
        (bf16::from_bits(key).to_f32(), bad)
    }
}

impl Load8 for f16 {
    const NEG_INF: Self = f16::NEG_INFINITY;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk_max(chunk: &[Self]) -> (f32, bool) {
        // f16 is `repr(transparent)` over u16, so the slice is `chunk.len()` u16 bits.
        let (key, bad) = max_key16(
            chunk.as_ptr().cast::<u16>(),
            chunk.len(),
            f16::INFINITY.to_bits(),
            f16::NEG_INFINITY.to_bits(),
        );
        (f16::from_bits(key).to_f32(), bad)
    }
}

/// Gradient types written eight at a time from f32 (halves rounded to nearest even, as torch).
pub(super) trait Store8: Copy + Send + Sync + 'static {
    const ZERO: Self;
    /// Writes eight values to `p`.
    ///
    /// # Safety
    /// `p` must point to 8 writable elements and the CPU must have AVX2, FMA and F16C.
    unsafe fn store8(p: *mut Self, v: __m256);
}

impl Store8 for f32 {
    const ZERO: Self = 0.0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store8(p: *mut Self, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
}

impl Store8 for f64 {
    const ZERO: Self = 0.0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store8(p: *mut Self, v: __m256) {
        _mm256_storeu_pd(p, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        _mm256_storeu_pd(p.add(4), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
    }
}

impl Store8 for bf16 {
    const ZERO: Self = bf16::ZERO;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store8(p: *mut Self, v: __m256) {
        // Round to nearest even on the f32 bits (torch's `round_to_nearest_even`): add
        // 0x7fff + the lowest kept bit, keep the top 16 bits; NaN becomes 0x7fc0.
        let bits = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff));
        let top = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let top = _mm256_blendv_epi8(top, _mm256_set1_epi32(0x7fc0), nan);
        // Values are in [0, 0xffff], so the unsigned saturating pack keeps them.
        let packed = _mm_packus_epi32(
            _mm256_castsi256_si128(top),
            _mm256_extracti128_si256::<1>(top),
        );
        _mm_storeu_si128(p.cast::<__m128i>(), packed)
    }
}

impl Store8 for f16 {
    const ZERO: Self = f16::ZERO;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store8(p: *mut Self, v: __m256) {
        _mm_storeu_si128(
            p.cast::<__m128i>(),
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        )
    }
}

/// Up to 8 values, padded with `-inf`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_tail<T: Load8>(s: &[T]) -> __m256 {
    let mut buf = [T::NEG_INF; 8];
    buf[..s.len()].copy_from_slice(s);
    T::load8(buf.as_ptr())
}

/// Writes the first `out.len()` (< 8) of eight values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_tail<O: Store8>(out: &mut [O], v: __m256) {
    let mut buf = [O::ZERO; 8];
    O::store8(buf.as_mut_ptr(), v);
    let n = out.len();
    out.copy_from_slice(&buf[..n]);
}

/// `2^r` for `|r| <= 0.5` (a little more is fine): `sum_k (r ln 2)^k / k!`, k = 0..7.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp2_poly(r: __m256) -> __m256 {
    const LN2: f64 = std::f64::consts::LN_2;
    const C: [f32; 8] = [
        1.0,
        LN2 as f32,
        (LN2 * LN2 / 2.0) as f32,
        (LN2 * LN2 * LN2 / 6.0) as f32,
        (LN2 * LN2 * LN2 * LN2 / 24.0) as f32,
        (LN2 * LN2 * LN2 * LN2 * LN2 / 120.0) as f32,
        (LN2 * LN2 * LN2 * LN2 * LN2 * LN2 / 720.0) as f32,
        (LN2 * LN2 * LN2 * LN2 * LN2 * LN2 * LN2 / 5040.0) as f32,
    ];
    // Estrin's scheme: three dependent levels instead of Horner's seven.
    let c = |k: usize| _mm256_set1_ps(C[k]);
    let r2 = _mm256_mul_ps(r, r);
    let q0 = _mm256_fmadd_ps(c(1), r, c(0));
    let q1 = _mm256_fmadd_ps(c(3), r, c(2));
    let q2 = _mm256_fmadd_ps(c(5), r, c(4));
    let q3 = _mm256_fmadd_ps(c(7), r, c(6));
    let r4 = _mm256_mul_ps(r2, r2);
    let a = _mm256_fmadd_ps(q1, r2, q0);
    let b = _mm256_fmadd_ps(q3, r2, q2);
    _mm256_fmadd_ps(b, r4, a)
}

/// `v 2^n` for integral `n` by adding `n` to `v`'s exponent bits: exact while the result is a
/// normal number (`v` in `[2^-0.5, 2^0.5]`, `n` in `[-124, 0]`; other lanes give garbage the
/// caller masks out). One integer add instead of building `2^n` and multiplying.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ldexp(v: __m256, n: __m256) -> __m256 {
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(v), e))
}

/// The smallest `n` kept: `2^n r` stays a normal f32 (`2^-124 * 2^-0.5 > 2^-126`).
const MIN_N: f32 = -124.5;

/// `a k` as `p + err` (`p = fl(a k_hi)`, `err` its error plus `a k_lo`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled(a: __m256, k_hi: __m256, k_lo: __m256) -> (__m256, __m256) {
    let p = _mm256_mul_ps(a, k_hi);
    let err = _mm256_fmsub_ps(a, k_hi, p);
    (p, _mm256_fmadd_ps(a, k_lo, err))
}

/// `f32` split `(hi, lo)` of an f64: `hi + lo` carries ~48 bits.
fn split(x: f64) -> (f32, f32) {
    let hi = x as f32;
    (hi, (x - hi as f64) as f32)
}

/// A pass over one row: the raw max `M` of the logits, whether any is NaN or `+inf`,
/// `s = sum e^((x - M) / T)` and (if `ENT`) `t = sum e^((x - M) / T) (x - M) / T`.
pub(super) struct Stats {
    pub max: f32,
    pub bad: bool,
    pub s: f64,
    pub t: f64,
}

/// Horizontal max of eight f32 (no NaNs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax(v: __m256) -> f32 {
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// Sum of f64 lanes in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(acc: &[__m256d; 4]) -> f64 {
    let mut total = 0.0;
    for v in acc {
        let mut lanes = [0.0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), *v);
        total += lanes.iter().sum::<f64>();
    }
    total
}

/// Adds eight f32 to two f64 accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_wide(lo: &mut __m256d, hi: &mut __m256d, v: __m256) {
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
}

/// One row's statistics (see [`Stats`]). Stops early (with `bad`) at a chunk holding NaN or
/// `+inf`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn row_stats<T: Load8, const ENT: bool>(row: &[T], inv_t: f64) -> Stats {
    let k = inv_t * std::f64::consts::LOG2_E;
    let (k_hi, k_lo) = split(k);
    let (k_hi, k_lo) = (_mm256_set1_ps(k_hi), _mm256_set1_ps(k_lo));
    // a k >= -124 (see the module's doc).
    let a_min = _mm256_set1_ps((-124.0 / k) as f32);
    let t_min_n = _mm256_set1_ps(-123.5);
    let mut max = f32::NEG_INFINITY;
    let zero = _mm256_setzero_pd();
    let mut s = [zero; 4];
    let mut t = [zero; 4];
    for chunk in row.chunks(CHUNK) {
        let full = chunk.len() / 8 * 8;
        let ptr = chunk.as_ptr();
        // Pass 1: the chunk's max and whether it holds NaN or +inf.
        let (cm, bad) = T::chunk_max(chunk);
        if bad {
            return Stats {
                max,
                bad: true,
                s: 0.0,
                t: 0.0,
            };
        }
        if cm == f32::NEG_INFINITY {
            continue; // only banned tokens
        }
        if cm > max {
            if max > f32::NEG_INFINITY {
                // Rescale the sums to the new max: s' = e^(shift) s,
                // t' = e^(shift) (t + s shift), shift = (M - M') / T (t is kept in log2 units).
                let shift = (max as f64 - cm as f64) * inv_t;
                let scale = _mm256_set1_pd(crate::numeric::exp::exp(shift));
                let shift2 = _mm256_set1_pd(shift * std::f64::consts::LOG2_E);
                for lane in 0..4 {
                    if ENT {
                        t[lane] = _mm256_mul_pd(scale, _mm256_fmadd_pd(s[lane], shift2, t[lane]));
                    }
                    s[lane] = _mm256_mul_pd(s[lane], scale);
                }
            }
            max = cm;
        }
        // Pass 2: the exponentials.
        let mv = _mm256_set1_ps(max);
        let term = |x: __m256| -> (__m256, __m256) {
            let a = _mm256_max_ps(a_min, _mm256_sub_ps(x, mv));
            let (p, err) = scaled(a, k_hi, k_lo);
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
            let r = _mm256_add_ps(_mm256_sub_ps(p, n), err);
            let e = ldexp(exp2_poly(r), n);
            let eq = if ENT {
                // Clamped terms (n = -124) are left out of t, so a row of one real token keeps
                // t = 0 exactly (its entropy and that part of the gradient are exact zeros).
                let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(n, t_min_n);
                _mm256_and_ps(_mm256_mul_ps(e, _mm256_add_ps(p, err)), keep)
            } else {
                e
            };
            (e, eq)
        };
        let mut j = 0;
        while j + 16 <= full {
            let (x0, x1) = T::load16_any_order(ptr.add(j));
            let (e0, q0) = term(x0);
            let (e1, q1) = term(x1);
            let [s0, s1, ..] = &mut s;
            add_wide(s0, s1, _mm256_add_ps(e0, e1));
            if ENT {
                let [t0, t1, ..] = &mut t;
                add_wide(t0, t1, _mm256_add_ps(q0, q1));
            }
            j += 16;
        }
        let mut rest = |x: __m256| {
            let (e, q) = term(x);
            let [s0, s1, ..] = &mut s;
            add_wide(s0, s1, e);
            if ENT {
                let [t0, t1, ..] = &mut t;
                add_wide(t0, t1, q);
            }
        };
        if j < full {
            rest(T::load8(ptr.add(j)));
        }
        if full < chunk.len() {
            rest(load_tail(&chunk[full..]));
        }
    }
    Stats {
        max,
        bad: false,
        s: hsum(&s),
        t: if ENT {
            hsum(&t) * std::f64::consts::LN_2
        } else {
            0.0
        },
    }
}

/// What the backward needs besides the logits: `p_j = e^((x_j - M) / T - ln s)` and
/// `dlogits_j = (-g p_j - g_H p_j (log p_j + H)) / T`.
pub(super) struct Backward {
    pub max: f32,
    pub inv_t: f64,
    pub ln_s: f64,
    pub g: f64,
    pub g_h: f64,
    pub h: f64,
}

impl Backward {
    /// Whether the f32 constants are finite (else the caller takes the f64 path).
    pub(super) fn fits(&self) -> bool {
        let a = (self.g * self.inv_t) as f32;
        let b = (self.g_h * self.inv_t) as f32;
        a.is_finite() && b.is_finite()
    }
}

/// Writes `out_j = (-g p_j - g_H p_j (log p_j + H)) / T` for one row (the target's `+g / T` is
/// the caller's). `ENT` = false drops the entropy term (`g_H = 0`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]); `out.len() == row.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn row_backward<T: Load8, O: Store8, const ENT: bool>(
    row: &[T],
    out: &mut [O],
    c: &Backward,
) {
    let k = c.inv_t * std::f64::consts::LOG2_E;
    let (k_hi, k_lo) = split(k);
    let (k_hi, k_lo) = (_mm256_set1_ps(k_hi), _mm256_set1_ps(k_lo));
    // log2 s = l_int + l_frac, |l_frac| <= 0.5.
    let l = c.ln_s * std::f64::consts::LOG2_E;
    let l_int = l.round();
    let l_int_v = _mm256_set1_ps(l_int as f32);
    let l_frac = _mm256_set1_ps((l - l_int) as f32);
    // log p_j + H = (x_j - M) / T + (H - ln s).
    let (it_hi, it_lo) = split(c.inv_t);
    let (it_hi, it_lo) = (_mm256_set1_ps(it_hi), _mm256_set1_ps(it_lo));
    let (c_hi, c_lo) = split(c.h - c.ln_s);
    let (c_hi, c_lo) = (_mm256_set1_ps(c_hi), _mm256_set1_ps(c_lo));
    let coef_g = _mm256_set1_ps((-c.g * c.inv_t) as f32);
    let coef_h = _mm256_set1_ps((-c.g_h * c.inv_t) as f32);
    let mv = _mm256_set1_ps(c.max);
    let min_n = _mm256_set1_ps(MIN_N);
    let grad = |x: __m256| -> __m256 {
        let a = _mm256_sub_ps(x, mv);
        let (p, err) = scaled(a, k_hi, k_lo);
        let n0 = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
        // (p - n0) is exact; r in [-1, 1] is brought back to [-0.5, 0.5].
        let r = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(p, n0), l_frac), err);
        let n1 = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(r);
        let r = _mm256_sub_ps(r, n1);
        let n = _mm256_add_ps(_mm256_sub_ps(n0, l_int_v), n1);
        let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(n, min_n);
        let prob = ldexp(exp2_poly(r), n);
        let w = if ENT {
            let lp_h = _mm256_add_ps(
                _mm256_fmadd_ps(a, it_hi, c_hi),
                _mm256_fmadd_ps(a, it_lo, c_lo),
            );
            _mm256_fmadd_ps(coef_h, lp_h, coef_g)
        } else {
            coef_g
        };
        _mm256_and_ps(_mm256_mul_ps(prob, w), keep)
    };
    let full = row.len() / 8 * 8;
    let src = row.as_ptr();
    let dst = out.as_mut_ptr();
    let mut j = 0;
    while j < full {
        O::store8(dst.add(j), grad(T::load8(src.add(j))));
        j += 8;
    }
    if full < row.len() {
        store_tail(&mut out[full..], grad(load_tail(&row[full..])));
    }
}

//! Float32 exponentials for the float32 loss path: `exp(x)` and the k3 KL core
//! `exp(x) - x - 1`, branch-free (selects only) so the loops that call them vectorise to 8 (AVX2)
//! or 16 (AVX-512) lanes.
//!
//! This module depends on nothing else in the crate, so any kernel can use it.
//!
//! Error bounds (checked by the tests below against f64 `exp`, over the ranges stated):
//! - [`exp_f32`]: relative error below 2.5e-7 (about 2 units in the last place) for
//!   `x` in [-87, 88]; inputs outside are clamped to that range (NaN stays NaN).
//! - [`exp_f32_of_difference`]: the same bound for `exp(a - b)` of the exact difference.
//! - [`exp_minus_one_minus_x`]: relative error below 5e-7 for every `x` in [-87, 88], including
//!   `|x|` near 0 where `e - x - 1` in float32 would lose every digit.

#[cfg(target_arch = "x86_64")]
use super::v16::V16;

/// Above this, `exp` overflows float32 (`exp(88.72)`); the result is clamped here.
const MAX_ARG: f32 = 88.0;
/// Below this, `exp` is subnormal in float32; the result is clamped here.
const MIN_ARG: f32 = -87.0;

/// `exp(x)` in float32 (the kernels read differences: [`exp_f32_of_difference`]).
///
/// Cody-Waite reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, with ln 2 split in two so that
/// `n * LN2_HI` is exact for `|n| <= 128` (the high part has 9 significant bits) and no FMA is
/// needed for the reduction to be correct; then Cephes' degree-7 minimax polynomial for `e^r` and
/// `2^n` built from its exponent bits.
#[cfg(test)]
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_f32_plus::<false>(x, 0.0)
}

/// `a * b + c`, fused when `FMA` (for code compiled with the `fma` feature; elsewhere a fused
/// multiply-add is a library call), else two roundings.
#[inline(always)]
pub fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(a - b)` for float32 `a` and `b`, with the difference taken exactly: `a - b` rounded to
/// float32 is off by up to half a unit of its last place, which `exp` turns into a relative error
/// of `|a - b| * 6e-8` (1.8e-6 at a log ratio of 30). The rounding error, recovered exactly by
/// Knuth's TwoSum, joins the reduced argument instead. Returns the rounded difference too.
#[inline(always)]
pub fn exp_f32_of_difference<const FMA: bool>(a: f32, b: f32) -> (f32, f32) {
    let s = a - b;
    // TwoSum of `a` and `-b`: `s = a_part + nb_part`, and the two remainders sum to the tail.
    let nb_part = s - a;
    let a_part = s - nb_part;
    let tail = (a - a_part) - (b + nb_part);
    // (For non-finite inputs the tail is NaN; so is `s` or the caller's check of it.)
    (s, exp_f32_plus::<FMA>(s, tail))
}

/// `exp(x + tail)` for a `tail` far below `x`'s last place: `tail` is added to the reduced
/// argument.
#[inline(always)]
fn exp_f32_plus<const FMA: bool>(x: f32, tail: f32) -> f32 {
    // 355 / 512: nine significant bits.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer in the low mantissa bits (round to nearest).
    const SHIFTER: f32 = 12_582_912.0;
    let is_nan = x.is_nan();
    let x = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = mul_add::<FMA>(x, std::f32::consts::LOG2_E, SHIFTER);
    let n = shifted - SHIFTER;
    // `n * LN2_HI` is exact, so fused or not the first step is `x - n LN2_HI` rounded once.
    let r = mul_add::<FMA>(-n, LN2_LO, mul_add::<FMA>(-n, LN2_HI, x)) + tail;
    let mut p = 1.987_569_1e-4_f32;
    p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    p = mul_add::<FMA>(p, r, 8.333_452e-3);
    p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    // Cephes' 5.0000001201e-1 is 0.5 in float32.
    p = mul_add::<FMA>(p, r, 0.5);
    let e_r = mul_add::<FMA>(p, r * r, r) + 1.0;
    // n is in [-126, 127] here, so 2^n is a normal number built from its exponent bits.
    let n_bits = shifted.to_bits().wrapping_sub(SHIFTER.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if is_nan {
        f32::NAN
    } else {
        e_r * scale
    }
}

/// Below this `|x|`, [`exp_minus_one_minus_x`] uses its series (cancellation-free); above it
/// `e - 1 - x` keeps at least 0.7 of `e`'s leading digits.
const SERIES_BOUND: f32 = 1.0;

/// 1 / k! for k = 2 ..= 12, highest first for Horner's scheme.
const K3_SERIES: [f32; 11] = [
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    1.0 / 2.0,
];

/// `exp(x) - x - 1` (the k3 KL estimator at `x = ref - lp`), given `e = exp_f32(x)`.
///
/// For `|x| < 1` the Taylor series `x^2 (1/2! + x/3! + ... + x^10/12!)` (truncation below 2e-10
/// relative, all terms after the first at most a third of the one before, so no cancellation);
/// elsewhere `(e - 1) - x`, whose value is at least 0.36 and at least a quarter of `e` there, so
/// `e`'s error stays relative.
#[inline(always)]
pub fn exp_minus_one_minus_x<const FMA: bool>(x: f32, e: f32) -> f32 {
    const C: [f32; 11] = K3_SERIES;
    let mut p = C[0];
    for &c in &C[1..] {
        p = mul_add::<FMA>(p, x, c);
    }
    let series = (x * x) * p;
    let direct = (e - 1.0) - x;
    if x.abs() < SERIES_BOUND {
        series
    } else {
        direct
    }
}

/// [`exp_f32_of_difference`] on sixteen lanes (`crate::numeric::v16`), with the same operations
/// in the same order as its fused build, for `|a - b| <= 87`: the clamp and the NaN rule are
/// left to the caller, which takes lanes outside that range (or NaN) elsewhere. Lanes out of
/// range get unspecified values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp_of_difference_v<V: V16>(a: V::F, b: V::F) -> (V::F, V::F) {
    let s = V::sub(a, b);
    let nb_part = V::sub(s, a);
    let a_part = V::sub(s, nb_part);
    let tail = V::sub(V::sub(a, a_part), V::add(b, nb_part));
    (s, exp_plus_v::<V>(s, tail))
}

/// [`exp_f32_plus`] on sixteen lanes, fused, without the clamp and the NaN rule (see
/// [`exp_of_difference_v`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_plus_v<V: V16>(x: V::F, tail: V::F) -> V::F {
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFTER: f32 = 12_582_912.0;
    let c = |v: f32| V::splat(v);
    let shifted = V::fma(x, c(std::f32::consts::LOG2_E), c(SHIFTER));
    let n = V::sub(shifted, c(SHIFTER));
    let r = V::add(V::fnma(n, c(LN2_LO), V::fnma(n, c(LN2_HI), x)), tail);
    let mut p = c(1.987_569_1e-4);
    p = V::fma(p, r, c(1.398_199_9e-3));
    p = V::fma(p, r, c(8.333_452e-3));
    p = V::fma(p, r, c(4.166_579_6e-2));
    p = V::fma(p, r, c(1.666_666_5e-1));
    p = V::fma(p, r, c(0.5));
    let e_r = V::add(V::fma(p, V::mul(r, r), r), c(1.0));
    V::mul(e_r, V::pow2_of_shifted(shifted))
}

/// [`exp_minus_one_minus_x`] on sixteen lanes, the same operations in the same order as its
/// fused build.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp_minus_one_minus_x_v<V: V16>(x: V::F, e: V::F) -> V::F {
    let mut p = V::splat(K3_SERIES[0]);
    for &c in &K3_SERIES[1..] {
        p = V::fma(p, x, V::splat(c));
    }
    let series = V::mul(V::mul(x, x), p);
    let one = V::splat(1.0);
    let direct = V::sub(V::sub(e, one), x);
    V::select(V::lt(V::abs(x), V::splat(SERIES_BOUND)), series, direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every float32 in `[lo, hi]` on a grid of `steps` points, plus the ends.
    fn grid(lo: f32, hi: f32, steps: usize) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |k| lo + (hi - lo) * (k as f32 / steps as f32))
    }

    /// `exp(x)` with the multiply-adds fused or not.
    fn exp_with(fma: bool, x: f32) -> f32 {
        if fma {
            exp_f32_plus::<true>(x, 0.0)
        } else {
            exp_f32(x)
        }
    }

    #[test]
    fn exp_is_within_its_bound() {
        for fma in [false, true] {
            let mut worst = 0.0f64;
            for x in grid(-87.0, 88.0, 2_000_000).chain(grid(-1e-3, 1e-3, 100_000)) {
                let exact = (x as f64).exp();
                worst = worst.max(((exp_with(fma, x) as f64 - exact) / exact).abs());
            }
            assert!(worst < 2.5e-7, "fma {fma}: worst relative error {worst}");
            assert!(exp_with(fma, f32::NAN).is_nan());
            assert_eq!(exp_with(fma, 0.0), 1.0);
            assert!(exp_with(fma, 1e9).is_finite() && exp_with(fma, -1e9) > 0.0);
        }
    }

    #[test]
    fn exp_of_difference_takes_the_difference_exactly() {
        let mut worst = [0.0f64; 2];
        for k in 0..200_000 {
            // Log-probabilities in [-40, 0] and gaps up to +-40: the rounding of `a - b` alone
            // would cost up to 2.4e-6 relative.
            let a = -40.0 * ((k * 7919 % 200_000) as f32 / 200_000.0);
            let b = -40.0 * (k as f32 / 200_000.0) + 1e-3;
            let exact = (a as f64 - b as f64).exp();
            for (fma, (d, e)) in [
                exp_f32_of_difference::<false>(a, b),
                exp_f32_of_difference::<true>(a, b),
            ]
            .into_iter()
            .enumerate()
            {
                assert_eq!(d, a - b);
                worst[fma] = worst[fma].max(((e as f64 - exact) / exact).abs());
            }
        }
        assert!(
            worst[0] < 2.5e-7 && worst[1] < 2.5e-7,
            "worst relative errors {worst:?}"
        );
        assert_eq!(exp_f32_of_difference::<false>(-1.5, -1.5).1, 1.0);
        assert_eq!(exp_f32_of_difference::<true>(-1.5, -1.5).1, 1.0);
    }

    #[test]
    fn k3_core_is_within_its_bound_near_zero_and_far_from_it() {
        for fma in [false, true] {
            let mut worst = 0.0f64;
            let tiny = grid(-1e-3, 1e-3, 100_000).filter(|x| *x != 0.0);
            for x in grid(-87.0, 88.0, 2_000_000).chain(tiny) {
                let xd = x as f64;
                // exp(x) - x - 1 in f64, by its own series where f64 would cancel too.
                let exact = if xd.abs() < 1e-2 {
                    xd * xd * (0.5 + xd / 6.0 + xd * xd / 24.0 + xd * xd * xd / 120.0)
                } else {
                    xd.exp_m1() - xd
                };
                if exact == 0.0 {
                    continue;
                }
                let e = exp_with(fma, x);
                let got = if fma {
                    exp_minus_one_minus_x::<true>(x, e)
                } else {
                    exp_minus_one_minus_x::<false>(x, e)
                };
                worst = worst.max(((got as f64 - exact) / exact).abs());
            }
            assert!(worst < 5e-7, "fma {fma}: worst relative error {worst}");
        }
        assert_eq!(exp_minus_one_minus_x::<false>(0.0, 1.0), 0.0);
    }

    /// The sixteen-lane versions at `V`'s level on 16 pairs: `(a - b, exp(a - b), k3 core)`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lanes<V: V16>(a: &[f32; 16], b: &[f32; 16]) -> [[f32; 16]; 3] {
        let (d, e) = exp_of_difference_v::<V>(V::load(a.as_ptr()), V::load(b.as_ptr()));
        let k3 = exp_minus_one_minus_x_v::<V>(d, e);
        let mut out = [[0.0; 16]; 3];
        for (o, v) in out.iter_mut().zip([d, e, k3]) {
            V::store(o.as_mut_ptr(), v);
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn lanes_avx512(a: &[f32; 16], b: &[f32; 16]) -> [[f32; 16]; 3] {
        lanes::<crate::numeric::v16::Avx512>(a, b)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes_avx2(a: &[f32; 16], b: &[f32; 16]) -> [[f32; 16]; 3] {
        lanes::<crate::numeric::v16::Avx2>(a, b)
    }

    /// The intrinsics versions are the fused scalar ones, bit for bit, at both levels (the
    /// loss kernel's bit-identity across levels rests on this).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lanes_equal_the_fused_scalar_code() {
        use crate::numeric::simd::{cpu_simd_level, SimdLevel};
        let level = cpu_simd_level();
        if level < SimdLevel::Avx2 {
            return;
        }
        for k in 0..20_000 {
            let mut a = [0.0f32; 16];
            let mut b = [0.0f32; 16];
            for j in 0..16 {
                let t = (k * 16 + j) as f32;
                a[j] = -40.0 * ((t * 0.618_034).fract());
                // Gaps up to +-80, many near 0 (the k3 series).
                let gap = if j % 2 == 0 { 80.0 } else { 1e-3 };
                b[j] = a[j] + gap * (2.0 * (t * 0.414_213_6).fract() - 1.0);
            }
            let want: Vec<(f32, f32, f32)> = (0..16)
                .map(|j| {
                    let (d, e) = exp_f32_of_difference::<true>(a[j], b[j]);
                    (d, e, exp_minus_one_minus_x::<true>(d, e))
                })
                .collect();
            // SAFETY: the CPU has AVX2 + FMA (checked above), and AVX-512F where called.
            let mut got = vec![unsafe { lanes_avx2(&a, &b) }];
            if level >= SimdLevel::Avx512 {
                // SAFETY: as above.
                got.push(unsafe { lanes_avx512(&a, &b) });
            }
            for g in got {
                for j in 0..16 {
                    let w = want[j];
                    assert_eq!(
                        (g[0][j].to_bits(), g[1][j].to_bits(), g[2][j].to_bits()),
                        (w.0.to_bits(), w.1.to_bits(), w.2.to_bits()),
                        "a {} b {}",
                        a[j],
                        b[j]
                    );
                }
            }
        }
    }
}

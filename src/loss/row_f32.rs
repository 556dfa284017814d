//! The float32 path of one row, for f32, bf16 and f16 inputs of the PPO-clipped losses (TRL's
//! grpo, bnpo, dr_grpo, dapo and luspo, and verl's vanilla dual-clip PPO loss) at token level
//! with the k1, abs, k2 or k3 KL.
//!
//! Per-token values are computed in float32, 16 (AVX-512) or 8 (AVX2) tokens per instruction, by
//! one kernel written with intrinsics over sixteen lanes ([`chunk_v`] on
//! `crate::numeric::v16::V16`) and compiled for each level; AVX2 and AVX-512 run the same
//! operations in the same order and give bit-identical results. The kernel keeps its float64 lane
//! sums in registers (no per-token scratch), skips blocks of sixteen padding tokens, prefetches
//! its inputs, and for a row with one advantage of known sign and no `delta` takes the one-bound
//! form of the clipped term (`min(r, 1 + eh)` for `a > 0`, `max(r, 1 - el)` for `a < 0`, equal to
//! TRL's away from the bounds; tokens near them go to float64 as below). The path runs only where
//! it pays off ([`pays_off`]: x86-64 with AVX2); the portable build of the scalar [`chunk`] is
//! kept as the fallback of the level dispatch but rounds each product. Sums
//! are kept in float64, [`LANES`] lanes per sum with a fixed token-to-lane assignment, so results
//! do not depend on the thread count. The inputs are read once: a chunk of [`CHUNK`] tokens is
//! computed in L1 (bf16/f16 converted there first), and no float64 copy of anything is made.
//!
//! A token goes to the float64 formulas of the float64 path instead (recomputed from its
//! inputs, exactly as that path would) when float32 could decide or overflow differently:
//! its ratio within 1e-6 (relative) of a clip bound (`1 - epsilon_low`, `1 + epsilon_high`,
//! `delta`, and for vanilla `clip_ratio_c`), a log ratio or KL gap beyond +-80 (float32's `exp`
//! overflows at 88.7; for vanilla a log ratio of magnitude 20 or more, where verl clamps it), or a
//! non-finite log ratio, KL gap, KL or gradient (which is also how non-finite inputs are found).
//! The band is four times the float32 ratio's error (below 2.5e-7: `exp_f32_of_difference`
//! takes `lp - old` exactly), so every clip decision and clip metric is the float64 path's.
//!
//! verl's vanilla loss is TRL's clipped term without `delta` (`max(-a r, -a clip(r))` is
//! `-min(a r, a clip(r))`, with the same tie rules) plus the dual clip: for `a < 0` and
//! `r > clip_ratio_c` the loss is `-a * clip_ratio_c` with no gradient through `r`. Away from the
//! bounds its `pg_clipfrac` is TRL's clipped-low-or-high indicator and `pg_clipfrac_lower` the
//! dual-clip indicator; `ppo_kl`'s `-log_ratio` is summed in float64 from the TwoSum of
//! `lp - old` (its float32 rounding plus the exact remainder), so it is the float64 path's value
//! up to the order of the sums. Its log ratio is clamped to +-20 only where it reaches 20, and
//! those tokens go to float64, so in the kernel the ratio is `exp(lp - old)` as for TRL.
//!
//! Error bound against the float64 path (tested in `tests/python/test_loss_f32.py` at every
//! SIMD level): each token's loss and gradient differ by at most about 5e-7 of their own
//! magnitude (the ratio 2.5e-7, a few float32 products; the k3 core at most 5e-7, see
//! `crate::numeric::exp_f32`). So the loss differs by at most 5e-7 times `sum_i rho_i sum_t M |L_t|` (at
//! most 5e-7 relative when the per-token losses do not cancel), and each gradient entry by at
//! most 5e-7 of its magnitude, far under 1e-6 of `max |grad|`.

// The chunk loops walk several parallel buffers with one index; zipping them all would hide the
// formulas.
#![allow(clippy::needless_range_loop)]

use super::options::{ImportanceSamplingLevel, KlEstimator, LossOptions, LossType};
use super::row::{weight_sum_dispatched, RowKernel, RowSums};
use super::terms::{self, Clipped, Objective, Vanilla};
use super::AdvantageView;
use crate::elem::{FloatElem, MaskElem};
use crate::error::{Error, Result};
use crate::numeric::exp;
use crate::numeric::exp_f32::{exp_f32_of_difference, exp_minus_one_minus_x};
use crate::numeric::simd::{simd_dispatch, SimdLevel};
#[cfg(target_arch = "x86_64")]
use crate::numeric::{
    exp_f32::{exp_minus_one_minus_x_v, exp_of_difference_v},
    v16::{prefetch, Avx2, Avx512, V16},
};

/// Tokens per chunk: the chunk's float32 buffers (about 10 KiB) stay in L1.
const CHUNK: usize = 256;
/// Float64 accumulators per sum: two AVX-512 vectors, four AVX2 ones.
const LANES: usize = 16;
/// Clip decisions within this relative distance of a bound are taken in float64.
const NEAR_BOUND: f32 = 1e-6;
/// Log ratios and KL gaps beyond this are taken in float64 (float32's `exp` overflows at 88.7).
const MAX_GAP: f32 = 80.0;
/// verl's vanilla loss clamps the log ratio to +-20 (no gradient through the clamp there): log
/// ratios whose float32 value is 20 or more in magnitude (the largest float32 below 20 is this)
/// are taken in float64.
const VANILLA_MAX_GAP: f32 = f32::from_bits(20.0f32.to_bits() - 1);
/// Dual-clip constants closer than this (relative) to `1 - epsilon_low` are left to float64:
/// the float64 path could tie the two where float32 does not.
const DUAL_CLIP_APART: f64 = 1e-5;

/// The largest `|log ratio|` (float32) the kernels take.
#[inline(always)]
const fn max_gap(vanilla: bool) -> f32 {
    if vanilla {
        VANILLA_MAX_GAP
    } else {
        MAX_GAP
    }
}

/// Whether this path computes the loss `options` describe (else the float64 path does).
pub fn handles(options: &LossOptions) -> bool {
    // A scale or bound float32 cannot hold closely is left to float64.
    let representable = |v: f64| v == 0.0 || (1e-30..=1e30).contains(&v.abs());
    // Bounds that float32 rounds together (or apart) differently from float64 would tie (or
    // not) differently in the clipped term's min.
    let (lo, hi) = (1.0 - options.epsilon_low, 1.0 + options.epsilon_high());
    // verl's vanilla loss has no `delta`; its dual clip must stay clear of `lo` (see
    // `DUAL_CLIP_APART`).
    let vanilla = options.loss_type == LossType::Vanilla;
    let delta = match options.delta {
        Some(delta) if !vanilla => delta,
        _ => f64::INFINITY,
    };
    let same_ties = |x: f64, y: f64| (x == y) == ((x as f32) == (y as f32));
    let bounds_keep_ties = same_ties(lo, hi) && same_ties(delta, lo) && same_ties(delta, hi);
    let c = options.clip_ratio_c;
    let dual_clip_apart = !vanilla || (c.is_finite() && c - lo > DUAL_CLIP_APART * c.abs());
    bounds_keep_ties
        && dual_clip_apart
        && (options.loss_type.is_trl_clipped() || vanilla)
        && options.importance_sampling_level == ImportanceSamplingLevel::Token
        && options.kl_estimator != KlEstimator::LowVarKl
        && (vanilla || options.delta.is_none_or(representable))
        && options.epsilon_low < 1e30
        && options.epsilon_high() < 1e30
        && representable(options.beta)
}

/// Whether the float32 path is faster than the float64 one at `level`: on x86-64 with AVX2 or
/// AVX-512. The baseline build (SSE2: 4 float32 lanes, no FMA) measured 3.7x slower than the
/// float64 path's baseline build at 64 x 4096, and other architectures are not measured, so
/// there the float64 path runs.
pub(super) fn pays_off(level: SimdLevel) -> bool {
    cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx2
}

/// The row's sums in [`LANES`] float64 lanes each (lane `k % LANES` takes token `k` of each
/// chunk), and the float64 fallback tokens' plain sums.
struct Sums {
    /// `w * a * coef`: the policy loss with its sign flipped.
    loss: [f64; LANES],
    /// `w * kl * kr`: the KL term over beta.
    kl: [f64; LANES],
    low: [f64; LANES],
    high: [f64; LANES],
    /// Vanilla: `w` where the dual clip holds (`pg_clipfrac_lower`).
    lower: [f64; LANES],
    /// Vanilla: `w * (lp - old)` (minus `ppo_kl`'s sum).
    log_ratio: [f64; LANES],
    /// Loss and kl of the tokens computed in float64 (the loss complete, not as the lanes hold
    /// it), in token order.
    fallback: [f64; 2],
    /// Their weighted metric values, in the objective's slots ([`Clipped::LOW`], ... or
    /// [`Vanilla::CLIPFRAC`], ...).
    fallback_metrics: [f64; 3],
}

fn total(lanes: &[f64; LANES]) -> f64 {
    lanes.iter().sum()
}

/// The clip bounds as the float32 path compares with them, and the bands around them within
/// which a ratio goes to float64 (shared with the CUDA loss kernel, which takes the same
/// decisions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Float32Bounds {
    /// `1 - epsilon_low`, `1 + epsilon_high` and `delta` (infinite when unset or for vanilla)
    /// as float64, for the fallback formulas.
    pub lo64: f64,
    pub hi64: f64,
    pub delta64: f64,
    pub lo: f32,
    pub hi: f32,
    /// `f32::MAX` when unset (always for vanilla): no finite float32 ratio reaches it.
    pub delta: f32,
    /// Vanilla's dual-clip constant `clip_ratio_c` (`f32::MAX` for the other losses).
    pub c: f32,
    /// `NEAR_BOUND * |bound|` for each bound.
    pub near_lo: f32,
    pub near_hi: f32,
    pub near_delta: f32,
    pub near_c: f32,
}

impl Float32Bounds {
    pub(crate) fn of(opt: &LossOptions) -> Self {
        let vanilla = opt.loss_type == LossType::Vanilla;
        let (lo, hi) = (1.0 - opt.epsilon_low, 1.0 + opt.epsilon_high());
        // verl's vanilla loss has no `delta`; the other losses no dual clip.
        let delta = match opt.delta {
            Some(delta) if !vanilla => delta,
            _ => f64::INFINITY,
        };
        let c = if vanilla {
            opt.clip_ratio_c
        } else {
            f64::INFINITY
        };
        let to_f32 = |v: f64| {
            if v < f32::MAX as f64 {
                v as f32
            } else {
                f32::MAX
            }
        };
        let (lo32, hi32, delta32, c32) = (lo as f32, hi as f32, to_f32(delta), to_f32(c));
        Float32Bounds {
            lo64: lo,
            hi64: hi,
            delta64: delta,
            lo: lo32,
            hi: hi32,
            delta: delta32,
            c: c32,
            near_lo: NEAR_BOUND * lo32.abs(),
            near_hi: NEAR_BOUND * hi32.abs(),
            near_delta: NEAR_BOUND * delta32,
            near_c: NEAR_BOUND * c32,
        }
    }
}

/// The row-independent float32 parameters.
#[derive(Clone, Copy)]
struct Params {
    lo: f32,
    hi: f32,
    /// `f32::MAX` when unset (always for vanilla): no finite float32 ratio reaches it.
    delta: f32,
    /// Vanilla's dual-clip constant `clip_ratio_c` (`f32::MAX` for the other losses).
    c: f32,
    /// `NEAR_BOUND * |bound|` for `lo`, `hi` and `delta`.
    near_lo: f32,
    near_hi: f32,
    near_delta: f32,
    near_c: f32,
    /// `[bound - near, bound + near]` for `lo`, `hi` and `delta` (the same tokens, give or take
    /// a rounding of the band's ends).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_lo: (f32, f32),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_hi: (f32, f32),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_delta: (f32, f32),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_c: (f32, f32),
    beta: f32,
    /// 1 with bias correction (KL times the ratio), else 0.
    bias: f32,
    /// `rho_i * grad_scale`.
    scale: f32,
}

/// A chunk's float32 inputs (`old` and `reference` empty when absent).
struct ChunkIn<'c> {
    w: &'c [f32],
    /// A bool mask's bytes, which [`chunk_v`] reads instead of `w` when `BINARY` (`w` is then
    /// not filled).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    mask: &'c [u8],
    lp: &'c [f32],
    old: &'c [f32],
    reference: &'c [f32],
    a: &'c [f32],
}

/// A chunk's per-token results before they are summed (0 for fallback tokens).
struct Scratch {
    /// `w * a`: exact for 0/1 weights, else rounded once (6e-8).
    wa: [f32; CHUNK],
    /// The ratio the clipped term takes: `min(u, v) = a * coef`, so the policy loss is
    /// `-a * coef`, summed as a float64 product.
    coef: [f32; CHUNK],
    /// The weight the KL is summed with.
    w: [f32; CHUNK],
    kl: [f32; CHUNK],
    /// `w` where the token counts as clipped low / high / by the dual clip (exact: flag times
    /// weight).
    w_low: [f32; CHUNK],
    w_high: [f32; CHUNK],
    w_lower: [f32; CHUNK],
    /// 1 for tokens left to the float64 formulas.
    fallback: [f32; CHUNK],
}

/// A row's working memory: the chunk's results and its float32 inputs (mask weights, `logp`,
/// `old_logp`, `ref_logp` converted from bf16/f16, advantages).
struct Workspace {
    scratch: Scratch,
    inputs: [[f32; CHUNK]; 5],
    /// The chunk's tokens left to float64, as bits (bit `k % 16` of word `k / 16`).
    fallback: [u16; CHUNK / 16],
}

impl Workspace {
    fn new() -> Box<Self> {
        Box::new(Workspace {
            scratch: Scratch {
                wa: [0.0; CHUNK],
                coef: [0.0; CHUNK],
                w: [0.0; CHUNK],
                kl: [0.0; CHUNK],
                w_low: [0.0; CHUNK],
                w_high: [0.0; CHUNK],
                w_lower: [0.0; CHUNK],
                fallback: [0.0; CHUNK],
            },
            inputs: [[0.0; CHUNK]; 5],
            fallback: [0; CHUNK / 16],
        })
    }
}

thread_local! {
    /// One workspace per thread, reused by every row the thread computes: a fresh 12 KiB
    /// allocation, zeroed, per row cost about 5% at 64 x 4096.
    static WORKSPACE: std::cell::Cell<Option<Box<Workspace>>> = const { std::cell::Cell::new(None) };
}

/// `out[k] = mask[k].weight()`.
#[inline(always)]
fn convert_mask<M: MaskElem>(mask: &[M], out: &mut [f32]) {
    for (w, m) in out.iter_mut().zip(mask) {
        *w = m.weight();
    }
}

simd_dispatch! {
    /// [`convert_mask`] compiled for `level`.
    fn mask_weights<M: MaskElem>(level: SimdLevel, mask: &[M], out: &mut [f32]) => convert_mask
}

/// A KL estimator in float32: `(kl, d kl / d lp, kl + d kl / d lp)` from `x = ref - lp` and
/// `e = exp(x)` (computed only when [`Kl32::NEEDS_EXP`]).
trait Kl32 {
    const ACTIVE: bool = true;
    const NEEDS_EXP: bool = false;
    fn eval<const FMA: bool>(x: f32, e: f32) -> (f32, f32, f32);
    /// [`Kl32::eval`] on sixteen lanes, the same operations (fused) in the same order.
    #[cfg(target_arch = "x86_64")]
    unsafe fn eval_v<V: V16>(x: V::F, e: V::F) -> (V::F, V::F, V::F);
}

/// `beta = 0` or no `ref_logp`: no KL term.
struct NoKl;
struct K1;
struct Abs;
struct K2;
struct K3;

impl Kl32 for NoKl {
    const ACTIVE: bool = false;
    #[inline(always)]
    fn eval<const FMA: bool>(_x: f32, _e: f32) -> (f32, f32, f32) {
        (0.0, 0.0, 0.0)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eval_v<V: V16>(_x: V::F, _e: V::F) -> (V::F, V::F, V::F) {
        let zero = V::splat(0.0);
        (zero, zero, zero)
    }
}

impl Kl32 for K1 {
    #[inline(always)]
    fn eval<const FMA: bool>(x: f32, _e: f32) -> (f32, f32, f32) {
        (-x, 1.0, 1.0 - x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eval_v<V: V16>(x: V::F, _e: V::F) -> (V::F, V::F, V::F) {
        let one = V::splat(1.0);
        (V::xor(x, V::splat(-0.0)), one, V::sub(one, x))
    }
}

impl Kl32 for Abs {
    #[inline(always)]
    fn eval<const FMA: bool>(x: f32, _e: f32) -> (f32, f32, f32) {
        let d = flag(x < 0.0) - flag(x > 0.0);
        let kl = x.abs();
        (kl, d, kl + d)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eval_v<V: V16>(x: V::F, _e: V::F) -> (V::F, V::F, V::F) {
        let (zero, one) = (V::splat(0.0), V::splat(1.0));
        let d = V::sub(V::keep(V::lt(x, zero), one), V::keep(V::gt(x, zero), one));
        let kl = V::abs(x);
        (kl, d, V::add(kl, d))
    }
}

impl Kl32 for K2 {
    #[inline(always)]
    fn eval<const FMA: bool>(x: f32, _e: f32) -> (f32, f32, f32) {
        let kl = 0.5 * x * x;
        (kl, -x, kl - x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eval_v<V: V16>(x: V::F, _e: V::F) -> (V::F, V::F, V::F) {
        let kl = V::mul(V::mul(V::splat(0.5), x), x);
        (kl, V::xor(x, V::splat(-0.0)), V::sub(kl, x))
    }
}

impl Kl32 for K3 {
    const NEEDS_EXP: bool = true;
    /// `kl + d = -x` exactly (the two alone reach `e^|x|` and cancel); `kl` cancellation-free.
    #[inline(always)]
    fn eval<const FMA: bool>(x: f32, e: f32) -> (f32, f32, f32) {
        (exp_minus_one_minus_x::<FMA>(x, e), 1.0 - e, -x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eval_v<V: V16>(x: V::F, e: V::F) -> (V::F, V::F, V::F) {
        (
            exp_minus_one_minus_x_v::<V>(x, e),
            V::sub(V::splat(1.0), e),
            V::xor(x, V::splat(-0.0)),
        )
    }
}

#[inline(always)]
fn flag(cond: bool) -> f32 {
    if cond {
        1.0
    } else {
        0.0
    }
}

/// Computes a chunk's tokens in float32: writes the gradient of every token not left to float64
/// (0 for those), adds the chunk's sums into `sums`, and returns whether any token was left to
/// float64. `FMA`: fuse multiply-adds (the AVX2 and AVX-512 builds; a portable build would call
/// a library function for each).
///
/// Non-finite inputs need no test of their own here: they make the log ratio, the KL gap or the
/// gradient non-finite, which sends the token to the fallback, and the fallback reports them.
/// (With neither `old_logp` nor a KL, `logp` reaches nothing; the caller checks it.)
/// `VANILLA`: verl's vanilla loss (the dual clip, `ppo_kl`'s log ratio; `p.delta` is unset).
#[inline(always)]
fn chunk<K: Kl32, const HAS_OLD: bool, const BINARY: bool, const FMA: bool, const VANILLA: bool>(
    p: &Params,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    scratch: &mut Scratch,
    sums: &mut Sums,
) -> bool {
    let m = grad.len();
    let (w, lp, a) = (&input.w[..m], &input.lp[..m], &input.a[..m]);
    let old = if HAS_OLD { &input.old[..m] } else { &[][..] };
    let reference = if K::ACTIVE {
        &input.reference[..m]
    } else {
        &[][..]
    };
    // Every buffer cut to `m` first, so the loop has no bounds checks (a check is a branch).
    let Scratch {
        wa: wa_out,
        coef: coef_out,
        w: w_out,
        kl: kl_out,
        w_low,
        w_high,
        w_lower,
        fallback,
    } = scratch;
    let (wa_out, coef_out, w_out) = (&mut wa_out[..m], &mut coef_out[..m], &mut w_out[..m]);
    let (kl_out, w_low, w_high) = (&mut kl_out[..m], &mut w_low[..m], &mut w_high[..m]);
    let (w_lower, fallback) = (&mut w_lower[..m], &mut fallback[..m]);
    let mut any_fallback = false;
    let (mut n_low, mut n_high, mut n_lower) = (0u32, 0u32, 0u32);
    // Bitwise `&` and `|` on the conditions below, not `&&` and `||`: short-circuits are
    // branches, and a branch per token keeps the loop from vectorising.
    for k in 0..m {
        let on = w[k] != 0.0;
        // Masked-out tokens compute with harmless values (their inputs may be NaN or inf).
        let lp_k = if on { lp[k] } else { 0.0 };
        let a_k = if on { a[k] } else { 0.0 };
        let (d, r) = if HAS_OLD {
            exp_f32_of_difference::<FMA>(lp_k, if on { old[k] } else { 0.0 })
        } else {
            (0.0, 1.0)
        };

        // TRL's clipped term, as `terms::Clipped` (torch's tie and clamp-gradient rules).
        let c1 = if r < p.delta { r } else { p.delta };
        let dc1 = flag(r < p.delta);
        let c2 = if r < p.lo {
            p.lo
        } else if r > p.hi {
            p.hi
        } else {
            r
        };
        let dc2 = flag((r > p.lo) & (r < p.hi));
        let (u, v) = (c1 * a_k, c2 * a_k);
        let wu = if u < v {
            1.0
        } else if u == v {
            0.5
        } else {
            0.0
        };
        let coef = if u < v { c1 } else { c2 };
        let d_ratio = -a_k * (wu * dc1 + (1.0 - wu) * dc2);
        let low = (c1 < p.lo) & (a_k < 0.0);
        let high = (c1 > p.hi) & (a_k > 0.0);
        // verl's dual clip (vanilla): `a < 0` and `r > c` give `-a * c`, no gradient through r.
        let lower = VANILLA & (a_k < 0.0) & (r > p.c);
        let coef = if lower { p.c } else { coef };
        let d_ratio = if lower { 0.0 } else { d_ratio };
        let mut to_f64 = (d.abs() > max_gap(VANILLA))
            | d.is_nan()
            | ((r - p.lo).abs() <= p.near_lo)
            | ((r - p.hi).abs() <= p.near_hi)
            | ((r - p.delta).abs() <= p.near_delta)
            | (VANILLA & ((r - p.c).abs() <= p.near_c));

        let mut d_logp = 0.0;
        let mut kl_sum = 0.0;
        if K::ACTIVE {
            let rf = if on { reference[k] } else { 0.0 };
            let (x, e) = if K::NEEDS_EXP {
                exp_f32_of_difference::<FMA>(rf, lp_k)
            } else {
                (rf - lp_k, 1.0)
            };
            let (kl, d_kl, kl_plus_d) = K::eval::<FMA>(x, e);
            // With bias correction the KL is multiplied by r (gradient through r too).
            let kr = p.bias * r + (1.0 - p.bias);
            d_logp = p.beta * (p.bias * r * kl_plus_d + (1.0 - p.bias) * d_kl);
            kl_sum = kl * kr;
            to_f64 |= K::NEEDS_EXP & ((x.abs() > MAX_GAP) | x.is_nan());
        }
        let g = p.scale * w[k] * (d_logp + d_ratio * r);
        to_f64 |= !(kl_sum.is_finite() & g.is_finite());
        let to_f64 = on & to_f64;
        any_fallback |= to_f64;
        let w_k = if to_f64 { 0.0 } else { w[k] };
        grad[k] = if to_f64 { 0.0 } else { g };
        wa_out[k] = w_k * a_k;
        coef_out[k] = coef;
        if K::ACTIVE {
            w_out[k] = w_k;
            // A fallback token's float32 KL may be infinite: 0 * inf would poison the sum.
            kl_out[k] = if to_f64 { 0.0 } else { kl_sum };
        }
        if BINARY {
            // Weights 0 or 1: the clip sums are counts, kept as integers (a vector sum the loop
            // vectoriser can do, instead of two stores and a float64 pass).
            n_low += (low & !to_f64) as u32;
            n_high += (high & !to_f64) as u32;
            n_lower += (lower & !to_f64) as u32;
        } else {
            w_low[k] = if low { w_k } else { 0.0 };
            w_high[k] = if high { w_k } else { 0.0 };
            w_lower[k] = if lower { w_k } else { 0.0 };
        }
        if VANILLA & HAS_OLD {
            // `ppo_kl`'s log ratio, as the float64 path takes it (0 for fallback tokens).
            let d64 = if on & !to_f64 {
                lp_k as f64 - old[k] as f64
            } else {
                0.0
            };
            sums.log_ratio[k % LANES] += w_k as f64 * d64;
        }
        fallback[k] = flag(to_f64);
    }
    accumulate::<K, BINARY, VANILLA>(scratch, m, sums);
    if BINARY {
        sums.low[0] += n_low as f64;
        sums.high[0] += n_high as f64;
        sums.lower[0] += n_lower as f64;
    }
    any_fallback
}

/// Adds a chunk's `m` tokens to the row's float64 lanes, every float32 value widened exactly.
#[inline(always)]
fn accumulate<K: Kl32, const BINARY: bool, const VANILLA: bool>(
    s: &Scratch,
    m: usize,
    sums: &mut Sums,
) {
    if VANILLA && !BINARY {
        for k in 0..m {
            sums.lower[k % LANES] += s.w_lower[k] as f64;
        }
    }
    // Local accumulators over whole blocks of `LANES` tokens: registers, not memory behind
    // `sums`, and one widening of each value.
    let (mut loss, mut kl, mut low, mut high) = (sums.loss, sums.kl, sums.low, sums.high);
    let whole = m / LANES * LANES;
    let blocks = s.wa[..whole]
        .chunks_exact(LANES)
        .zip(s.coef[..whole].chunks_exact(LANES))
        .zip(s.w[..whole].chunks_exact(LANES))
        .zip(s.kl[..whole].chunks_exact(LANES))
        .zip(s.w_low[..whole].chunks_exact(LANES))
        .zip(s.w_high[..whole].chunks_exact(LANES));
    for (((((wa, coef), w), kl_k), w_low), w_high) in blocks {
        for j in 0..LANES {
            loss[j] += wa[j] as f64 * coef[j] as f64;
            if K::ACTIVE {
                kl[j] += w[j] as f64 * kl_k[j] as f64;
            }
            if !BINARY {
                low[j] += w_low[j] as f64;
                high[j] += w_high[j] as f64;
            }
        }
    }
    for (j, k) in (whole..m).enumerate() {
        loss[j] += s.wa[k] as f64 * s.coef[k] as f64;
        if K::ACTIVE {
            kl[j] += s.w[k] as f64 * s.kl[k] as f64;
        }
        if !BINARY {
            low[j] += s.w_low[k] as f64;
            high[j] += s.w_high[k] as f64;
        }
    }
    (sums.loss, sums.kl, sums.low, sums.high) = (loss, kl, low, high);
}

/// How far ahead (in floats) [`chunk_v`] prefetches its inputs.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;

/// The float64 lane sums of [`chunk_v`] while it runs: registers, not memory.
#[cfg(target_arch = "x86_64")]
struct Acc<V: V16> {
    loss: V::D,
    kl: V::D,
    low: V::D,
    high: V::D,
    lower: V::D,
    log_ratio: V::D,
    n_low: u32,
    n_high: u32,
    n_lower: u32,
}

/// The per-row constants of the row-advantage form of the clipped term ([`chunk_v`]'s `ROW`).
#[derive(Clone, Copy, Default)]
struct RowClip {
    /// The row's advantage `a` (not 0).
    a: f32,
    /// The bound that can clip, in the sign of `a`: `1 + epsilon_high` for `a > 0`,
    /// `-(1 - epsilon_low)` for `a < 0`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bound: f32,
    /// Vanilla: the dual clip's `clip_ratio_c` for `a < 0`, `f32::INFINITY` for `a > 0` (no
    /// dual clip).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    c: f32,
}

/// Whether `x` lies in `band` (its ends included).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn near<V: V16>(x: V::F, band: (f32, f32)) -> V::M {
    V::and(V::ge(x, V::splat(band.0)), V::le(x, V::splat(band.1)))
}

/// One block of sixteen tokens of [`chunk_v`] (its comments say what each step is); returns the
/// tokens left to float64 as bits.
///
/// # Safety
/// The CPU has `V`'s features, and every pointer reads (writes) sixteen elements; `w` is read
/// only when `!BINARY`, `mask` when `BINARY`, `old`, `reference` and `a` only when `HAS_OLD`,
/// `K::ACTIVE` and `!ROW`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<
    V: V16,
    K: Kl32,
    const HAS_OLD: bool,
    const BINARY: bool,
    const ROW: bool,
    const VANILLA: bool,
>(
    p: &Params,
    row: RowClip,
    w_ptr: *const f32,
    mask_ptr: *const u8,
    lp_ptr: *const f32,
    old_ptr: *const f32,
    ref_ptr: *const f32,
    a_ptr: *const f32,
    g_ptr: *mut f32,
    acc: &mut Acc<V>,
) -> u32 {
    let (zero, one) = (V::splat(0.0), V::splat(1.0));
    let w = if BINARY {
        V::load_bytes(mask_ptr)
    } else {
        V::load(w_ptr)
    };
    let on = V::ne(w, zero);
    if V::bits(on) == 0 {
        // Padding only (right-padded rows end in whole blocks of it): nothing to sum.
        V::store(g_ptr, zero);
        return 0;
    }
    // Masked-out tokens compute with harmless values (their inputs may be NaN or inf).
    let lp = V::load_or_zero(on, lp_ptr);
    let old = if HAS_OLD {
        V::load_or_zero(on, old_ptr)
    } else {
        zero
    };
    let (d, r) = if HAS_OLD {
        exp_of_difference_v::<V>(lp, old)
    } else {
        (zero, one)
    };
    // Log ratios beyond +-MAX_GAP (vanilla: reaching its clamp at +-20) or NaN: float64 (the
    // exponential above has no clamp).
    let mut to_f64 = V::not_le(V::abs(d), V::splat(max_gap(VANILLA)));
    let (coef, d_ratio, low, high, lower, a);
    if ROW {
        // One advantage for the row, of known sign, and no `delta`: TRL's clipped term is
        // `a * min(r, 1 + eh)` for `a > 0` and `a * max(r, 1 - el)` for `a < 0`, with no gradient
        // through the clipped side. In the sign of `a` (`s x` below), both are
        // `a * s min(s r, bound)`, clipped where `s r > bound`; ties between the two sides of the
        // min happen only inside the bounds, where both sides are `r` (tokens within NEAR_BOUND
        // of either bound go to float64, as below, so its decisions stand).
        a = V::splat(row.a);
        let sr = V::xor(r, a);
        let clipped = V::gt(sr, V::splat(row.bound));
        let one_bound = V::xor(V::min(sr, V::splat(row.bound)), a);
        (low, high) = (clipped, clipped);
        to_f64 = V::or(
            to_f64,
            V::or(near::<V>(r, p.band_lo), near::<V>(r, p.band_hi)),
        );
        if VANILLA {
            // verl's dual clip: for `a < 0` (`row.c` is then `clip_ratio_c`, else infinite)
            // `r > c` gives `-a * c`; below `c`, `max(r, lo) <= c` already (`lo < c`).
            let c = V::splat(row.c);
            lower = V::gt(r, c);
            coef = V::min(one_bound, c);
            d_ratio = V::select(V::or(clipped, lower), zero, V::splat(-row.a));
            to_f64 = V::or(to_f64, near::<V>(r, p.band_c));
        } else {
            lower = clipped;
            coef = one_bound;
            d_ratio = V::select(clipped, zero, V::splat(-row.a));
        }
    } else {
        // TRL's clipped term, as `terms::Clipped` (torch's tie and clamp-gradient rules).
        a = V::load_or_zero(on, a_ptr);
        let delta = V::splat(p.delta);
        let c1 = V::min(r, delta);
        let dc1 = V::keep(V::lt(r, delta), one);
        let c2 = V::min(V::max(r, V::splat(p.lo)), V::splat(p.hi));
        let dc2 = V::keep(
            V::and(V::gt(r, V::splat(p.lo)), V::lt(r, V::splat(p.hi))),
            one,
        );
        let (u, v) = (V::mul(c1, a), V::mul(c2, a));
        let u_lt_v = V::lt(u, v);
        let wu = V::select(u_lt_v, one, V::keep(V::eq(u, v), V::splat(0.5)));
        let trl_coef = V::select(u_lt_v, c1, c2);
        let mix = V::add(V::mul(wu, dc1), V::mul(V::sub(one, wu), dc2));
        let trl_d_ratio = V::mul(V::xor(a, V::splat(-0.0)), mix);
        low = V::and(V::lt(c1, V::splat(p.lo)), V::lt(a, zero));
        high = V::and(V::gt(c1, V::splat(p.hi)), V::gt(a, zero));
        let near_any = V::or(near::<V>(r, p.band_lo), near::<V>(r, p.band_hi));
        if VANILLA {
            // verl's dual clip (`p.delta` is unset, so the above is its clipped term):
            // `a < 0` and `r > c` give `-a * c`, with no gradient through `r`.
            let c = V::splat(p.c);
            lower = V::and(V::gt(r, c), V::lt(a, zero));
            coef = V::select(lower, c, trl_coef);
            d_ratio = V::select(lower, zero, trl_d_ratio);
            to_f64 = V::or(to_f64, V::or(near_any, near::<V>(r, p.band_c)));
        } else {
            lower = low;
            coef = trl_coef;
            d_ratio = trl_d_ratio;
            to_f64 = V::or(to_f64, V::or(near_any, near::<V>(r, p.band_delta)));
        }
    }

    let (mut d_logp, mut kl_sum) = (zero, zero);
    if K::ACTIVE {
        let rf = V::load_or_zero(on, ref_ptr);
        let (x, e) = if K::NEEDS_EXP {
            exp_of_difference_v::<V>(rf, lp)
        } else {
            (V::sub(rf, lp), one)
        };
        let (kl, d_kl, kl_plus_d) = K::eval_v::<V>(x, e);
        // With bias correction the KL is multiplied by r (gradient through r too).
        let bias = V::ne(V::splat(p.bias), zero);
        d_logp = V::mul(
            V::splat(p.beta),
            V::select(bias, V::mul(r, kl_plus_d), d_kl),
        );
        kl_sum = V::mul(kl, V::select(bias, r, one));
        if K::NEEDS_EXP {
            to_f64 = V::or(to_f64, V::not_le(V::abs(x), V::splat(MAX_GAP)));
        }
    }
    let g = V::mul(V::mul(V::splat(p.scale), w), V::fma(d_ratio, r, d_logp));
    // Overflow in the gradient or the KL (and NaN from non-finite inputs): float64.
    to_f64 = V::or(to_f64, V::unordered(V::sub(g, g), V::sub(kl_sum, kl_sum)));
    let fallback = V::and(on, to_f64);
    let ok = V::and_not(on, to_f64);
    V::store(g_ptr, V::keep(ok, g));
    // A fallback token's float32 values may be infinite or NaN: 0 * inf would poison the sums.
    let coef = V::keep(ok, coef);
    acc.loss = if ROW {
        V::dfma(acc.loss, w, coef)
    } else {
        V::dfma(acc.loss, V::mul(w, a), coef)
    };
    if K::ACTIVE {
        acc.kl = V::dfma(acc.kl, w, V::keep(ok, kl_sum));
    }
    if BINARY {
        // Weights 0 or 1: the clip sums are counts.
        acc.n_low += V::bits(V::and(low, ok)).count_ones();
        if !ROW {
            acc.n_high += V::bits(V::and(high, ok)).count_ones();
        }
        if VANILLA {
            acc.n_lower += V::bits(V::and(lower, ok)).count_ones();
        }
    } else {
        acc.low = V::dadd(acc.low, V::keep(V::and(low, ok), w));
        if !ROW {
            acc.high = V::dadd(acc.high, V::keep(V::and(high, ok), w));
        }
        if VANILLA {
            acc.lower = V::dadd(acc.lower, V::keep(V::and(lower, ok), w));
        }
    }
    if VANILLA && HAS_OLD {
        // `ppo_kl`'s log ratio in float64: `d` plus the remainder of its rounding (the TwoSum
        // that `exp_of_difference_v` also takes, so the same operations, shared), each product
        // with `w` exact.
        let nb_part = V::sub(d, lp);
        let tail = V::sub(V::sub(lp, V::sub(d, nb_part)), V::add(old, nb_part));
        acc.log_ratio = V::dfma(acc.log_ratio, w, V::keep(ok, d));
        acc.log_ratio = V::dfma(acc.log_ratio, w, V::keep(ok, tail));
    }
    V::bits(fallback)
}

/// A chunk's tokens with intrinsics, sixteen per [`block`], on `V`'s level: writes the gradient
/// of every token not left to float64 (0 for those), adds the chunk's sums into `sums` (lane `k %
/// 16` takes token `k`, as [`chunk`]), marks the tokens left to float64 in `fallback` (bit `k %
/// 16` of word `k / 16`) and returns whether there are any. `ROW`: the row's advantage is `row.a`
/// (not 0) and `delta` is unset, so only one clip bound matters (the clip count then goes to
/// `sums.low`, and the loss lanes hold `w * coef` without `a`).
///
/// # Safety
/// The CPU has `V`'s features; `input` holds at least `grad.len()` tokens in every slice the
/// flags read (`old` when `HAS_OLD`, `reference` when `K::ACTIVE`, `a` unless `ROW`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn chunk_v<
    V: V16,
    K: Kl32,
    const HAS_OLD: bool,
    const BINARY: bool,
    const ROW: bool,
    const VANILLA: bool,
>(
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    let m = grad.len();
    assert!(m <= CHUNK && input.lp.len() >= m);
    assert!(if BINARY {
        input.mask.len() >= m
    } else {
        input.w.len() >= m
    });
    assert!(!HAS_OLD || input.old.len() >= m);
    assert!(!K::ACTIVE || input.reference.len() >= m);
    assert!(ROW || input.a.len() >= m);
    let mut acc = Acc::<V> {
        loss: V::dload(&sums.loss),
        kl: V::dload(&sums.kl),
        low: V::dload(&sums.low),
        high: V::dload(&sums.high),
        lower: V::dload(&sums.lower),
        log_ratio: V::dload(&sums.log_ratio),
        n_low: 0,
        n_high: 0,
        n_lower: 0,
    };
    let (w, lp, g) = (input.w.as_ptr(), input.lp.as_ptr(), grad.as_mut_ptr());
    let mask = input.mask.as_ptr();
    let (old, reference, a) = (
        input.old.as_ptr(),
        input.reference.as_ptr(),
        input.a.as_ptr(),
    );
    let mut any = 0;
    let whole = m / 16 * 16;
    for k in (0..whole).step_by(16) {
        // The streams from memory, PREFETCH floats ahead (a block is one cache line).
        prefetch(lp.wrapping_add(k + PREFETCH));
        if HAS_OLD {
            prefetch(old.wrapping_add(k + PREFETCH));
        }
        if K::ACTIVE {
            prefetch(reference.wrapping_add(k + PREFETCH));
        }
        let bits = block::<V, K, HAS_OLD, BINARY, ROW, VANILLA>(
            p,
            row,
            w.wrapping_add(k),
            mask.wrapping_add(k),
            lp.add(k),
            old.wrapping_add(k),
            reference.wrapping_add(k),
            a.wrapping_add(k),
            g.add(k),
            &mut acc,
        );
        fallback[k / 16] = bits as u16;
        any |= bits;
    }
    if whole < m {
        // The last few tokens, padded with weight-0 tokens to a block.
        let rest = m - whole;
        let mut pad = [[0.0f32; 16]; 6];
        let [pw, plp, pold, pref, pa, pg] = &mut pad;
        let mut pmask = [0u8; 16];
        if BINARY {
            pmask[..rest].copy_from_slice(&input.mask[whole..m]);
        } else {
            pw[..rest].copy_from_slice(&input.w[whole..m]);
        }
        plp[..rest].copy_from_slice(&input.lp[whole..m]);
        if HAS_OLD {
            pold[..rest].copy_from_slice(&input.old[whole..m]);
        }
        if K::ACTIVE {
            pref[..rest].copy_from_slice(&input.reference[whole..m]);
        }
        if !ROW {
            pa[..rest].copy_from_slice(&input.a[whole..m]);
        }
        let bits = block::<V, K, HAS_OLD, BINARY, ROW, VANILLA>(
            p,
            row,
            pw.as_ptr(),
            pmask.as_ptr(),
            plp.as_ptr(),
            pold.as_ptr(),
            pref.as_ptr(),
            pa.as_ptr(),
            pg.as_mut_ptr(),
            &mut acc,
        );
        grad[whole..m].copy_from_slice(&pg[..rest]);
        fallback[whole / 16] = bits as u16;
        any |= bits;
    }
    sums.loss = V::dlanes(acc.loss);
    sums.kl = V::dlanes(acc.kl);
    sums.low = V::dlanes(acc.low);
    sums.high = V::dlanes(acc.high);
    sums.low[0] += acc.n_low as f64;
    sums.high[0] += acc.n_high as f64;
    if VANILLA {
        sums.lower = V::dlanes(acc.lower);
        sums.log_ratio = V::dlanes(acc.log_ratio);
        sums.lower[0] += acc.n_lower as f64;
    }
    any != 0
}

/// [`chunk_v`] compiled for AVX-512F (16 float32 lanes in one register).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn chunk_avx512<
    K: Kl32,
    const HAS_OLD: bool,
    const BINARY: bool,
    const ROW: bool,
    const VANILLA: bool,
>(
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    chunk_v::<Avx512, K, HAS_OLD, BINARY, ROW, VANILLA>(p, row, input, grad, fallback, sums)
}

/// [`chunk_v`] compiled for AVX2 + FMA (16 float32 lanes in two registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn chunk_avx2<
    K: Kl32,
    const HAS_OLD: bool,
    const BINARY: bool,
    const ROW: bool,
    const VANILLA: bool,
>(
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    chunk_v::<Avx2, K, HAS_OLD, BINARY, ROW, VANILLA>(p, row, input, grad, fallback, sums)
}

/// A chunk at the level `level` (never above the CPU's: see
/// [`crate::numeric::simd::simd_level`]): [`chunk_v`] with AVX-512 or AVX2, else the portable
/// build of [`chunk`] (no fused multiply-adds, `FMA = false`; it ignores `ROW`, which only picks
/// a faster form of the same term).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn chunk_at<
    K: Kl32,
    const HAS_OLD: bool,
    const BINARY: bool,
    const ROW: bool,
    const VANILLA: bool,
>(
    level: SimdLevel,
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    scratch: &mut Scratch,
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: `level` never exceeds the CPU's level, so the CPU has these features;
        // `run_f32_with` passes inputs as long as the chunk.
        SimdLevel::Avx512 => {
            return unsafe {
                chunk_avx512::<K, HAS_OLD, BINARY, ROW, VANILLA>(
                    p, row, input, grad, fallback, sums,
                )
            }
        }
        // SAFETY: as above.
        SimdLevel::Avx2 => {
            return unsafe {
                chunk_avx2::<K, HAS_OLD, BINARY, ROW, VANILLA>(p, row, input, grad, fallback, sums)
            }
        }
        SimdLevel::Portable => {}
    }
    let _ = (level, row);
    let any = chunk::<K, HAS_OLD, BINARY, false, VANILLA>(p, input, grad, scratch, sums);
    for (word, flags) in fallback.iter_mut().zip(scratch.fallback.chunks(16)) {
        *word = flags
            .iter()
            .enumerate()
            .fold(0, |bits, (j, f)| bits | (u16::from(*f != 0.0) << j));
    }
    any
}

impl<T: FloatElem, M: MaskElem> RowKernel<'_, '_, T, M> {
    /// Row `i` on the float32 path (the caller checked [`handles`]).
    pub(super) fn run_f32(&self, i: usize, grad: &mut [f32]) -> Result<RowSums> {
        let has_kl = self.options.beta != 0.0 && self.inputs.ref_logp.is_some();
        let has_old = self.inputs.old_logp.is_some();
        let vanilla = self.options.loss_type == LossType::Vanilla;
        // The run for a KL estimator, by whether there is `old_logp` and the loss is vanilla.
        macro_rules! pick {
            ($k:ty) => {
                match (has_old, vanilla) {
                    (true, false) => Self::run_f32_with::<$k, true, false>,
                    (false, false) => Self::run_f32_with::<$k, false, false>,
                    (true, true) => Self::run_f32_with::<$k, true, true>,
                    (false, true) => Self::run_f32_with::<$k, false, true>,
                }
            };
        }
        let run = match has_kl.then_some(self.options.kl_estimator) {
            None => pick!(NoKl),
            Some(KlEstimator::K1) => pick!(K1),
            Some(KlEstimator::Abs) => pick!(Abs),
            Some(KlEstimator::K2) => pick!(K2),
            Some(_) => pick!(K3),
        };
        let mut workspace = WORKSPACE.take().unwrap_or_else(Workspace::new);
        let result = run(self, i, grad, &mut workspace);
        WORKSPACE.set(Some(workspace));
        result
    }

    /// `VANILLA`: verl's vanilla loss (else TRL's clipped one).
    fn run_f32_with<K: Kl32, const HAS_OLD: bool, const VANILLA: bool>(
        &self,
        i: usize,
        grad: &mut [f32],
        workspace: &mut Workspace,
    ) -> Result<RowSums> {
        let opt = self.options;
        let s = self.slices(i);
        let len = s.lp.len();
        let n = match self.row_tokens {
            Some(counts) => counts[i],
            None => weight_sum_dispatched(s.mask, i)?,
        };
        let rho = (self.row_weight)(n);
        let scale = rho * opt.grad_scale;
        if !(scale == 0.0 || (1e-30..=1e30).contains(&scale.abs())) {
            // A scale float32 cannot hold closely: the whole row in float64.
            return self.run_f64(i, grad);
        }
        let bounds = Float32Bounds::of(opt);
        let (lo, hi, delta) = (bounds.lo64, bounds.hi64, bounds.delta64);
        let p = Params {
            lo: bounds.lo,
            hi: bounds.hi,
            delta: bounds.delta,
            c: bounds.c,
            near_lo: bounds.near_lo,
            near_hi: bounds.near_hi,
            near_delta: bounds.near_delta,
            near_c: bounds.near_c,
            band_lo: (0.0, 0.0),
            band_hi: (0.0, 0.0),
            band_delta: (0.0, 0.0),
            band_c: (0.0, 0.0),
            beta: opt.beta as f32,
            bias: flag(opt.kl_bias_correction),
            scale: scale as f32,
        };
        let band = |bound: f32, near: f32| (bound - near, bound + near);
        let p = Params {
            band_lo: band(p.lo, p.near_lo),
            band_hi: band(p.hi, p.near_hi),
            band_delta: band(p.delta, p.near_delta),
            band_c: band(p.c, p.near_c),
            ..p
        };
        let fallback_term = (
            terms::Clipped { lo, hi, delta },
            terms::Vanilla {
                lo,
                hi,
                clip_ratio_c: opt.clip_ratio_c,
            },
        );
        let level = crate::numeric::simd::simd_level();

        let mut sums = Sums {
            loss: [0.0; LANES],
            kl: [0.0; LANES],
            low: [0.0; LANES],
            high: [0.0; LANES],
            lower: [0.0; LANES],
            log_ratio: [0.0; LANES],
            fallback: [0.0; 2],
            fallback_metrics: [0.0; 3],
        };
        let Workspace {
            scratch,
            inputs: bufs,
            fallback: fallback_bits,
        } = workspace;
        let row_advantage = match self.inputs.advantages {
            AdvantageView::PerRow(adv) => Some(adv[i]),
            AdvantageView::PerToken(_) => None,
        };
        if let Some(a) = row_advantage {
            bufs[4].fill(a);
        }
        // One advantage of known sign and no `delta`: the clipped term's faster form.
        let row_clip = match row_advantage {
            Some(a) if a != 0.0 && (VANILLA || opt.delta.is_none()) => Some(RowClip {
                a,
                bound: if a > 0.0 { p.hi } else { -p.lo },
                c: if VANILLA && a < 0.0 {
                    p.c
                } else {
                    f32::INFINITY
                },
            }),
            _ => None,
        };
        let row = row_clip.unwrap_or_default();
        let mut grad_finite = true;
        for start in (0..len).step_by(CHUNK) {
            let end = (start + CHUNK).min(len);
            let [w_buf, lp_buf, old_buf, ref_buf, a_buf] = &mut *bufs;
            let mask_bytes =
                M::as_bytes(&s.mask[start..end]).filter(|_| level > SimdLevel::Portable);
            if mask_bytes.is_none() || (!HAS_OLD && !K::ACTIVE) {
                mask_weights(level, &s.mask[start..end], &mut w_buf[..end - start]);
            }
            let lp = T::as_f32(&s.lp[start..end], lp_buf);
            let old = match s.old {
                Some(old) if HAS_OLD => T::as_f32(&old[start..end], old_buf),
                _ => &[][..],
            };
            let reference = match s.reference {
                Some(reference) if K::ACTIVE => T::as_f32(&reference[start..end], ref_buf),
                _ => &[][..],
            };
            let a: &[f32] = match self.inputs.advantages {
                AdvantageView::PerRow(_) => &a_buf[..],
                AdvantageView::PerToken(adv) => &adv[i * len + start..i * len + end],
            };
            let input = ChunkIn {
                w: &w_buf[..],
                mask: mask_bytes.unwrap_or_default(),
                lp,
                old,
                reference,
                a,
            };
            if !HAS_OLD && !K::ACTIVE {
                // `logp` reaches no value here, but must be finite all the same.
                let finite = lp
                    .iter()
                    .zip(&w_buf[..])
                    .fold(true, |ok, (lp, w)| ok & ((*w == 0.0) | lp.is_finite()));
                if !finite {
                    return Err(self.locate_non_finite(i, start..end));
                }
            }
            let g = &mut grad[start..end];
            let fb = &mut *fallback_bits;
            // Bool masks are read as bytes at the SIMD levels; the portable chunk reads `w` and
            // counts (`BINARY`) where the weights are 0 or 1.
            let binary = mask_bytes.is_some() || (level == SimdLevel::Portable && M::BINARY);
            let any_fallback = match (binary, row_clip.is_some()) {
                (true, true) => chunk_at::<K, HAS_OLD, true, true, VANILLA>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (true, false) => chunk_at::<K, HAS_OLD, true, false, VANILLA>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (false, true) => chunk_at::<K, HAS_OLD, false, true, VANILLA>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (false, false) => chunk_at::<K, HAS_OLD, false, false, VANILLA>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
            };
            if any_fallback {
                for k in 0..end - start {
                    if (fallback_bits[k / 16] >> (k % 16)) & 1 != 0 {
                        if !self.inputs_finite::<K>(i, start + k) {
                            return Err(self.locate_non_finite(i, start..end));
                        }
                        let (clipped, vanilla) = &fallback_term;
                        let g = self.token_f64::<K, VANILLA>(
                            clipped,
                            vanilla,
                            scale,
                            i,
                            start + k,
                            &mut sums,
                        );
                        grad_finite &= g.is_finite();
                        grad[start + k] = g;
                    }
                }
            }
        }
        if !grad_finite {
            // As the float64 path: reported after the row's input checks.
            let t = grad.iter().position(|g| !g.is_finite()).unwrap_or(0);
            return Err(Error::Overflow {
                arg: "grad",
                detail: format!(
                    "the gradient at ({i}, {t}) is {}; check the log-probability gaps",
                    grad[t]
                ),
            });
        }

        if row_clip.is_some_and(|row| row.a > 0.0) {
            // The row form counts the one bound that clips in `sums.low`.
            std::mem::swap(&mut sums.low, &mut sums.high);
        }
        let [loss, kl] = sums.fallback;
        let fm = sums.fallback_metrics;
        // The policy part was summed as `a * coef` (as `coef` in the row form, times `a` here);
        // the KL part is `beta * kl`.
        let policy = match row_clip {
            Some(row) => -(row.a as f64) * total(&sums.loss),
            None => -total(&sums.loss),
        };
        let kl_total = total(&sums.kl);
        let mut row = RowSums {
            tokens: n,
            loss: policy + opt.beta * kl_total + loss,
            kl: kl_total + kl,
            metrics: {
                let mut m = [0.0; 3];
                let (low, high) = (total(&sums.low), total(&sums.high));
                if VANILLA {
                    // Away from the bounds `pg_clipfrac` (L2 > L1) is TRL's low-or-high clip.
                    m[Vanilla::CLIPFRAC] = low + high + fm[Vanilla::CLIPFRAC];
                    m[Vanilla::CLIPFRAC_LOWER] = total(&sums.lower) + fm[Vanilla::CLIPFRAC_LOWER];
                    m[Vanilla::NEG_LOG_RATIO] =
                        -total(&sums.log_ratio) + fm[Vanilla::NEG_LOG_RATIO];
                } else {
                    let low = low + fm[Clipped::LOW];
                    let high = high + fm[Clipped::HIGH];
                    m[Clipped::LOW] = low;
                    m[Clipped::HIGH] = high;
                    m[Clipped::REGION] = low + high;
                }
                m
            },
            ..RowSums::default()
        };
        row.loss_weighted = rho * row.loss;
        self.add_per_row_metrics(i, 1.0, &mut row);
        Ok(row)
    }

    /// Whether token `(i, t)`'s inputs that the loss reads are finite.
    #[cold]
    fn inputs_finite<K: Kl32>(&self, i: usize, t: usize) -> bool {
        let s = self.slices(i);
        let a = match self.inputs.advantages {
            AdvantageView::PerRow(adv) => adv[i],
            AdvantageView::PerToken(adv) => adv[i * self.inputs.len + t],
        };
        s.lp[t].to_f64().is_finite()
            && a.is_finite()
            && s.old.is_none_or(|old| old[t].to_f64().is_finite())
            && (!K::ACTIVE || s.reference.is_none_or(|r| r[t].to_f64().is_finite()))
    }

    /// Token `(i, t)` by the float64 path's formulas (`vanilla`'s if `VANILLA`, else
    /// `clipped`'s): adds its weighted loss, KL and metric values to `sums.fallback` and
    /// `sums.fallback_metrics` and returns its gradient (perhaps not finite: the caller reports
    /// it).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn token_f64<K: Kl32, const VANILLA: bool>(
        &self,
        clipped: &terms::Clipped,
        vanilla: &terms::Vanilla,
        scale: f64,
        i: usize,
        t: usize,
        sums: &mut Sums,
    ) -> f32 {
        let opt = self.options;
        let s = self.slices(i);
        let w = s.mask[t].weight() as f64;
        let lp = s.lp[t].to_f64();
        let d = s.old.map_or(0.0, |old| lp - old[t].to_f64());
        // verl clamps the log ratio to +-20 (no gradient through the clamp there).
        let (d, slope) = if VANILLA && s.old.is_some() {
            (
                terms::clamp(d, -20.0, 20.0),
                terms::clamp_slope(d, -20.0, 20.0),
            )
        } else {
            (d, 1.0)
        };
        let r = exp::exp(d);
        let a = match self.inputs.advantages {
            AdvantageView::PerRow(adv) => adv[i] as f64,
            AdvantageView::PerToken(adv) => adv[i * self.inputs.len + t] as f64,
        };
        let term = if VANILLA {
            vanilla.term(r, a, lp, d)
        } else {
            clipped.term(r, a, lp, d)
        };
        let (mut loss, mut d_logp, mut kl_sum) = (term.loss, term.d_logp, 0.0);
        if K::ACTIVE {
            if let Some(reference) = s.reference {
                let x = reference[t].to_f64() - lp;
                let e = terms::kl_exp_range(opt.kl_estimator)
                    .map_or(1.0, |(lo, hi)| exp::exp(terms::clamp(x, lo, hi)));
                let (kl, d_kl, kl_plus_d) = terms::kl(opt.kl_estimator, x, e);
                let bias = terms::flag(opt.kl_bias_correction);
                let kr = bias * r + (1.0 - bias);
                loss += opt.beta * kl * kr;
                d_logp += if VANILLA {
                    // The float64 path's form with the clamp's slope.
                    let corrected = r * (slope * kl_plus_d + (1.0 - slope) * d_kl);
                    opt.beta * (bias * corrected + (1.0 - bias) * d_kl)
                } else {
                    opt.beta * (bias * r * kl_plus_d + (1.0 - bias) * d_kl)
                };
                kl_sum = kl * kr;
            }
        }
        sums.fallback[0] += w * loss;
        sums.fallback[1] += w * kl_sum;
        for (sum, value) in sums.fallback_metrics.iter_mut().zip(term.metrics) {
            *sum += w * value;
        }
        if VANILLA {
            (scale * w * (d_logp + term.d_ratio * r * slope)) as f32
        } else {
            (scale * w * (d_logp + term.d_ratio * r)) as f32
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Parameters of the vanilla loss with `clip_ratio_c = c` (as `run_f32_with` builds them).
    fn vanilla_params(c: f32) -> Params {
        let (lo, hi) = (0.8f32, 1.28f32);
        let band = |bound: f32| (bound - NEAR_BOUND * bound, bound + NEAR_BOUND * bound);
        Params {
            lo,
            hi,
            delta: f32::MAX,
            c,
            near_lo: NEAR_BOUND * lo,
            near_hi: NEAR_BOUND * hi,
            near_delta: NEAR_BOUND * f32::MAX,
            near_c: NEAR_BOUND * c,
            band_lo: band(lo),
            band_hi: band(hi),
            band_delta: band(f32::MAX),
            band_c: band(c),
            beta: 0.0,
            bias: 1.0,
            scale: 1.0,
        }
    }

    fn empty_sums() -> Sums {
        Sums {
            loss: [0.0; LANES],
            kl: [0.0; LANES],
            low: [0.0; LANES],
            high: [0.0; LANES],
            lower: [0.0; LANES],
            log_ratio: [0.0; LANES],
            fallback: [0.0; 2],
            fallback_metrics: [0.0; 3],
        }
    }

    /// The portable build of the scalar chunk (never run by `policy_loss` on x86-64, where the
    /// portable level takes the float64 path) against the AVX2 kernel on vanilla's dual clip:
    /// the same fallback tokens and clip counts, values within float32 roundings.
    #[test]
    fn portable_chunk_agrees_with_the_avx2_kernel_on_vanilla() {
        if crate::numeric::simd::cpu_simd_level() < SimdLevel::Avx2 {
            return;
        }
        let m = 250;
        // A small deterministic generator: log ratios over [-1.5, 1.5] (ratios 0.22-4.5, so
        // both PPO bounds and the dual clip at 2 are crossed), a few at verl's clamp.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let w: Vec<f32> = (0..m).map(|k| if k % 9 == 4 { 0.0 } else { 1.0 }).collect();
        let lp: Vec<f32> = (0..m).map(|_| (-3.0 * next()) as f32).collect();
        let old: Vec<f32> = lp
            .iter()
            .enumerate()
            .map(|(k, lp)| {
                let gap = if k % 50 == 7 {
                    25.0
                } else {
                    3.0 * next() - 1.5
                };
                lp - gap as f32
            })
            .collect();
        let a: Vec<f32> = (0..m)
            .map(|k| if k % 3 == 0 { 0.7 } else { -1.3 })
            .collect();
        let mask: Vec<u8> = w.iter().map(|w| *w as u8).collect();
        let input = ChunkIn {
            w: &w,
            mask: &mask,
            lp: &lp,
            old: &old,
            reference: &[],
            a: &a,
        };
        let p = vanilla_params(2.0);
        let (mut g_portable, mut g_avx2) = (vec![0.0f32; m], vec![0.0f32; m]);
        let mut workspace = Workspace::new();
        let (mut s_portable, mut s_avx2) = (empty_sums(), empty_sums());
        let (mut bits_portable, mut bits_avx2) = ([0u16; CHUNK / 16], [0u16; CHUNK / 16]);
        let any_portable = chunk_at::<NoKl, true, true, false, true>(
            SimdLevel::Portable,
            &p,
            RowClip::default(),
            &input,
            &mut g_portable,
            &mut workspace.scratch,
            &mut bits_portable,
            &mut s_portable,
        );
        let any_avx2 = chunk_at::<NoKl, true, true, false, true>(
            SimdLevel::Avx2,
            &p,
            RowClip::default(),
            &input,
            &mut g_avx2,
            &mut workspace.scratch,
            &mut bits_avx2,
            &mut s_avx2,
        );
        assert!(any_portable && any_avx2);
        assert_eq!(bits_portable, bits_avx2);
        for (x, y) in g_portable.iter().zip(&g_avx2) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} {y}");
        }
        for (name, x, y) in [
            ("low", &s_portable.low, &s_avx2.low),
            ("high", &s_portable.high, &s_avx2.high),
            ("lower", &s_portable.lower, &s_avx2.lower),
        ] {
            assert_eq!(total(x), total(y), "{name}");
        }
        assert!(total(&s_avx2.lower) > 0.0 && total(&s_avx2.low) + total(&s_avx2.high) > 0.0);
        let (x, y) = (total(&s_portable.loss), total(&s_avx2.loss));
        assert!((x - y).abs() <= 1e-6 * x.abs(), "{x} {y}");
        let (x, y) = (total(&s_portable.log_ratio), total(&s_avx2.log_ratio));
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{x} {y}");
        // The log ratios summed exactly: the float64 sum of the kept tokens.
        let bit = |k: usize| (bits_avx2[k / 16] >> (k % 16)) & 1 != 0;
        let exact: f64 = (0..m)
            .filter(|&k| w[k] != 0.0 && !bit(k))
            .map(|k| lp[k] as f64 - old[k] as f64)
            .sum();
        assert!(
            (y - exact).abs() <= 1e-12 * exact.abs().max(1.0),
            "{y} {exact}"
        );
    }
}

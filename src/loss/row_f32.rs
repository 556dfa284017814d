//! The float32 path of one row, for f32, bf16 and f16 inputs of the PPO-clipped losses (TRL's
//! grpo, bnpo, dr_grpo, dapo and luspo) at token level with the k1, abs, k2 or k3 KL.
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
//! `delta`), a log ratio or KL gap beyond +-80 (float32's `exp` overflows at 88.7), or a
//! non-finite log ratio, KL gap, KL or gradient (which is also how non-finite inputs are found).
//! The band is four times the float32 ratio's error (below 2.5e-7: `exp_f32_of_difference`
//! takes `lp - old` exactly), so every clip decision and clip metric is the float64 path's.
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

use super::options::{ImportanceSamplingLevel, KlEstimator, LossOptions};
use super::row::{weight_sum_dispatched, RowKernel, RowSums};
use super::terms::{self, Clipped, Objective};
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

/// Whether this path computes the loss `options` describe (else the float64 path does).
pub(super) fn handles(options: &LossOptions) -> bool {
    // A scale or bound float32 cannot hold closely is left to float64.
    let representable = |v: f64| v == 0.0 || (1e-30..=1e30).contains(&v.abs());
    // Bounds that float32 rounds together (or apart) differently from float64 would tie (or
    // not) differently in the clipped term's min.
    let (lo, hi) = (1.0 - options.epsilon_low, 1.0 + options.epsilon_high());
    let delta = options.delta.unwrap_or(f64::INFINITY);
    let same_ties = |x: f64, y: f64| (x == y) == ((x as f32) == (y as f32));
    let bounds_keep_ties = same_ties(lo, hi) && same_ties(delta, lo) && same_ties(delta, hi);
    bounds_keep_ties
        && options.loss_type.is_trl_clipped()
        && options.importance_sampling_level == ImportanceSamplingLevel::Token
        && options.kl_estimator != KlEstimator::LowVarKl
        && options.delta.is_none_or(representable)
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
    /// Loss, kl, low, high of the tokens computed in float64 (the loss complete, not as the
    /// lanes hold it), in token order.
    fallback: [f64; 4],
}

fn total(lanes: &[f64; LANES]) -> f64 {
    lanes.iter().sum()
}

/// The row-independent float32 parameters.
#[derive(Clone, Copy)]
struct Params {
    lo: f32,
    hi: f32,
    /// `f32::MAX` when unset: no finite float32 ratio reaches it.
    delta: f32,
    /// `NEAR_BOUND * |bound|` for `lo`, `hi` and `delta`.
    near_lo: f32,
    near_hi: f32,
    near_delta: f32,
    /// `[bound - near, bound + near]` for `lo`, `hi` and `delta` (the same tokens, give or take
    /// a rounding of the band's ends).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_lo: (f32, f32),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_hi: (f32, f32),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    band_delta: (f32, f32),
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
    /// `w` where the token counts as clipped low / high (exact: flag times weight).
    w_low: [f32; CHUNK],
    w_high: [f32; CHUNK],
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
#[inline(always)]
fn chunk<K: Kl32, const HAS_OLD: bool, const BINARY: bool, const FMA: bool>(
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
        fallback,
    } = scratch;
    let (wa_out, coef_out, w_out) = (&mut wa_out[..m], &mut coef_out[..m], &mut w_out[..m]);
    let (kl_out, w_low, w_high) = (&mut kl_out[..m], &mut w_low[..m], &mut w_high[..m]);
    let fallback = &mut fallback[..m];
    let mut any_fallback = false;
    let (mut n_low, mut n_high) = (0u32, 0u32);
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
        let mut to_f64 = (d.abs() > MAX_GAP)
            | d.is_nan()
            | ((r - p.lo).abs() <= p.near_lo)
            | ((r - p.hi).abs() <= p.near_hi)
            | ((r - p.delta).abs() <= p.near_delta);

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
        } else {
            w_low[k] = if low { w_k } else { 0.0 };
            w_high[k] = if high { w_k } else { 0.0 };
        }
        fallback[k] = flag(to_f64);
    }
    accumulate::<K, BINARY>(scratch, m, sums);
    if BINARY {
        sums.low[0] += n_low as f64;
        sums.high[0] += n_high as f64;
    }
    any_fallback
}

/// Adds a chunk's `m` tokens to the row's float64 lanes, every float32 value widened exactly.
#[inline(always)]
fn accumulate<K: Kl32, const BINARY: bool>(s: &Scratch, m: usize, sums: &mut Sums) {
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
    n_low: u32,
    n_high: u32,
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
unsafe fn block<V: V16, K: Kl32, const HAS_OLD: bool, const BINARY: bool, const ROW: bool>(
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
    let (d, r) = if HAS_OLD {
        exp_of_difference_v::<V>(lp, V::load_or_zero(on, old_ptr))
    } else {
        (zero, one)
    };
    // Log ratios beyond +-MAX_GAP or NaN: float64 (the exponential above has no clamp).
    let mut to_f64 = V::not_le(V::abs(d), V::splat(MAX_GAP));
    let (coef, d_ratio, low, high, a);
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
        coef = V::xor(V::min(sr, V::splat(row.bound)), a);
        d_ratio = V::select(clipped, zero, V::splat(-row.a));
        (low, high) = (clipped, clipped);
        to_f64 = V::or(
            to_f64,
            V::or(near::<V>(r, p.band_lo), near::<V>(r, p.band_hi)),
        );
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
        coef = V::select(u_lt_v, c1, c2);
        let mix = V::add(V::mul(wu, dc1), V::mul(V::sub(one, wu), dc2));
        d_ratio = V::mul(V::xor(a, V::splat(-0.0)), mix);
        low = V::and(V::lt(c1, V::splat(p.lo)), V::lt(a, zero));
        high = V::and(V::gt(c1, V::splat(p.hi)), V::gt(a, zero));
        let near_any = V::or(near::<V>(r, p.band_lo), near::<V>(r, p.band_hi));
        to_f64 = V::or(to_f64, V::or(near_any, near::<V>(r, p.band_delta)));
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
    } else {
        acc.low = V::dadd(acc.low, V::keep(V::and(low, ok), w));
        if !ROW {
            acc.high = V::dadd(acc.high, V::keep(V::and(high, ok), w));
        }
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
unsafe fn chunk_v<V: V16, K: Kl32, const HAS_OLD: bool, const BINARY: bool, const ROW: bool>(
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
        n_low: 0,
        n_high: 0,
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
        let bits = block::<V, K, HAS_OLD, BINARY, ROW>(
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
        let bits = block::<V, K, HAS_OLD, BINARY, ROW>(
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
    any != 0
}

/// [`chunk_v`] compiled for AVX-512F (16 float32 lanes in one register).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn chunk_avx512<K: Kl32, const HAS_OLD: bool, const BINARY: bool, const ROW: bool>(
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    chunk_v::<Avx512, K, HAS_OLD, BINARY, ROW>(p, row, input, grad, fallback, sums)
}

/// [`chunk_v`] compiled for AVX2 + FMA (16 float32 lanes in two registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn chunk_avx2<K: Kl32, const HAS_OLD: bool, const BINARY: bool, const ROW: bool>(
    p: &Params,
    row: RowClip,
    input: &ChunkIn<'_>,
    grad: &mut [f32],
    fallback: &mut [u16; CHUNK / 16],
    sums: &mut Sums,
) -> bool {
    chunk_v::<Avx2, K, HAS_OLD, BINARY, ROW>(p, row, input, grad, fallback, sums)
}

/// A chunk at the level `level` (never above the CPU's: see
/// [`crate::numeric::simd::simd_level`]): [`chunk_v`] with AVX-512 or AVX2, else the portable
/// build of [`chunk`] (no fused multiply-adds, `FMA = false`; it ignores `ROW`, which only picks
/// a faster form of the same term).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn chunk_at<K: Kl32, const HAS_OLD: bool, const BINARY: bool, const ROW: bool>(
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
                chunk_avx512::<K, HAS_OLD, BINARY, ROW>(p, row, input, grad, fallback, sums)
            }
        }
        // SAFETY: as above.
        SimdLevel::Avx2 => {
            return unsafe {
                chunk_avx2::<K, HAS_OLD, BINARY, ROW>(p, row, input, grad, fallback, sums)
            }
        }
        SimdLevel::Portable => {}
    }
    let _ = (level, row);
    let any = chunk::<K, HAS_OLD, BINARY, false>(p, input, grad, scratch, sums);
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
        let run = match (has_kl.then_some(self.options.kl_estimator), has_old) {
            (None, true) => Self::run_f32_with::<NoKl, true>,
            (None, false) => Self::run_f32_with::<NoKl, false>,
            (Some(KlEstimator::K1), true) => Self::run_f32_with::<K1, true>,
            (Some(KlEstimator::K1), false) => Self::run_f32_with::<K1, false>,
            (Some(KlEstimator::Abs), true) => Self::run_f32_with::<Abs, true>,
            (Some(KlEstimator::Abs), false) => Self::run_f32_with::<Abs, false>,
            (Some(KlEstimator::K2), true) => Self::run_f32_with::<K2, true>,
            (Some(KlEstimator::K2), false) => Self::run_f32_with::<K2, false>,
            (Some(_), true) => Self::run_f32_with::<K3, true>,
            (Some(_), false) => Self::run_f32_with::<K3, false>,
        };
        let mut workspace = WORKSPACE.take().unwrap_or_else(Workspace::new);
        let result = run(self, i, grad, &mut workspace);
        WORKSPACE.set(Some(workspace));
        result
    }

    fn run_f32_with<K: Kl32, const HAS_OLD: bool>(
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
        let (lo, hi) = (1.0 - opt.epsilon_low, 1.0 + opt.epsilon_high());
        let delta = opt.delta.unwrap_or(f64::INFINITY);
        let p = Params {
            lo: lo as f32,
            hi: hi as f32,
            delta: if delta < f32::MAX as f64 {
                delta as f32
            } else {
                f32::MAX
            },
            near_lo: 0.0,
            near_hi: 0.0,
            near_delta: 0.0,
            band_lo: (0.0, 0.0),
            band_hi: (0.0, 0.0),
            band_delta: (0.0, 0.0),
            beta: opt.beta as f32,
            bias: flag(opt.kl_bias_correction),
            scale: scale as f32,
        };
        let p = Params {
            near_lo: NEAR_BOUND * p.lo.abs(),
            near_hi: NEAR_BOUND * p.hi.abs(),
            near_delta: NEAR_BOUND * p.delta,
            ..p
        };
        let band = |bound: f32, near: f32| (bound - near, bound + near);
        let p = Params {
            band_lo: band(p.lo, p.near_lo),
            band_hi: band(p.hi, p.near_hi),
            band_delta: band(p.delta, p.near_delta),
            ..p
        };
        let fallback_term = terms::Clipped { lo, hi, delta };
        let level = crate::numeric::simd::simd_level();

        let mut sums = Sums {
            loss: [0.0; LANES],
            kl: [0.0; LANES],
            low: [0.0; LANES],
            high: [0.0; LANES],
            fallback: [0.0; 4],
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
            Some(a) if a != 0.0 && opt.delta.is_none() => Some(RowClip {
                a,
                bound: if a > 0.0 { p.hi } else { -p.lo },
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
                (true, true) => chunk_at::<K, HAS_OLD, true, true>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (true, false) => chunk_at::<K, HAS_OLD, true, false>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (false, true) => chunk_at::<K, HAS_OLD, false, true>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
                (false, false) => chunk_at::<K, HAS_OLD, false, false>(
                    level, &p, row, &input, g, scratch, fb, &mut sums,
                ),
            };
            if any_fallback {
                for k in 0..end - start {
                    if (fallback_bits[k / 16] >> (k % 16)) & 1 != 0 {
                        if !self.inputs_finite::<K>(i, start + k) {
                            return Err(self.locate_non_finite(i, start..end));
                        }
                        let g = self.token_f64::<K>(&fallback_term, scale, i, start + k, &mut sums);
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
        let [loss, kl, low, high] = sums.fallback;
        let low = total(&sums.low) + low;
        let high = total(&sums.high) + high;
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
                m[Clipped::LOW] = low;
                m[Clipped::HIGH] = high;
                m[Clipped::REGION] = low + high;
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

    /// Token `(i, t)` by the float64 path's formulas: adds its weighted loss, KL and clip flags
    /// to `sums.fallback` and returns its gradient (perhaps not finite: the caller reports it).
    #[cold]
    fn token_f64<K: Kl32>(
        &self,
        policy: &terms::Clipped,
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
        let r = exp::exp(d);
        let a = match self.inputs.advantages {
            AdvantageView::PerRow(adv) => adv[i] as f64,
            AdvantageView::PerToken(adv) => adv[i * self.inputs.len + t] as f64,
        };
        let term = policy.term(r, a, lp, d);
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
                d_logp += opt.beta * (bias * r * kl_plus_d + (1.0 - bias) * d_kl);
                kl_sum = kl * kr;
            }
        }
        sums.fallback[0] += w * loss;
        sums.fallback[1] += w * kl_sum;
        sums.fallback[2] += w * term.metrics[Clipped::LOW];
        sums.fallback[3] += w * term.metrics[Clipped::HIGH];
        (scale * w * (d_logp + term.d_ratio * r)) as f32
    }
}

//! The gradient `policy_loss` writes is the derivative of the loss it returns.
//!
//! For every loss type, both importance-sampling levels, `beta = 0` and `beta = 0.04` with every
//! KL estimator and bias correction on and off (plus a set of option tweaks), the f32 gradient is
//! compared with a central finite difference of the returned f64 loss, evaluated on f64 copies of
//! the (f32-representable) inputs. Points stay away from every kink: log ratios are moderate and
//! kept `KINK_MARGIN` away from the clip bounds, `delta`, the dual-clip constant and `lp == ref`.
//!
//! CISPO and VESPO weight `lp` by a *detached* coefficient of the ratio, so their gradient is not
//! the total derivative of the loss. For them the reference is split into two finite differences
//! that each only see what autograd sees: the policy term is differenced along `lp` and
//! `old_logp` moved together (the ratio, hence the detached coefficient, stays fixed), and the KL
//! term (`loss(beta) - loss(0)`, which has no detached part) is differenced along `lp` alone.
//!
//! The file also checks that per-row `(B,)` advantages and their `(B, T)` broadcast agree, that
//! masked tokens get gradient exactly 0 whatever they hold (NaN, inf), that `grad_scale` scales
//! only the gradient, and that f32, f64, bf16 and f16 inputs agree bit for bit when the values
//! are exactly representable in all of them.

mod common;

use common::{Rng, ESTIMATORS, LEVELS};

use half::{bf16, f16};

use sgpo_rs::elem::{FloatElem, MaskElem};
use sgpo_rs::loss::{
    policy_loss, uses_float32_path, AdvantageView, Aggregation, ImportanceSamplingLevel,
    KlEstimator, LossInputs, LossOptions, LossOutput, LossType,
};

/// Ratios where some objective below has a kink: `1 - 0.2`, `1 + 0.2`, `1 + 0.28`, `delta = 1.4`,
/// `1 + 1.1` (epsilon_high 1.1), the dual-clip constants 3 and 2.5.
const KINK_RATIOS: [f64; 7] = [0.8, 1.2, 1.28, 1.4, 2.1, 3.0, 2.5];
/// Minimum distance, in log-ratio space, between any (token or sequence) log ratio and a kink.
/// The finite-difference step moves a log ratio by at most `2 * H` (mask weights <= 2), six orders
/// of magnitude less.
const KINK_MARGIN: f64 = 0.01;
/// Finite-difference step on f64 log-probabilities of magnitude 0.1..3.5.
const H: f64 = 1e-6;

/// Tolerance of the finite-difference comparison: `|g - fd| <= RTOL |fd| + ATOL * max|fd|`.
///
/// Error budget, relative to the gradient's scale:
/// - the engine computes in f64 and rounds the gradient to f32 once (plus one f32 addition on the
///   sequence-level path): <= 2 * 2^-24 ~ 1.2e-7 relative to each entry;
/// - truncation of the central difference: H^2 / 6 * |L'''|, and every term is a polynomial, exp
///   or sigmoid of quantities of order 1, so |L'''| ~ |L'| and this is ~1e-13 relative;
/// - cancellation: the loss is a sum of at most B*T = 24 terms, each of the size of one entry of
///   the gradient times O(1), so `eps_64 * |L| / H ~ 2.2e-16 * 24 / 1e-6 ~ 5e-9` of the gradient's
///   scale (doubled where two differences are combined).
///
/// So the expected error is ~1.5e-7 of the entry plus ~1e-8 of the scale (the tests print the
/// worst seen: ~9e-8 of the scale). RTOL = 2e-6 and ATOL = 2e-7 of the largest entry leave a
/// margin above 10x on large entries and above 20x on the cancellation term, while still catching
/// any real mistake (a wrong branch, factor or missing path is an O(1) relative error).
const RTOL: f64 = 2e-6;
const ATOL: f64 = 2e-7;

fn near_kink(log_ratio: f64) -> bool {
    KINK_RATIOS
        .iter()
        .any(|r| (log_ratio - r.ln()).abs() < KINK_MARGIN)
}

/// One `(B, T)` batch, stored as f32 (every value is exact in f64 too).
#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    len: usize,
    logp: Vec<f32>,
    old: Vec<f32>,
    reference: Vec<f32>,
    adv_row: Vec<f32>,
    adv_token: Vec<f32>,
    mask: Vec<f32>,
}

const ADVANTAGES: [f32; 6] = [-1.3, -0.4, 0.0, 0.7, 1.9, -2.25];

/// `max_log_ratio` bounds |lp - old|; row 2 is fully masked; mask weights are 0, 0.5, 1 and 2.
fn make_case(seed: u64, batch: usize, len: usize, max_log_ratio: f64) -> Case {
    let mut rng = Rng(seed);
    let n = batch * len;
    let mut case = Case {
        batch,
        len,
        logp: vec![0.0; n],
        old: vec![0.0; n],
        reference: vec![0.0; n],
        adv_row: (0..batch).map(|_| *rng.pick(&ADVANTAGES)).collect(),
        adv_token: (0..n).map(|_| *rng.pick(&ADVANTAGES)).collect(),
        mask: vec![0.0; n],
    };
    for i in 0..batch {
        loop {
            let (mut sum, mut weight) = (0.0f64, 0.0f64);
            for t in i * len..(i + 1) * len {
                let lp = -rng.uniform(0.1, 3.0) as f32;
                let (old, d) = loop {
                    let old = (lp as f64 - rng.uniform(-max_log_ratio, max_log_ratio)) as f32;
                    let d = lp as f64 - old as f64;
                    if !near_kink(d) {
                        break (old, d);
                    }
                };
                let reference = loop {
                    let u = rng.uniform(-1.5, 1.5);
                    let reference = (lp as f64 + u) as f32;
                    if (reference as f64 - lp as f64).abs() > KINK_MARGIN {
                        break reference;
                    }
                };
                let w = if i == 2 {
                    0.0
                } else {
                    *rng.pick(&[1.0f32, 1.0, 1.0, 1.0, 0.0, 0.5, 2.0])
                };
                case.logp[t] = lp;
                case.old[t] = old;
                case.reference[t] = reference;
                case.mask[t] = w;
                sum += d * w as f64;
                weight += w as f64;
            }
            // The sequence-level log ratio must also be away from the kinks.
            if !near_kink(sum / weight.max(1.0)) {
                break;
            }
        }
    }
    case
}

fn widen<T: Copy + Into<f64>>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|&x| x.into()).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AdvKind {
    Row,
    Token,
}

/// Runs `f` on a one-thread rayon pool: these batches are tiny, and waking the global pool's
/// threads for every one of the ~10^5 calls below costs more than the math (determinism across
/// thread counts is `tests/determinism.rs`'s subject).
fn serial<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    thread_local! {
        static POOL: rayon::ThreadPool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread rayon pool");
    }
    POOL.with(|pool| pool.install(f))
}

/// Runs `policy_loss` on `logp`/`old`/`reference` of any element type; panics on an error.
#[allow(clippy::too_many_arguments)]
fn run<T: FloatElem, M: MaskElem>(
    case: &Case,
    logp: &[T],
    old: Option<&[T]>,
    reference: Option<&[T]>,
    advantages: AdvantageView<'_>,
    mask: &[M],
    options: &LossOptions,
) -> (LossOutput, Vec<f32>) {
    let inputs = LossInputs {
        logp,
        old_logp: old,
        ref_logp: reference,
        advantages,
        mask,
        batch: case.batch,
        len: case.len,
    };
    let mut grad = vec![f32::NAN; case.batch * case.len];
    let out = serial(|| policy_loss(&inputs, options, &mut grad))
        .unwrap_or_else(|e| panic!("policy_loss failed: {e} with {options:?}"));
    (out, grad)
}

/// `run` on the case's own f32 inputs with another mask.
fn run_with_mask<M: MaskElem>(
    case: &Case,
    kind: AdvKind,
    mask: &[M],
    options: &LossOptions,
) -> (LossOutput, Vec<f32>) {
    run(
        case,
        &case.logp,
        Some(&case.old),
        Some(&case.reference),
        adv_view(case, kind),
        mask,
        options,
    )
}

fn adv_view(case: &Case, kind: AdvKind) -> AdvantageView<'_> {
    match kind {
        AdvKind::Row => AdvantageView::PerRow(&case.adv_row),
        AdvKind::Token => AdvantageView::PerToken(&case.adv_token),
    }
}

/// The loss at f64 inputs `logp`, `old`.
fn loss64(case: &Case, logp: &[f64], old: &[f64], kind: AdvKind, options: &LossOptions) -> f64 {
    let reference = widen(&case.reference);
    run(
        case,
        logp,
        Some(old),
        Some(&reference),
        adv_view(case, kind),
        &case.mask,
        options,
    )
    .0
    .loss
}

/// Central difference of `f(logp, old)` at every token; `joint` moves `old` with `logp`.
fn finite_difference(case: &Case, joint: bool, f: impl Fn(&[f64], &[f64]) -> f64) -> Vec<f64> {
    let logp = widen(&case.logp);
    let old = widen(&case.old);
    (0..logp.len())
        .map(|t| {
            if case.mask[t] == 0.0 {
                // Masked tokens: the engine must write exactly 0 (checked by the caller) and
                // `masked_tokens_get_zero_gradient_and_are_never_read` shows the loss does not
                // depend on them; skip the two loss evaluations.
                return 0.0;
            }
            let shifted = |h: f64| {
                let mut lp = logp.clone();
                let mut o = old.clone();
                lp[t] += h;
                if joint {
                    o[t] += h;
                }
                f(&lp, &o)
            };
            (shifted(H) - shifted(-H)) / (2.0 * H)
        })
        .collect()
}

/// The gradient autograd would produce, built from finite differences of the returned loss.
fn reference_gradient(case: &Case, kind: AdvKind, options: &LossOptions) -> Vec<f64> {
    let detached = matches!(options.loss_type, LossType::Cispo | LossType::Vespo);
    if !detached {
        return finite_difference(case, false, |lp, old| loss64(case, lp, old, kind, options));
    }
    let policy_only = LossOptions {
        beta: 0.0,
        ..*options
    };
    let mut g = finite_difference(case, true, |lp, old| {
        loss64(case, lp, old, kind, &policy_only)
    });
    if options.beta != 0.0 {
        let kl = finite_difference(case, false, |lp, old| {
            loss64(case, lp, old, kind, options) - loss64(case, lp, old, kind, &policy_only)
        });
        for (g, kl) in g.iter_mut().zip(kl) {
            *g += kl;
        }
    }
    g
}

/// Checks one configuration; returns the worst error relative to the gradient's scale.
fn check_gradient(case: &Case, kind: AdvKind, options: &LossOptions) -> f64 {
    let reference = widen(&case.reference);
    let (out32, grad32) = run(
        case,
        &case.logp,
        Some(&case.old),
        Some(&case.reference),
        adv_view(case, kind),
        &case.mask,
        options,
    );
    let (out64, grad64) = run(
        case,
        &widen(&case.logp),
        Some(&widen(&case.old)),
        Some(&reference),
        adv_view(case, kind),
        &case.mask,
        options,
    );
    if uses_float32_path::<f32>(options) {
        // The float32 path: within its stated bound of the float64 path (5e-7 of each token's
        // magnitude; checked here against the looser 1e-6 of the loss and of max |grad|).
        assert_float32_path_close(&out32, &grad32, &out64, &grad64, options);
    } else {
        // f32 inputs and their exact f64 copies are the same numbers: identical results.
        assert_eq!(out32.loss.to_bits(), out64.loss.to_bits(), "{options:?}");
        assert_eq!(bits(&grad32), bits(&grad64), "{options:?}");
    }

    // `grad_scale` multiplies the gradient, not the loss.
    let fd: Vec<f64> = reference_gradient(case, kind, options)
        .into_iter()
        .map(|g| g * options.grad_scale)
        .collect();
    let scale = fd.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-30);
    let mut worst = 0.0f64;
    for (t, (&g, &want)) in grad32.iter().zip(&fd).enumerate() {
        let err = (g as f64 - want).abs();
        assert!(
            err <= RTOL * want.abs() + ATOL * scale,
            "gradient mismatch at token {t}: engine {g}, finite difference {want} \
             (|err| {err:e}, scale {scale:e}), {kind:?} advantages, options {options:?}"
        );
        if case.mask[t] == 0.0 {
            assert!(g == 0.0, "masked token {t}: {g}");
        }
        worst = worst.max(err / scale);
    }
    worst
}

/// The float32 path's results against the float64 path's on the same numbers: loss within 1e-6
/// relative (plus 1e-12), gradient within 1e-6 of max |grad|, clip metrics equal, the others
/// within 1e-6 relative.
fn assert_float32_path_close(
    out32: &sgpo_rs::loss::LossOutput,
    grad32: &[f32],
    out64: &sgpo_rs::loss::LossOutput,
    grad64: &[f32],
    options: &LossOptions,
) {
    let loss_err = (out32.loss - out64.loss).abs();
    assert!(
        loss_err <= 1e-6 * out64.loss.abs() + 1e-12,
        "loss {} vs {} ({options:?})",
        out32.loss,
        out64.loss
    );
    let scale = grad64.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
    for (t, (&a, &b)) in grad32.iter().zip(grad64).enumerate() {
        let err = (a as f64 - b as f64).abs();
        assert!(err <= 1e-6 * scale, "grad at {t}: {a} vs {b} ({options:?})");
    }
    assert_eq!(out32.metrics.0.len(), out64.metrics.0.len());
    for (&(key, a), &(_, b)) in out32.metrics.0.iter().zip(&out64.metrics.0) {
        if key.starts_with("clip_ratio") {
            assert!(a == b || (a.is_nan() && b.is_nan()), "{key}: {a} vs {b}");
        } else {
            assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-15, "{key}: {a} vs {b}");
        }
    }
}

/// Bit patterns, with -0 read as +0: a masked token's gradient is exactly zero of either sign
/// (torch's `0 * x` gives -0 for negative `x` too); every other entry must match bit for bit.
fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|&x| (x + 0.0).to_bits()).collect()
}

/// (beta, estimator, bias correction): beta 0, then 0.04 with every estimator, both ways.
fn kl_settings() -> Vec<(f64, KlEstimator, bool)> {
    let mut settings = vec![(0.0, KlEstimator::K3, true)];
    for est in ESTIMATORS {
        for bias in [true, false] {
            settings.push((0.04, est, bias));
        }
    }
    settings
}

#[test]
fn gradient_matches_finite_difference_for_every_loss_and_kl_setting() {
    // Moderate ratios with per-row advantages; wider ratios (reaching the clip bounds, epsilon_high
    // 1.1 and the dual clip r > 3) with per-token advantages of mixed signs within a row.
    let cases = [
        (make_case(1, 4, 6, 0.45), AdvKind::Row),
        (make_case(2, 4, 6, 1.6), AdvKind::Token),
    ];
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (case, kind) in &cases {
        let kind = *kind;
        {
            for loss_type in common::loss_types() {
                for level in LEVELS {
                    for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                        let options = LossOptions {
                            loss_type,
                            importance_sampling_level: level,
                            beta,
                            kl_estimator,
                            kl_bias_correction,
                            ..LossOptions::default()
                        };
                        worst = worst.max(check_gradient(case, kind, &options));
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 9 * 2 * 11);
    eprintln!("worst error relative to gradient scale: {worst:e}");
}

/// Every option that changes the formula, with and without a (bias-corrected k3) KL term.
fn option_tweaks() -> Vec<(&'static str, LossOptions)> {
    let d = LossOptions::default();
    vec![
        (
            "epsilon_high 0.28",
            LossOptions {
                epsilon_high: Some(0.28),
                ..d
            },
        ),
        (
            "epsilon_high 1.1",
            LossOptions {
                epsilon_high: Some(1.1),
                ..d
            },
        ),
        (
            "delta 1.4",
            LossOptions {
                delta: Some(1.4),
                ..d
            },
        ),
        (
            "num_items 50",
            LossOptions {
                num_items: Some(50.0),
                ..d
            },
        ),
        (
            "max_completion_length 16",
            LossOptions {
                max_completion_length: Some(16),
                ..d
            },
        ),
        (
            "token-mean",
            LossOptions {
                aggregation: Some(Aggregation::TokenMean),
                ..d
            },
        ),
        (
            "seq-mean-token-sum",
            LossOptions {
                aggregation: Some(Aggregation::ValidRowMeanOfTokenSums),
                ..d
            },
        ),
        (
            "seq-mean-token-mean",
            LossOptions {
                aggregation: Some(Aggregation::ValidRowMeanOfTokenMeans),
                ..d
            },
        ),
        (
            "seq-mean-token-sum-norm",
            LossOptions {
                aggregation: Some(Aggregation::Divisor(3.0)),
                ..d
            },
        ),
        (
            "row mean of token means",
            LossOptions {
                aggregation: Some(Aggregation::RowMeanOfTokenMeans),
                ..d
            },
        ),
        (
            "row mean of token sums",
            LossOptions {
                aggregation: Some(Aggregation::RowMeanOfTokenSums),
                ..d
            },
        ),
        (
            "grad_scale 1.7",
            LossOptions {
                grad_scale: 1.7,
                ..d
            },
        ),
        (
            "clip_ratio_c 2.5",
            LossOptions {
                clip_ratio_c: 2.5,
                ..d
            },
        ),
        (
            "sapo temperatures",
            LossOptions {
                sapo_temperature_pos: 0.8,
                sapo_temperature_neg: 1.3,
                ..d
            },
        ),
        (
            "vespo parameters",
            LossOptions {
                vespo_k_pos: 1.5,
                vespo_lambda_pos: 2.5,
                vespo_k_neg: 2.5,
                vespo_lambda_neg: 1.5,
                ..d
            },
        ),
    ]
}

#[test]
fn gradient_matches_finite_difference_under_option_tweaks() {
    let case = make_case(3, 4, 6, 1.6);
    let mut worst = 0.0f64;
    for (n, (_name, tweak)) in option_tweaks().into_iter().enumerate() {
        // Alternate the advantage layout between tweaks.
        let kind = if n % 2 == 0 {
            AdvKind::Row
        } else {
            AdvKind::Token
        };
        for loss_type in common::loss_types() {
            for level in LEVELS {
                for beta in [0.0, 0.04] {
                    {
                        let options = LossOptions {
                            loss_type,
                            importance_sampling_level: level,
                            beta,
                            ..tweak
                        };
                        worst = worst.max(check_gradient(&case, kind, &options));
                    }
                }
            }
        }
    }
    eprintln!("worst error relative to gradient scale: {worst:e}");
}

/// Without `old_logp` the ratio is 1 but its gradient still flows (TRL `old = lp.detach()`):
/// exactly what passing `old_logp = logp` gives.
#[test]
fn on_policy_equals_old_logp_equal_to_logp() {
    let case = make_case(4, 5, 8, 0.45);
    for loss_type in common::loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let options = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..LossOptions::default()
                };
                let adv = AdvantageView::PerRow(&case.adv_row);
                let reference = Some(case.reference.as_slice());
                let (a, ga) = run(
                    &case, &case.logp, None, reference, adv, &case.mask, &options,
                );
                let (b, gb) = run(
                    &case,
                    &case.logp,
                    Some(&case.logp),
                    reference,
                    adv,
                    &case.mask,
                    &options,
                );
                assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{options:?}");
                assert_eq!(bits(&ga), bits(&gb), "{options:?}");
                assert_eq!(a.metrics, b.metrics, "{options:?}");
            }
        }
    }
}

/// `(B,)` advantages and their `(B, T)` broadcast give the same loss and gradient, bit for bit,
/// whether the broadcast holds the row's value or 0 (or NaN) on masked tokens.
#[test]
fn per_row_and_broadcast_per_token_advantages_agree() {
    let case = make_case(5, 6, 9, 1.6);
    let (batch, len) = (case.batch, case.len);
    let broadcast: Vec<f32> = (0..batch * len).map(|k| case.adv_row[k / len]).collect();
    let masked_zero: Vec<f32> = (0..batch * len)
        .map(|k| case.adv_row[k / len] * f32::from(case.mask[k] != 0.0))
        .collect();
    let masked_nan: Vec<f32> = (0..batch * len)
        .map(|k| {
            if case.mask[k] == 0.0 {
                f32::NAN
            } else {
                case.adv_row[k / len]
            }
        })
        .collect();
    for loss_type in common::loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let options = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..LossOptions::default()
                };
                let go = |adv: AdvantageView<'_>| {
                    run(
                        &case,
                        &case.logp,
                        Some(&case.old),
                        Some(&case.reference),
                        adv,
                        &case.mask,
                        &options,
                    )
                };
                let (row, grad_row) = go(AdvantageView::PerRow(&case.adv_row));
                for per_token in [&broadcast, &masked_zero, &masked_nan] {
                    let (tok, grad_tok) = go(AdvantageView::PerToken(per_token));
                    assert_eq!(row.loss.to_bits(), tok.loss.to_bits(), "{options:?}");
                    assert_eq!(bits(&grad_row), bits(&grad_tok), "{options:?}");
                }
            }
        }
    }
}

/// Masked tokens get gradient exactly 0 and what they hold never matters: poisoning every input
/// of every masked token with NaN or infinities changes nothing, bit for bit.
#[test]
fn masked_tokens_get_zero_gradient_and_are_never_read() {
    let case = make_case(6, 6, 9, 1.6);
    let poison = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN, 1e38];
    let mut poisoned = case.clone();
    for k in 0..case.mask.len() {
        if case.mask[k] == 0.0 {
            poisoned.logp[k] = poison[k % poison.len()];
            poisoned.old[k] = poison[(k + 1) % poison.len()];
            poisoned.reference[k] = poison[(k + 2) % poison.len()];
            poisoned.adv_token[k] = poison[(k + 3) % poison.len()];
        }
    }
    // The mask as every element type; -0.0 is a zero weight too.
    let mask_f32: Vec<f32> = case
        .mask
        .iter()
        .map(|&w| if w == 0.0 { -0.0 } else { w })
        .collect();
    let mask_bool: Vec<bool> = case.mask.iter().map(|&w| w != 0.0).collect();
    let mask_i64: Vec<i64> = mask_bool.iter().map(|&b| i64::from(b)).collect();
    let mask_u8: Vec<u8> = mask_bool.iter().map(|&b| u8::from(b)).collect();
    let binary: Vec<f32> = mask_bool.iter().map(|&b| f32::from(u8::from(b))).collect();

    for loss_type in common::loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let options = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..LossOptions::default()
                };
                for kind in [AdvKind::Row, AdvKind::Token] {
                    let go = |c: &Case| {
                        run(
                            c,
                            &c.logp,
                            Some(&c.old),
                            Some(&c.reference),
                            adv_view(c, kind),
                            &mask_f32,
                            &options,
                        )
                    };
                    let (clean, grad_clean) = go(&case);
                    let (dirty, grad_dirty) = go(&poisoned);
                    assert_eq!(clean.loss.to_bits(), dirty.loss.to_bits(), "{options:?}");
                    assert_eq!(bits(&grad_clean), bits(&grad_dirty), "{options:?}");
                    assert_eq!(clean.metrics, dirty.metrics, "{options:?}");
                    for (k, &w) in case.mask.iter().enumerate() {
                        if w == 0.0 {
                            assert!(grad_dirty[k] == 0.0, "token {k}, {options:?}");
                        }
                    }

                    // Integer and bool masks with the same 0/1 pattern agree with an f32 one.
                    let (want, grad_want) = run_with_mask(&poisoned, kind, &binary, &options);
                    let results = [
                        run_with_mask(&poisoned, kind, &mask_bool, &options),
                        run_with_mask(&poisoned, kind, &mask_i64, &options),
                        run_with_mask(&poisoned, kind, &mask_u8, &options),
                    ];
                    for (out, grad) in results {
                        assert_eq!(out.loss.to_bits(), want.loss.to_bits(), "{options:?}");
                        assert_eq!(bits(&grad), bits(&grad_want), "{options:?}");
                    }
                }
            }
        }
    }
}

/// `grad_scale` multiplies the gradient only: the loss and metrics keep their bits, a power of two
/// scales every gradient entry exactly, any other factor to f32 rounding.
#[test]
fn grad_scale_multiplies_only_the_gradient() {
    let case = make_case(7, 5, 8, 1.6);
    for loss_type in common::loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let base = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..LossOptions::default()
                };
                let go = |grad_scale: f64| {
                    run(
                        &case,
                        &case.logp,
                        Some(&case.old),
                        Some(&case.reference),
                        AdvantageView::PerRow(&case.adv_row),
                        &case.mask,
                        &LossOptions { grad_scale, ..base },
                    )
                };
                let (one, grad_one) = go(1.0);
                let largest = grad_one.iter().fold(0.0f64, |m, g| m.max(g.abs() as f64));
                for s in [4.0, 0.5, -2.0, 0.3, 0.0, -7.25] {
                    let (out, grad) = go(s);
                    assert_eq!(out.loss.to_bits(), one.loss.to_bits(), "{base:?}");
                    assert_eq!(out.metrics, one.metrics, "{base:?}");
                    for (&g, &g1) in grad.iter().zip(&grad_one) {
                        let want = s * g1 as f64;
                        if s == 0.0 || (s as f32).abs().log2().fract() == 0.0 {
                            // Power of two (or zero): scaling commutes with rounding.
                            assert_eq!(g, want as f32, "grad_scale {s}, {base:?}");
                        } else {
                            // `g` and `g1` are each rounded to f32 once, or twice on the
                            // sequence-level path (the row's common ratio term is added to the
                            // rounded direct term, and the two may cancel): bound the error by
                            // f32 rounding of the row's largest entry.
                            let tol = 4.0 * f32::EPSILON as f64 * s.abs() * largest;
                            assert!(
                                (g as f64 - want).abs() <= tol,
                                "grad_scale {s}: {g} vs {want}, {base:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Values exact in bf16 (8 significant bits) and f16 (11): results identical across dtypes.
#[test]
fn half_precision_inputs_agree_with_f32_when_values_are_representable() {
    let mut case = make_case(8, 5, 8, 1.6);
    // Round to multiples of 1/64 in [-255/64, -1/64]: at most 8 significant bits, exact in bf16
    // and f16.
    let q = |x: f32| ((x * 64.0).round() / 64.0).clamp(-255.0 / 64.0, -1.0 / 64.0);
    for k in 0..case.logp.len() {
        case.logp[k] = q(case.logp[k]);
        case.old[k] = q(case.old[k]);
        case.reference[k] = q(case.reference[k]);
    }
    let to_bf16 = |xs: &[f32]| xs.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let to_f16 = |xs: &[f32]| xs.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    let (lp_b, old_b, ref_b) = (
        to_bf16(&case.logp),
        to_bf16(&case.old),
        to_bf16(&case.reference),
    );
    let (lp_h, old_h, ref_h) = (
        to_f16(&case.logp),
        to_f16(&case.old),
        to_f16(&case.reference),
    );
    for k in 0..case.logp.len() {
        assert_eq!(lp_b[k].to_f32(), case.logp[k]);
        assert_eq!(old_b[k].to_f32(), case.old[k]);
        assert_eq!(ref_b[k].to_f32(), case.reference[k]);
        assert_eq!(lp_h[k].to_f32(), case.logp[k]);
        assert_eq!(old_h[k].to_f32(), case.old[k]);
        assert_eq!(ref_h[k].to_f32(), case.reference[k]);
    }
    let (lp_d, old_d, ref_d) = (widen(&case.logp), widen(&case.old), widen(&case.reference));
    for loss_type in common::loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let options = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..LossOptions::default()
                };
                for kind in [AdvKind::Row, AdvKind::Token] {
                    let adv = adv_view(&case, kind);
                    let m = &case.mask;
                    let (a, ga) = run(
                        &case,
                        &case.logp,
                        Some(&case.old),
                        Some(&case.reference),
                        adv,
                        m,
                        &options,
                    );
                    let (b, gb) = run(&case, &lp_b, Some(&old_b), Some(&ref_b), adv, m, &options);
                    let (h, gh) = run(&case, &lp_h, Some(&old_h), Some(&ref_h), adv, m, &options);
                    let (d, gd) = run(&case, &lp_d, Some(&old_d), Some(&ref_d), adv, m, &options);
                    // bf16 and f16 take the same path as f32 on the same values: identical.
                    for (out, grad, dtype) in [(b, gb, "bf16"), (h, gh, "f16")] {
                        assert_eq!(out.loss.to_bits(), a.loss.to_bits(), "{dtype} {options:?}");
                        assert_eq!(bits(&grad), bits(&ga), "{dtype} {options:?}");
                        assert_eq!(out.metrics, a.metrics, "{dtype} {options:?}");
                    }
                    // f64 always takes the float64 path.
                    if uses_float32_path::<f32>(&options) {
                        assert_float32_path_close(&a, &ga, &d, &gd, &options);
                    } else {
                        assert_eq!(d.loss.to_bits(), a.loss.to_bits(), "f64 {options:?}");
                        assert_eq!(bits(&gd), bits(&ga), "f64 {options:?}");
                        assert_eq!(d.metrics, a.metrics, "f64 {options:?}");
                    }
                }
            }
        }
    }
}

/// Hand-checked values for one token, so a wrong sign convention cannot hide behind a
/// self-consistent finite difference.
#[test]
fn single_token_values_by_hand() {
    let logp = [-1.0f64];
    let one = |old: f64, a: f32, options: LossOptions| {
        let inputs = LossInputs {
            logp: &logp,
            old_logp: Some(&[old][..]),
            ref_logp: Some(&[-1.5][..]),
            advantages: AdvantageView::PerRow(&[a]),
            mask: &[1u8][..],
            batch: 1,
            len: 1,
        };
        let mut grad = [f32::NAN];
        let out = policy_loss(&inputs, &options, &mut grad).unwrap();
        (out.loss, grad[0] as f64)
    };
    let close = |got: (f64, f64), want: (f64, f64)| {
        assert!(
            (got.0 - want.0).abs() < 1e-12 && (got.1 - want.1).abs() < 1e-6,
            "got {got:?}, want {want:?}"
        );
    };
    let d = LossOptions::default();
    // dapo, r = e^0.1 = 1.105 inside [0.8, 1.2]: L = -r A, dL/dlp = -r A.
    let r = 0.1f64.exp();
    close(one(-1.1, 2.0, d), (-2.0 * r, -2.0 * r));
    // r = e^0.5 > 1.2 with A > 0: clipped, L = -1.2 A, no gradient.
    close(one(-1.5, 2.0, d), (-2.4, 0.0));
    // r = e^0.5 with A < 0: min picks r A, L = -r A, dL/dlp = -r A.
    let r = 0.5f64.exp();
    close(one(-1.5, -2.0, d), (2.0 * r, 2.0 * r));
    // vanilla (verl): Lc = max(-A r, -A clip(r)). r = e^0.5 = 1.65 > 1.2 with A = 1:
    // max(-1.65, -1.2) = -1.2, clipped, no gradient.
    let vanilla = LossOptions {
        loss_type: LossType::Vanilla,
        ..d
    };
    close(one(-1.5, 1.0, vanilla), (-1.2, 0.0));
    // vanilla dual clip: r = e^1.5 = 4.48 > c = 3, A = -1: L = -A c = 3, no gradient.
    let vanilla = LossOptions {
        loss_type: LossType::Vanilla,
        ..d
    };
    close(one(-2.5, -1.0, vanilla), (3.0, 0.0));
    // vanilla, r = e^-0.5 = 0.61 < 0.8 with A = -1: max(0.61, 0.8) = 0.8, clipped, no gradient.
    close(one(-0.5, -1.0, vanilla), (0.8, 0.0));
    // k3 with bias correction on-policy-ish: old = lp, ref - lp = -0.5, A = 0:
    // kl = e^-0.5 + 0.5 - 1; L = beta kl r; dL/dlp = beta (kl r + r (1 - e^-0.5)) at r = 1.
    let beta = 0.04;
    let kl = (-0.5f64).exp() - 0.5;
    let with_kl = LossOptions { beta, ..d };
    close(
        one(-1.0, 0.0, with_kl),
        (beta * kl, beta * (kl + 1.0 - (-0.5f64).exp())),
    );
    // Same without bias correction: dL/dlp = beta (1 - e^-0.5).
    let plain = LossOptions {
        kl_bias_correction: false,
        ..with_kl
    };
    close(
        one(-1.0, 0.0, plain),
        (beta * kl, beta * (1.0 - (-0.5f64).exp())),
    );
    // cispo with epsilon_high 5: coefficient r = e^0.1 (detached): L = -r A lp, grad -r A.
    let cispo = LossOptions {
        loss_type: LossType::Cispo,
        epsilon_high: Some(5.0),
        ..d
    };
    let r = 0.1f64.exp();
    close(one(-1.1, 2.0, cispo), (2.0 * r, -2.0 * r));
}

/// The per-token loss of docs/formulas.md, written out plainly in f64 (TRL: section 2; verl:
/// section 3), for the default options of each loss type.
fn reference_token_loss(
    options: &LossOptions,
    r: f64,
    log_w_vespo: f64,
    a: f64,
    lp: f64,
    reference: f64,
) -> f64 {
    let el = options.epsilon_low;
    let eh = options.epsilon_high.unwrap_or(el);
    let policy = match options.loss_type {
        LossType::Cispo => -r.min(eh) * a * lp,
        LossType::Sapo => {
            let tau = if a > 0.0 { 1.0 } else { 1.05 };
            -(1.0 / (1.0 + (-tau * (r - 1.0)).exp()) * 4.0 / tau) * a
        }
        LossType::Vespo => {
            let (k, lam) = if a >= 0.0 { (2.0, 3.0) } else { (3.0, 2.0) };
            let phi = (lam + k * log_w_vespo - lam * log_w_vespo.exp()).exp();
            -phi * a * lp
        }
        LossType::Vanilla => {
            let l1 = -a * r;
            let l2 = -a * r.clamp(1.0 - el, 1.0 + eh);
            let lc = l1.max(l2);
            if a < 0.0 {
                (-a * options.clip_ratio_c).min(lc)
            } else {
                lc
            }
        }
        _ => {
            let c1 = options.delta.map_or(r, |delta| r.min(delta));
            let c2 = r.clamp(1.0 - el, 1.0 + eh);
            -(c1 * a).min(c2 * a)
        }
    };
    if options.beta == 0.0 {
        return policy;
    }
    let d = lp - reference;
    let kl = match options.kl_estimator {
        KlEstimator::K1 => d,
        KlEstimator::Abs => d.abs(),
        KlEstimator::K2 => 0.5 * d * d,
        KlEstimator::K3 => (-d).exp() + d - 1.0,
        KlEstimator::LowVarKl => {
            let x = (-d).clamp(-20.0, 20.0);
            (x.exp() - x - 1.0).clamp(-10.0, 10.0)
        }
    };
    let kl = if options.kl_bias_correction {
        kl * r
    } else {
        kl
    };
    policy + options.beta * kl
}

/// The loss of docs/formulas.md with each loss type's own aggregation.
fn reference_loss(case: &Case, kind: AdvKind, options: &LossOptions) -> f64 {
    let (b, t_len) = (case.batch, case.len);
    let vanilla = options.loss_type == LossType::Vanilla;
    let mut row_sums = vec![0.0f64; b];
    let mut row_tokens = vec![0.0f64; b];
    for i in 0..b {
        let span = i * t_len..(i + 1) * t_len;
        let m: Vec<f64> = case.mask[span.clone()].iter().map(|&w| w as f64).collect();
        let lr: Vec<f64> = span
            .clone()
            .map(|k| case.logp[k] as f64 - case.old[k] as f64)
            .collect();
        let n: f64 = m.iter().sum();
        let seq = lr.iter().zip(&m).map(|(d, w)| d * w).sum::<f64>() / n.max(1.0);
        let vespo_sum: f64 = lr
            .iter()
            .zip(&m)
            .map(|(d, w)| d.clamp(-20.0, 20.0) * w)
            .sum();
        let log_w_vespo = vespo_sum.clamp(1e-8f64.ln(), 20.0);
        for (t, k) in span.enumerate() {
            if m[t] == 0.0 {
                continue;
            }
            let lw = match options.importance_sampling_level {
                ImportanceSamplingLevel::Token => lr[t],
                ImportanceSamplingLevel::Sequence => seq,
            };
            let r = if vanilla {
                lw.clamp(-20.0, 20.0).exp()
            } else {
                lw.exp()
            };
            let a = match kind {
                AdvKind::Row => case.adv_row[i],
                AdvKind::Token => case.adv_token[k],
            } as f64;
            let l = reference_token_loss(
                options,
                r,
                log_w_vespo,
                a,
                case.logp[k] as f64,
                case.reference[k] as f64,
            );
            row_sums[i] += l * m[t];
        }
        row_tokens[i] = n;
    }
    let total: f64 = row_sums.iter().sum();
    let tokens: f64 = row_tokens.iter().sum();
    match options.loss_type {
        LossType::Grpo | LossType::Sapo => {
            row_sums
                .iter()
                .zip(&row_tokens)
                .map(|(s, n)| s / n.max(1.0))
                .sum::<f64>()
                / b as f64
        }
        LossType::Bnpo | LossType::Vanilla => total / tokens.max(1.0),
        LossType::DrGrpo => total / (b * t_len) as f64,
        LossType::Dapo | LossType::Cispo | LossType::Vespo => total / tokens.max(1.0),
        LossType::Luspo => total / b as f64,
    }
}

/// The loss value itself against the plain reference above, so an objective that is wrong but
/// differentiated consistently (a min for a max) cannot pass on finite differences alone.
#[test]
fn loss_values_match_a_plain_f64_reference() {
    let mut failures = Vec::new();
    for (seed, max_log_ratio) in [(11, 0.45), (12, 1.6)] {
        let case = make_case(seed, 5, 8, max_log_ratio);
        for kind in [AdvKind::Row, AdvKind::Token] {
            for loss_type in common::loss_types() {
                for level in LEVELS {
                    for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                        let options = LossOptions {
                            loss_type,
                            importance_sampling_level: level,
                            beta,
                            kl_estimator,
                            kl_bias_correction,
                            ..LossOptions::default()
                        };
                        let (out, _) = run(
                            &case,
                            &case.logp,
                            Some(&case.old),
                            Some(&case.reference),
                            adv_view(&case, kind),
                            &case.mask,
                            &options,
                        );
                        let want = reference_loss(&case, kind, &options);
                        // Same f64 formulas summed in a different order: ~1e-15 relative; the
                        // float32 path (f32 inputs) within its bound, 1e-6 here.
                        let rtol = if uses_float32_path::<f32>(&options) {
                            1e-6
                        } else {
                            1e-12
                        };
                        if (out.loss - want).abs() > rtol * (1.0 + want.abs()) {
                            failures.push(format!(
                                "{loss_type:?}/{level:?}/beta {beta}/{kl_estimator:?}/bias \
                                 {kl_bias_correction}/max |log ratio| {max_log_ratio}: \
                                 loss {} vs reference {want}",
                                out.loss
                            ));
                        }
                    }
                }
            }
        }
    }
    let types: std::collections::BTreeSet<&str> = failures
        .iter()
        .map(|f| f.split('/').next().unwrap_or(""))
        .collect();
    assert!(
        failures.is_empty(),
        "{} mismatches, loss types {types:?}; first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

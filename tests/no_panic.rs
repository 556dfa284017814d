//! No input makes the engine panic, and whatever it accepts gives finite outputs.
//!
//! Property tests feed every public entry point arbitrary and hostile inputs: lengths that may not
//! match, NaN and infinite values, huge and negative verdicts, group sizes 0..=N+1, random group
//! ids, masks of every element type (negative, NaN and infinite weights for float masks), every
//! option value including NaN and negative epsilons, `num_items` 0, `max_completion_length` 0 and
//! huge. Every call must return `Ok` or `Err` (a panic fails the test by itself); on `Ok`, every
//! output must be finite. Deterministic tests below pin the extreme cases a property test should
//! not shrink through (they would allocate or loop for ages if the engine mishandled them).

mod common;

use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::Config;

use sgpo_rs::advantages::{group_advantages, token_advantages, AdvantageOptions, Scale, Singleton};
use sgpo_rs::elem::{FloatElem, MaskElem};
use sgpo_rs::groups::Groups;
use sgpo_rs::loss::registry::LOSS_TYPES;
use sgpo_rs::loss::{
    policy_loss, AdvantageView, Aggregation, ImportanceSamplingLevel, KlEstimator, LossInputs,
    LossOptions, LossOutput, LossType,
};
use sgpo_rs::rewards::{sgpo_rewards, DiversifyMode, RewardOptions, SgpoRewards, Verdicts};

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Bounds the time a failure spends shrinking.
        max_shrink_iters: 2000,
        // Failures print their shrunk input; keep the source tree free of regression files.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- value strategies

/// Special values that stress a kernel: overflow, underflow, exp/log edges.
const SPECIAL_F64: [f64; 22] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    f64::MAX,
    -f64::MAX,
    f64::MIN_POSITIVE,
    5e-324,
    1e300,
    -1e300,
    1e-300,
    3.5e38,
    -3.5e38,
    1e38,
    -1e38,
    709.8,
    -745.2,
    88.8,
    -103.9,
    1e5,
    -1e5,
];

fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -10.0..10.0f64,
        4 => prop::sample::select(SPECIAL_F64.to_vec()),
        1 => any::<f64>(),
    ]
}

/// The largest finite magnitude `in_f32_range` lets through.
const TAME: f64 = 1e18;

/// Finite values clamped to `+-TAME`, so that results have room within f32; NaN and infinities
/// pass unchanged. The `*_beyond_f32_range` properties use the full range.
fn in_f32_range(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(-TAME, TAME)
    } else {
        x
    }
}

/// Mostly ordinary values, sometimes hostile ones.
fn value_f64(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    prop_oneof![30 => lo..hi, 1 => hostile_f64()]
}

fn hostile_f32() -> impl Strategy<Value = f32> {
    hostile_f64().prop_map(|x| x as f32)
}

/// A length equal to `n` most of the time, anything near it otherwise.
fn length(n: usize) -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(n), 1 => 0..n + 3]
}

fn hostile_usize() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..12usize,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX / 2 + 1),
        1 => any::<usize>(),
    ]
}

/// An option scalar: usually its default, sometimes anything.
fn scalar(default: f64) -> impl Strategy<Value = f64> {
    prop_oneof![12 => Just(default), 1 => hostile_f64()]
}

// ---------------------------------------------------------------- loss inputs

#[derive(Debug, Clone)]
enum Mask {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Mask {
    /// Total weight when every weight is valid (it is, if the engine accepted it).
    fn total(&self) -> f64 {
        match self {
            Mask::Bool(m) => m.iter().map(|&w| w.weight() as f64).sum(),
            Mask::U8(m) => m.iter().map(|&w| w.weight() as f64).sum(),
            Mask::I32(m) => m.iter().map(|&w| w.weight() as f64).sum(),
            Mask::I64(m) => m.iter().map(|&w| w.weight() as f64).sum(),
            Mask::F32(m) => m.iter().map(|&w| w.weight() as f64).sum(),
            Mask::F64(m) => m.iter().map(|&w| w.weight() as f64).sum(),
        }
    }
}

fn float_weight(full_range: bool) -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => Just(1.0),
        5 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(0.5),
        1 => 0.0..4.0f64,
        1 => Just(-1.0),
        1 => Just(f64::NAN),
        1 => hostile_f64().prop_map(move |w| if full_range { w } else { in_f32_range(w) }),
    ]
}

/// A mask of any element type; `full_range`: float weights of any magnitude.
fn mask(n: usize, full_range: bool) -> impl Strategy<Value = Mask> {
    let bits = || prop_oneof![3 => Just(1i64), 2 => Just(0i64), 1 => any::<i64>()];
    length(n).prop_flat_map(move |n| {
        prop_oneof![
            prop::collection::vec(any::<bool>(), n).prop_map(Mask::Bool),
            prop::collection::vec(prop_oneof![Just(1u8), Just(0u8), any::<u8>()], n)
                .prop_map(Mask::U8),
            prop::collection::vec(
                prop_oneof![3 => Just(1i32), 2 => Just(0i32), 1 => Just(-1i32), 1 => any::<i32>()],
                n
            )
            .prop_map(Mask::I32),
            prop::collection::vec(bits(), n).prop_map(Mask::I64),
            prop::collection::vec(float_weight(full_range).prop_map(|w| w as f32), n)
                .prop_map(Mask::F32),
            prop::collection::vec(float_weight(full_range), n).prop_map(Mask::F64),
        ]
    })
}

#[derive(Debug, Clone, Copy)]
enum Dtype {
    F32,
    F64,
    Bf16,
    F16,
}

#[derive(Debug, Clone)]
struct LossCase {
    batch: usize,
    len: usize,
    dtype: Dtype,
    logp: Vec<f64>,
    old: Option<Vec<f64>>,
    reference: Option<Vec<f64>>,
    per_token: bool,
    advantages: Vec<f32>,
    mask: Mask,
    grad_len: usize,
}

fn log_probs(n: usize) -> impl Strategy<Value = Vec<f64>> {
    length(n).prop_flat_map(|n| prop::collection::vec(value_f64(-8.0, 0.0), n))
}

/// `huge_sizes`: sometimes shapes whose element count overflows (arrays are then short, and must
/// be rejected). A huge batch with len 0 is left to a deterministic test (if mishandled it would
/// allocate or loop for ages while shrinking).
fn loss_case(huge_sizes: bool) -> impl Strategy<Value = LossCase> {
    let small = (prop_oneof![1 => Just(0usize), 8 => 1..5usize], 0..6usize);
    let dims = if huge_sizes {
        prop_oneof![
            2 => small,
            1 => (hostile_usize(), 1..4usize),
            1 => (1..4usize, hostile_usize()),
        ]
        .boxed()
    } else {
        small.boxed()
    };
    dims.prop_flat_map(|(batch, len)| {
        let n = batch.saturating_mul(len).min(40);
        let rows = batch.min(40);
        (
            prop::sample::select(vec![Dtype::F32, Dtype::F64, Dtype::Bf16, Dtype::F16]),
            log_probs(n),
            prop::option::weighted(0.8, log_probs(n)),
            prop::option::weighted(0.8, log_probs(n)),
            any::<bool>(),
            (length(rows), length(n)),
            mask(n, true),
            length(n),
        )
            .prop_flat_map(
                move |(dtype, logp, old, reference, per_token, (rows, n), mask, grad_len)| {
                    let adv_len = if per_token { n } else { rows };
                    prop::collection::vec(
                        prop_oneof![20 => -3.0f32..3.0, 1 => hostile_f32()],
                        adv_len,
                    )
                    .prop_map(move |advantages| LossCase {
                        batch,
                        len,
                        dtype,
                        logp: logp.clone(),
                        old: old.clone(),
                        reference: reference.clone(),
                        per_token,
                        advantages,
                        mask: mask.clone(),
                        grad_len,
                    })
                },
            )
    })
}

fn aggregation() -> impl Strategy<Value = Aggregation> {
    prop_oneof![
        Just(Aggregation::RowMeanOfTokenMeans),
        Just(Aggregation::TokenMean),
        hostile_f64().prop_map(Aggregation::Divisor),
        (0.5..100.0f64).prop_map(Aggregation::Divisor),
        Just(Aggregation::RowMeanOfTokenSums),
        Just(Aggregation::ValidRowMeanOfTokenSums),
        Just(Aggregation::ValidRowMeanOfTokenMeans),
    ]
}

/// `huge_sizes`: `max_completion_length` up to `usize::MAX`, else below 12 (0 included).
fn loss_options(huge_sizes: bool) -> impl Strategy<Value = LossOptions> {
    let d = LossOptions::default();
    let kinds = (
        prop::sample::select(common::loss_types().collect::<Vec<_>>()),
        prop::sample::select(vec![
            ImportanceSamplingLevel::Token,
            ImportanceSamplingLevel::Sequence,
        ]),
        prop::sample::select(vec![
            KlEstimator::K1,
            KlEstimator::Abs,
            KlEstimator::K2,
            KlEstimator::K3,
            KlEstimator::LowVarKl,
        ]),
        any::<bool>(),
    );
    let clip = (
        scalar(0.2),
        prop::option::weighted(0.3, prop_oneof![Just(0.28), Just(5.0), hostile_f64()]),
        prop::option::weighted(0.2, prop_oneof![Just(1.5), hostile_f64()]),
        prop_oneof![3 => Just(0.0), 2 => Just(0.04), 1 => hostile_f64()],
        scalar(3.0),
    );
    let normalise = (
        prop::option::weighted(
            0.2,
            if huge_sizes {
                hostile_usize().boxed()
            } else {
                (0..12usize).boxed()
            },
        ),
        prop::option::weighted(0.2, prop_oneof![Just(0.0), 0.5..1e4f64, hostile_f64()]),
        prop::option::weighted(0.2, aggregation()),
        scalar(1.0),
    );
    let shapes = (
        scalar(d.sapo_temperature_pos),
        scalar(d.sapo_temperature_neg),
        scalar(d.vespo_k_pos),
        scalar(d.vespo_lambda_pos),
        scalar(d.vespo_k_neg),
        scalar(d.vespo_lambda_neg),
    );
    (kinds, clip, normalise, shapes).prop_map(
        move |(
            (loss_type, importance_sampling_level, kl_estimator, kl_bias_correction),
            (epsilon_low, epsilon_high, delta, beta, clip_ratio_c),
            (max_completion_length, num_items, aggregation, grad_scale),
            (sapo_pos, sapo_neg, k_pos, lam_pos, k_neg, lam_neg),
        )| LossOptions {
            loss_type,
            importance_sampling_level,
            epsilon_low,
            epsilon_high,
            delta,
            beta,
            kl_estimator,
            kl_bias_correction,
            max_completion_length,
            num_items,
            aggregation,
            grad_scale,
            clip_ratio_c,
            sapo_temperature_pos: sapo_pos,
            sapo_temperature_neg: sapo_neg,
            vespo_k_pos: k_pos,
            vespo_lambda_pos: lam_pos,
            vespo_k_neg: k_neg,
            vespo_lambda_neg: lam_neg,
        },
    )
}

// ---------------------------------------------------------------- loss checks

/// Metrics TRL takes a `nanmin`/`nanmax` of: NaN when no row has a token (nothing to take the
/// min of), which mirrors TRL; every other output must be finite.
const NAN_WHEN_EMPTY: [&str; 2] = ["clip_ratio/low_min", "clip_ratio/high_max"];

fn check_loss_output(
    out: &LossOutput,
    grad: &[f32],
    total_weight: f64,
) -> Result<(), TestCaseError> {
    prop_assert!(out.loss.is_finite(), "loss {}", out.loss);
    prop_assert!(
        out.loss.abs() <= f32::MAX as f64,
        "loss {} overflows f32",
        out.loss
    );
    if let Some(t) = grad.iter().position(|g| !g.is_finite()) {
        prop_assert!(false, "grad[{t}] = {}", grad[t]);
    }
    for &(key, value) in &out.metrics.0 {
        if value.is_nan() && total_weight == 0.0 && NAN_WHEN_EMPTY.contains(&key) {
            continue;
        }
        prop_assert!(value.is_finite(), "metric {key} = {value}");
    }
    Ok(())
}

fn run_loss<T: FloatElem, M: MaskElem>(
    case: &LossCase,
    convert: impl Fn(f64) -> T,
    mask: &[M],
    options: &LossOptions,
) -> Result<(), TestCaseError> {
    let conv = |xs: &[f64]| xs.iter().map(|&x| convert(x)).collect::<Vec<T>>();
    let logp = conv(&case.logp);
    let old = case.old.as_deref().map(conv);
    let reference = case.reference.as_deref().map(conv);
    let inputs = LossInputs {
        logp: &logp,
        old_logp: old.as_deref(),
        ref_logp: reference.as_deref(),
        advantages: if case.per_token {
            AdvantageView::PerToken(&case.advantages)
        } else {
            AdvantageView::PerRow(&case.advantages)
        },
        mask,
        batch: case.batch,
        len: case.len,
    };
    let mut grad = vec![f32::NAN; case.grad_len];
    match policy_loss(&inputs, options, &mut grad) {
        Ok(out) => check_loss_output(&out, &grad, case.mask.total()),
        Err(error) => {
            // Errors render (the binding turns them into messages).
            prop_assert!(!error.to_string().is_empty());
            Ok(())
        }
    }
}

fn run_loss_dtype<M: MaskElem>(
    case: &LossCase,
    mask: &[M],
    options: &LossOptions,
) -> Result<(), TestCaseError> {
    match case.dtype {
        Dtype::F32 => run_loss(case, |x| x as f32, mask, options),
        Dtype::F64 => run_loss(case, |x| x, mask, options),
        Dtype::Bf16 => run_loss(case, bf16::from_f64, mask, options),
        Dtype::F16 => run_loss(case, f16::from_f64, mask, options),
    }
}

fn run_loss_case(case: &LossCase, options: &LossOptions) -> Result<(), TestCaseError> {
    match &case.mask {
        Mask::Bool(m) => run_loss_dtype(case, m, options),
        Mask::U8(m) => run_loss_dtype(case, m, options),
        Mask::I32(m) => run_loss_dtype(case, m, options),
        Mask::I64(m) => run_loss_dtype(case, m, options),
        Mask::F32(m) => run_loss_dtype(case, m, options),
        Mask::F64(m) => run_loss_dtype(case, m, options),
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn policy_loss_never_panics(case in loss_case(false), options in loss_options(false)) {
        run_loss_case(&case, &options)?;
    }

    /// Shapes and `max_completion_length` near `usize::MAX` (products overflow).
    #[test]
    fn policy_loss_never_panics_on_huge_sizes(
        case in loss_case(true),
        options in loss_options(true),
    ) {
        run_loss_case(&case, &options)?;
    }

    /// Default options, well-formed shapes: mostly accepted inputs, so the finite-output check
    /// sees many `Ok`s of every loss type with hostile values on masked tokens.
    #[test]
    fn policy_loss_accepted_outputs_are_finite(
        case in loss_case(false),
        loss_type in prop::sample::select(common::loss_types().collect::<Vec<_>>()),
        sequence in any::<bool>(),
        beta in prop_oneof![Just(0.0), Just(0.04), -1.0..1.0f64],
    ) {
        let options = LossOptions {
            loss_type,
            importance_sampling_level: if sequence {
                ImportanceSamplingLevel::Sequence
            } else {
                ImportanceSamplingLevel::Token
            },
            beta,
            ..LossOptions::default()
        };
        run_loss_case(&case, &options)?;
    }
}

// ---------------------------------------------------------------- groups, advantages, rewards

#[derive(Debug, Clone)]
enum GroupSpec {
    Contiguous(usize, usize),
    Ids(Vec<i64>),
}

impl GroupSpec {
    fn build(&self) -> sgpo_rs::Result<Groups> {
        match self {
            GroupSpec::Contiguous(rows, size) => Groups::contiguous(*rows, *size),
            GroupSpec::Ids(ids) => Groups::from_ids(ids),
        }
    }

    fn rows(&self) -> usize {
        match self {
            GroupSpec::Contiguous(rows, _) => *rows,
            GroupSpec::Ids(ids) => ids.len(),
        }
    }
}

fn group_spec() -> impl Strategy<Value = GroupSpec> {
    prop_oneof![
        4 => (0..9usize)
            .prop_flat_map(|n| (Just(n), 0..=n + 1))
            .prop_map(|(n, g)| GroupSpec::Contiguous(n, g)),
        1 => (hostile_usize(), hostile_usize()).prop_map(|(n, g)| GroupSpec::Contiguous(n, g)),
        4 => prop::collection::vec(prop_oneof![4 => -3..3i64, 1 => any::<i64>()], 0..9)
            .prop_map(GroupSpec::Ids),
    ]
}

/// Groups must be a partition of the rows.
fn check_groups(groups: &Groups, rows: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(groups.num_rows(), rows);
    let mut seen = vec![0u32; rows];
    for g in 0..groups.num_groups() {
        let members: Vec<usize> = groups.members(g).collect();
        prop_assert!(!members.is_empty(), "group {} is empty", g);
        prop_assert!(members.windows(2).all(|w| w[0] < w[1]), "not ascending");
        for row in members {
            prop_assert!(row < rows);
            prop_assert_eq!(groups.group_of(row), g);
            seen[row] += 1;
        }
    }
    prop_assert!(seen.iter().all(|&c| c == 1), "not a partition: {:?}", seen);
    Ok(())
}

/// Rewards: mostly 0/1-like, some NaN (unscorable), some hostile; `full_range`: finite values of
/// any magnitude, else within `+-TAME`.
fn rewards_for(rows: usize, full_range: bool) -> impl Strategy<Value = Vec<f64>> {
    length(rows).prop_flat_map(move |n| {
        prop::collection::vec(
            prop_oneof![
                6 => prop::sample::select(vec![0.0, 1.0, -1.0, 0.5]),
                6 => -2.0..2.0f64,
                1 => Just(f64::NAN),
                1 => hostile_f64().prop_map(move |r| if full_range { r } else { in_f32_range(r) }),
            ],
            n,
        )
    })
}

/// Resizes `v` to `rows` entries (padding with `fill`) when `same_rows`, else leaves it be.
fn fit<T: Copy>(v: Vec<T>, rows: usize, same_rows: bool, fill: T) -> Vec<T> {
    if same_rows {
        (0..rows)
            .map(|i| v.get(i).copied().unwrap_or(fill))
            .collect()
    } else {
        v
    }
}

#[derive(Debug, Clone)]
struct AdvantageCase {
    spec: GroupSpec,
    rewards: Vec<f64>,
    options: AdvantageOptions,
    same_rows: bool,
}

fn advantage_case(full_range: bool) -> impl Strategy<Value = AdvantageCase> {
    (
        group_spec().prop_filter("small", |s| s.rows() <= 64),
        (0..10usize).prop_flat_map(move |n| rewards_for(n, full_range)),
        prop::sample::select(vec![Scale::Group, Scale::Batch, Scale::None]),
        prop::sample::select(vec![Singleton::Zero, Singleton::Unit]),
        prop_oneof![Just(1e-4), Just(1e-6), Just(0.0), hostile_f64()],
        // Usually as many rewards as rows.
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(spec, rewards, scale, singleton, eps, same_rows)| AdvantageCase {
                spec,
                rewards,
                options: AdvantageOptions {
                    scale,
                    eps,
                    singleton,
                },
                same_rows,
            },
        )
}

fn run_advantage_case(case: &AdvantageCase) -> Result<(), TestCaseError> {
    let Ok(groups) = case.spec.build() else {
        return Ok(());
    };
    let rewards = fit(case.rewards.clone(), groups.num_rows(), case.same_rows, 0.5);
    if let Ok(adv) = group_advantages(&rewards, &groups, case.options) {
        prop_assert_eq!(adv.len(), rewards.len());
        for (i, a) in adv.iter().enumerate() {
            prop_assert!(a.is_finite(), "advantage[{}] = {} for {:?}", i, a, rewards);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct RewardCase {
    spec: GroupSpec,
    rewards: Vec<f64>,
    first_error: Vec<i64>,
    num_steps: Vec<i64>,
    credit: Vec<f64>,
    use_credit: bool,
    correct: Option<Vec<bool>>,
    options: RewardOptions,
    same_rows: bool,
}

fn reward_case(full_range: bool) -> impl Strategy<Value = RewardCase> {
    let verdicts = (
        prop::collection::vec(
            prop_oneof![8 => -3..6i64, 1 => any::<i64>(), 1 => Just(i64::MIN)],
            0..10,
        ),
        prop::collection::vec(
            prop_oneof![8 => -1..7i64, 1 => any::<i64>(), 1 => Just(i64::MAX)],
            0..10,
        ),
        prop::collection::vec(
            prop_oneof![6 => 0.0..=1.0f64, 2 => Just(f64::NAN), 1 => hostile_f64()],
            0..10,
        ),
        any::<bool>(),
    );
    let credit_scale = prop_oneof![
        Just(0.5),
        0.0..2.0f64,
        hostile_f64().prop_map(move |c| if full_range { c } else { in_f32_range(c) }),
    ];
    (
        group_spec().prop_filter("small", |s| s.rows() <= 64),
        (0..10usize).prop_flat_map(move |n| rewards_for(n, full_range)),
        verdicts,
        prop::option::of(prop::collection::vec(any::<bool>(), 0..10)),
        credit_scale,
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(
                spec,
                rewards,
                (first_error, num_steps, credit, use_credit),
                correct,
                credit_scale,
                all_incorrect,
                same_rows,
            )| RewardCase {
                spec,
                rewards,
                first_error,
                num_steps,
                credit,
                use_credit,
                correct,
                options: RewardOptions {
                    credit_scale,
                    mode: if all_incorrect {
                        DiversifyMode::AllIncorrect
                    } else {
                        DiversifyMode::AllNegative
                    },
                    ..RewardOptions::default()
                },
                same_rows,
            },
        )
}

fn run_reward_case(case: &RewardCase) -> Result<(), TestCaseError> {
    let Ok(groups) = case.spec.build() else {
        return Ok(());
    };
    let (rows, same) = (groups.num_rows(), case.same_rows);
    let rewards = fit(case.rewards.clone(), rows, same, 0.0);
    let first_error = fit(case.first_error.clone(), rows, same, -2);
    let num_steps = fit(case.num_steps.clone(), rows, same, 3);
    let credit = fit(case.credit.clone(), rows, same, f64::NAN);
    let correct = case.correct.clone().map(|c| fit(c, rows, same, false));
    let verdicts = if case.use_credit {
        Verdicts::Credit(&credit)
    } else {
        Verdicts::Steps {
            first_error: &first_error,
            num_steps: &num_steps,
        }
    };
    if let Ok(out) = sgpo_rewards(
        &rewards,
        verdicts,
        correct.as_deref(),
        &groups,
        case.options,
    ) {
        check_rewards(&rewards, &out)?;
    }
    Ok(())
}

fn check_rewards(rewards: &[f64], out: &SgpoRewards) -> Result<(), TestCaseError> {
    let n = rewards.len();
    prop_assert_eq!(out.rewards.len(), n);
    prop_assert_eq!(out.credit.len(), n);
    prop_assert_eq!(out.all_negative.len(), n);
    prop_assert_eq!(out.diversified.len(), n);
    for (i, (&r, &got)) in rewards.iter().zip(&out.rewards).enumerate() {
        if r.is_nan() {
            // Unscorable rows keep NaN (TRL's convention) and are never credited.
            prop_assert!(got.is_nan() && !out.diversified[i], "row {}", i);
        } else {
            prop_assert!(
                got.is_finite(),
                "rewards[{}] = {} from finite input {}",
                i,
                got,
                r
            );
            if !out.diversified[i] {
                prop_assert_eq!(got.to_bits(), (r as f32).to_bits());
            }
        }
    }
    for &c in &out.credit {
        prop_assert!((0.0..=1.0).contains(&c), "credit {}", c);
    }
    let s = out.stats;
    prop_assert!(s.mean_credit.is_finite() && (0.0..=1.0).contains(&s.mean_credit));
    prop_assert!(s.all_negative_groups <= s.num_groups);
    prop_assert!(s.diversified_groups + s.judge_missing_groups <= s.num_groups);
    Ok(())
}

/// `(advantages, len, mask, out_len)`: lengths usually consistent, `len` sometimes huge;
/// `full_range`: advantages and float mask weights of any magnitude (their product may leave the
/// f32 range), else within `+-TAME`.
fn token_case(full_range: bool) -> impl Strategy<Value = (Vec<f32>, usize, Mask, usize)> {
    (0..6usize, prop_oneof![8 => 0..6usize, 1 => hostile_usize()]).prop_flat_map(
        move |(rows, len)| {
            let n = rows.saturating_mul(len).min(40);
            let value = prop_oneof![
                10 => -3.0f64..3.0,
                1 => hostile_f64().prop_map(move |a| if full_range { a } else { in_f32_range(a) }),
            ];
            (
                length(rows).prop_flat_map(move |r| {
                    prop::collection::vec(value.clone().prop_map(|a| a as f32), r)
                }),
                Just(len),
                mask(n, full_range),
                length(n),
            )
        },
    )
}

fn run_tokens<M: MaskElem>(
    adv: &[f32],
    mask: &[M],
    len: usize,
    out_len: usize,
) -> Result<(), TestCaseError> {
    let mut out = vec![f32::NAN; out_len];
    if token_advantages(adv, mask, len, &mut out).is_ok() {
        for (k, o) in out.iter().enumerate() {
            prop_assert!(o.is_finite(), "out[{}] = {}", k, o);
        }
    }
    Ok(())
}

fn run_token_case(
    (adv, len, mask, out_len): &(Vec<f32>, usize, Mask, usize),
) -> Result<(), TestCaseError> {
    let (len, out_len) = (*len, *out_len);
    match mask {
        Mask::Bool(m) => run_tokens(adv, m, len, out_len),
        Mask::U8(m) => run_tokens(adv, m, len, out_len),
        Mask::I32(m) => run_tokens(adv, m, len, out_len),
        Mask::I64(m) => run_tokens(adv, m, len, out_len),
        Mask::F32(m) => run_tokens(adv, m, len, out_len),
        Mask::F64(m) => run_tokens(adv, m, len, out_len),
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn groups_never_panic_and_partition_the_rows(spec in group_spec()) {
        if let Ok(groups) = spec.build() {
            if groups.num_rows() <= 1 << 16 {
                check_groups(&groups, spec.rows())?;
            }
        }
    }

    #[test]
    fn group_advantages_never_panic(case in advantage_case(false)) {
        run_advantage_case(&case)?;
    }

    /// Finite rewards of any magnitude: advantages beyond f32 must be an error, not infinity.
    #[test]
    fn group_advantages_never_panic_beyond_f32_range(case in advantage_case(true)) {
        run_advantage_case(&case)?;
    }

    #[test]
    fn token_advantages_never_panic(case in token_case(false)) {
        run_token_case(&case)?;
    }

    /// Advantage times weight may leave the f32 range: an error, not infinity.
    #[test]
    fn token_advantages_never_panic_beyond_f32_range(case in token_case(true)) {
        run_token_case(&case)?;
    }

    #[test]
    fn sgpo_rewards_never_panic(case in reward_case(false)) {
        run_reward_case(&case)?;
    }

    /// Finite rewards and credit scales of any magnitude: not returned as infinity.
    #[test]
    fn sgpo_rewards_never_panic_beyond_f32_range(case in reward_case(true)) {
        run_reward_case(&case)?;
    }

    /// Every string option parser accepts exactly its names (the loss types: the registry's) and
    /// refuses anything else with an error that names the argument and quotes the input.
    #[test]
    fn parsers_accept_exactly_their_names(
        name in prop_oneof![
            ".{0,24}".boxed(),
            prop::sample::select(KNOWN_NAMES.to_vec()).prop_map(String::from).boxed(),
            prop::sample::select(KNOWN_NAMES.to_vec()).prop_map(|n| format!("{n} ")).boxed(),
        ],
        factor in prop::option::of(hostile_f64()),
        len in hostile_usize(),
    ) {
        let loss_types: Vec<&str> = LOSS_TYPES.iter().map(|spec| spec.name).collect();
        check_parser("loss_type", &name, &loss_types, LossType::parse(&name).map(|t| t.name()))?;
        check_parser(
            "importance_sampling_level",
            &name,
            &["token", "sequence"],
            ImportanceSamplingLevel::parse(&name).map(|l| l.name()),
        )?;
        check_parser(
            "kl_estimator",
            &name,
            &["k1", "abs", "k2", "k3", "low_var_kl"],
            KlEstimator::parse(&name).map(|k| k.name()),
        )?;
        check_parser("scale", &name, &["group", "batch", "none"], Scale::parse(&name).map(|_| ""))?;
        check_parser("singleton", &name, &["zero", "unit"], Singleton::parse(&name).map(|_| ""))?;
        check_parser(
            "mode",
            &name,
            &["all_negative", "all_incorrect"],
            DiversifyMode::parse(&name).map(|_| ""),
        )?;
        let verl_modes = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"];
        check_parser("loss_agg_mode", &name, &verl_modes, Aggregation::parse_verl(&name, factor, len).map(|_| ""))?;
    }
}

/// Every name the parsers know, so the property draws accepted names as often as refused ones.
const KNOWN_NAMES: &[&str] = &[
    "grpo",
    "bnpo",
    "dr_grpo",
    "dapo",
    "cispo",
    "sapo",
    "luspo",
    "vespo",
    "vanilla",
    "token",
    "sequence",
    "k1",
    "abs",
    "k2",
    "k3",
    "low_var_kl",
    "group",
    "batch",
    "none",
    "zero",
    "unit",
    "all_negative",
    "all_incorrect",
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
];

/// `parsed` is Ok exactly for the names in `accepted` (and gives back the name, where the type
/// has one), else an error naming `arg` and quoting `name`.
fn check_parser(
    arg: &str,
    name: &str,
    accepted: &[&str],
    parsed: sgpo_rs::Result<&'static str>,
) -> Result<(), TestCaseError> {
    match parsed {
        Ok(round_trip) => {
            prop_assert!(accepted.contains(&name), "{arg} accepted {name:?}");
            prop_assert!(
                round_trip.is_empty() || round_trip == name,
                "{arg}: {name:?} -> {round_trip:?}"
            );
        }
        Err(error) => {
            prop_assert!(!accepted.contains(&name), "{arg} refused {name:?}: {error}");
            let message = error.to_string();
            prop_assert!(message.starts_with(arg), "{message}");
            prop_assert!(message.contains(&format!("{name:?}")), "{message}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- pinned extreme cases

fn options_of(loss_type: LossType) -> LossOptions {
    LossOptions {
        loss_type,
        ..LossOptions::default()
    }
}

/// `batch * len` overflows usize: the arrays cannot have that many elements, so the call must be
/// rejected (not panic on the multiplication, nor wrap to 0 and accept empty arrays).
#[test]
fn shape_whose_element_count_overflows_is_rejected() {
    for (batch, len) in [
        (usize::MAX / 2 + 1, 2),
        (2, usize::MAX / 2 + 1),
        (usize::MAX, usize::MAX),
    ] {
        let inputs = LossInputs::<f32, bool> {
            logp: &[],
            old_logp: None,
            ref_logp: None,
            advantages: AdvantageView::PerToken(&[]),
            mask: &[],
            batch,
            len,
        };
        let result = policy_loss(&inputs, &LossOptions::default(), &mut []);
        assert!(result.is_err(), "({batch}, {len}) accepted: {result:?}");
    }
}

/// A `(huge, 0)` batch is a real numpy shape (zero bytes). It holds no token: the call must
/// return at once, with an error or a finite result, never try to allocate per-row state.
#[test]
fn huge_batch_of_empty_rows_returns_at_once() {
    let inputs = LossInputs::<f32, bool> {
        logp: &[],
        old_logp: None,
        ref_logp: None,
        advantages: AdvantageView::PerToken(&[]),
        mask: &[],
        batch: usize::MAX,
        len: 0,
    };
    for loss_type in [LossType::Dapo, LossType::Grpo, LossType::DrGrpo] {
        if let Ok(out) = policy_loss(&inputs, &options_of(loss_type), &mut []) {
            check_loss_output(&out, &[], 0.0).unwrap();
        }
    }
}

/// dr_grpo divides by `B * max_completion_length`; a huge `max_completion_length` must not
/// overflow that product.
#[test]
fn dr_grpo_with_huge_max_completion_length_does_not_overflow() {
    let inputs = LossInputs::<f32, bool> {
        logp: &[-1.0, -2.0, -0.5, -0.25],
        old_logp: None,
        ref_logp: None,
        advantages: AdvantageView::PerRow(&[1.0, -1.0]),
        mask: &[true, true, true, false],
        batch: 2,
        len: 2,
    };
    for max_completion_length in [usize::MAX, usize::MAX / 2 + 1, 1 << 62] {
        let options = LossOptions {
            max_completion_length: Some(max_completion_length),
            ..options_of(LossType::DrGrpo)
        };
        let mut grad = [f32::NAN; 4];
        if let Ok(out) = policy_loss(&inputs, &options, &mut grad) {
            check_loss_output(&out, &grad, 3.0).unwrap();
        }
    }
}

/// Finite rewards beyond the f32 range must not come back as infinity.
#[test]
fn sgpo_rewards_outside_f32_range_are_not_returned_as_infinity() {
    let groups = Groups::contiguous(2, 2).unwrap();
    let steps = Verdicts::Steps {
        first_error: &[0, -1],
        num_steps: &[2, 2],
    };
    let huge_reward = sgpo_rewards(
        &[-1e300, 0.0],
        steps,
        None,
        &groups,
        RewardOptions::default(),
    );
    let huge_scale = sgpo_rewards(
        &[0.0, 0.0],
        steps,
        None,
        &groups,
        RewardOptions {
            credit_scale: 1e300,
            mode: DiversifyMode::AllNegative,
            ..RewardOptions::default()
        },
    );
    for out in [huge_reward, huge_scale].into_iter().flatten() {
        assert!(out.rewards.iter().all(|r| r.is_finite()), "{out:?}");
    }
}

/// Advantages are f32: a finite f64 result beyond the f32 range must be an error, not infinity.
#[test]
fn group_advantages_outside_f32_range_are_not_returned_as_infinity() {
    let groups = Groups::contiguous(2, 2).unwrap();
    let none = AdvantageOptions {
        scale: Scale::None,
        ..AdvantageOptions::TRL
    };
    let singletons = Groups::contiguous(2, 1).unwrap();
    for adv in [
        group_advantages(&[1e39, -1e39], &groups, none),
        group_advantages(&[1e39, -1e39], &singletons, AdvantageOptions::VERL),
    ]
    .into_iter()
    .flatten()
    {
        assert!(adv.iter().all(|a| a.is_finite()), "{adv:?}");
    }
}

/// A finite advantage times a finite (large) mask weight can overflow f32.
#[test]
fn token_advantages_overflow_is_not_returned_as_infinity() {
    let mut out = [0.0f32; 2];
    if token_advantages(&[2.0, -3.0], &[3e38f32, 1e38], 1, &mut out).is_ok() {
        assert!(out.iter().all(|o| o.is_finite()), "{out:?}");
    }
    if token_advantages(&[1e30, 1.0], &[i64::MAX, 1], 1, &mut out).is_ok() {
        assert!(out.iter().all(|o| o.is_finite()), "{out:?}");
    }
}

/// Each token's KL is finite and the loss (scaled by a tiny beta) is finite, but the KL metric's
/// sum overflows f64: an accepted call must not report an infinite metric.
#[test]
fn kl_metric_stays_finite_when_the_loss_is() {
    let inputs = LossInputs::<f64, bool> {
        logp: &[1e308, 1e308],
        old_logp: None,
        ref_logp: Some(&[-5e307, -5e307]),
        advantages: AdvantageView::PerRow(&[1.0]),
        mask: &[true, true],
        batch: 1,
        len: 2,
    };
    let options = LossOptions {
        beta: 1e-300,
        kl_estimator: KlEstimator::K1,
        ..LossOptions::default()
    };
    let mut grad = [f32::NAN; 2];
    if let Ok(out) = policy_loss(&inputs, &options, &mut grad) {
        check_loss_output(&out, &grad, 2.0).unwrap();
    }
}

/// VESPO's weight `phi = exp(lam + k log w - lam w)` just below the f64 limit on two rows whose
/// advantage is 0 (so the loss is 0): the mean-phi metric must not overflow to infinity.
#[test]
fn vespo_phi_metric_stays_finite_when_the_loss_is() {
    // log w = 1 on both rows: phi = exp(3 + 714.5 - 3e) ~ e^709.35 ~ 1.2e308 each.
    let inputs = LossInputs::<f32, bool> {
        logp: &[-1.0, -1.0],
        old_logp: Some(&[-2.0, -2.0]),
        ref_logp: None,
        advantages: AdvantageView::PerRow(&[0.0, 0.0]),
        mask: &[true, true],
        batch: 2,
        len: 1,
    };
    let options = LossOptions {
        loss_type: LossType::Vespo,
        vespo_k_pos: 714.5,
        ..LossOptions::default()
    };
    let mut grad = [f32::NAN; 2];
    if let Ok(out) = policy_loss(&inputs, &options, &mut grad) {
        check_loss_output(&out, &grad, 2.0).unwrap();
    }
}

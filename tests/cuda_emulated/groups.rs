//! The group kernels (`cuda::groups::sgpo_rewards`, `group_advantages`, `token_advantages`)
//! against `sgpo_rs::rewards::sgpo_rewards`, `sgpo_rs::advantages::group_advantages` and
//! `token_advantages`.
//!
//! Both sides evaluate the same float64 formulas member by member in row order and round once,
//! so rewards, credits, flags, counts, group- and none-scaled advantages and token advantages
//! must be bit-identical. Two results come from sums in another order: the mean credit (the
//! kernels sum it by group in sorted-id order, the CPU in first-appearance order: 1e-12
//! relative) and the batch standard deviation (a block reduction: batch-scaled advantages
//! within 1 float32 ulp).

use sgpo_rs::advantages::{AdvantageOptions, Scale, Singleton};
use sgpo_rs::cuda::groups::{
    self, reward_scratch_len, GroupTensors, RewardTensors, REWARD_STATS_LEN,
};
use sgpo_rs::cuda::status;
use sgpo_rs::groups::Groups;
use sgpo_rs::rewards::{CreditRule, DiversifyMode, RewardOptions, Verdicts};

use super::support::{
    assert_both_raise, assert_near, input, output, ulps_f32, Align, Mask, MaskDtype, Placed, Status,
};
use crate::common::Rng;

/// How the rows form groups: `size` consecutive rows (TRL), or one id per row (verl).
#[derive(Debug, Clone)]
enum Grouping {
    Consecutive(usize),
    Ids(Vec<i64>),
}

/// The CSR form the Python wrapper builds from group ids on the device: `order` lists the rows
/// group by group (groups by sorted id, rows ascending: a stable sort), `starts` the offsets.
struct Csr {
    order: Vec<i64>,
    starts: Vec<i64>,
}

impl Csr {
    fn of(ids: &[i64]) -> Csr {
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let group = |id| distinct.binary_search(&id).expect("an id") as i64;
        let mut order: Vec<i64> = (0..ids.len() as i64).collect();
        order.sort_by_key(|&row| group(ids[row as usize]));
        let mut starts = vec![0i64; distinct.len() + 1];
        for &id in ids {
            starts[group(id) as usize + 1] += 1;
        }
        for g in 0..distinct.len() {
            starts[g + 1] += starts[g];
        }
        Csr { order, starts }
    }
}

impl Grouping {
    fn cpu(&self, rows: usize) -> Groups {
        match self {
            Grouping::Consecutive(size) => Groups::contiguous(rows, *size).expect("groups"),
            Grouping::Ids(ids) => Groups::from_ids(ids).expect("groups"),
        }
    }

    /// `f` with the kernels' description of the groups (CSR buffers live for the call).
    fn with_device<R>(&self, f: impl FnOnce(GroupTensors<'_>) -> R) -> R {
        match self {
            Grouping::Consecutive(size) => f(GroupTensors::Consecutive(*size)),
            Grouping::Ids(ids) => {
                let csr = Csr::of(ids);
                let order = input(&csr.order, "int64", &[csr.order.len()]);
                let starts = input(&csr.starts, "int64", &[csr.starts.len()]);
                f(GroupTensors::Ids {
                    order: &order,
                    starts: &starts,
                })
            }
        }
    }

    fn num_groups(&self, rows: usize) -> usize {
        self.cpu(rows).num_groups()
    }

    fn label(&self) -> String {
        match self {
            Grouping::Consecutive(size) => format!("groups of {size}"),
            Grouping::Ids(ids) => format!("ids, {} groups", self.num_groups(ids.len())),
        }
    }
}

/// Group ids for `rows` rows: groups of 1 to `max_size` rows, ids unsorted and interleaved.
fn random_ids(rng: &mut Rng, rows: usize, max_size: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(rows);
    let mut next = 0i64;
    while ids.len() < rows {
        let size = (1 + rng.below(max_size)).min(rows - ids.len());
        ids.extend(std::iter::repeat_n(1000 - 7 * next, size));
        next += 1;
    }
    // Shuffle (Fisher-Yates): members of a group stand anywhere in the batch.
    for i in (1..rows).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    ids
}

/// The judge's verdicts as data.
enum VerdictData {
    Steps {
        first_error: Vec<i64>,
        num_steps: Vec<i64>,
    },
    Credit(Vec<f64>),
}

impl VerdictData {
    fn random_steps(rng: &mut Rng, rows: usize) -> VerdictData {
        let num_steps: Vec<i64> = (0..rows).map(|_| 1 + rng.below(8) as i64).collect();
        let first_error = num_steps
            .iter()
            .map(|&n| (rng.below(11) as i64 - 2).min(n - 1))
            .collect();
        VerdictData::Steps {
            first_error,
            num_steps,
        }
    }

    fn random_credit(rng: &mut Rng, rows: usize) -> VerdictData {
        VerdictData::Credit(
            (0..rows)
                .map(|_| match rng.below(8) {
                    0 => f64::NAN,
                    1 => 0.0,
                    2 => 1.0,
                    _ => rng.uniform(0.0, 1.0),
                })
                .collect(),
        )
    }

    fn cpu(&self) -> Verdicts<'_> {
        match self {
            VerdictData::Steps {
                first_error,
                num_steps,
            } => Verdicts::Steps {
                first_error,
                num_steps,
            },
            VerdictData::Credit(c) => Verdicts::Credit(c),
        }
    }
}

/// Outcome rewards: mostly 0 and 1 (TRL's accuracy rewards), NaN for unscorable rows, and a
/// few other values.
fn random_rewards(rng: &mut Rng, rows: usize) -> Vec<f64> {
    (0..rows)
        .map(|_| match rng.below(10) {
            0..=4 => 0.0,
            5 | 6 => 1.0,
            7 => f64::NAN,
            8 => -0.5,
            _ => rng.uniform(-1.0, 2.0),
        })
        .collect()
}

/// One reward-rule case.
struct RewardCase {
    rewards: Vec<f64>,
    verdicts: VerdictData,
    correct: Option<Vec<bool>>,
    grouping: Grouping,
    options: RewardOptions,
}

/// What the kernels gave for a reward case.
struct RewardRun {
    rewards: Vec<f32>,
    credit: Vec<f32>,
    all_negative: Vec<u8>,
    diversified: Vec<u8>,
    stats: Vec<f64>,
    status: Status,
}

fn run_rewards(case: &RewardCase) -> RewardRun {
    let rows = case.rewards.len();
    let num_groups = case.grouping.num_groups(rows);
    let mut run = RewardRun {
        rewards: vec![f32::NAN; rows],
        credit: vec![f32::NAN; rows],
        all_negative: vec![0xAA; rows],
        diversified: vec![0xAA; rows],
        stats: vec![f64::NAN; REWARD_STATS_LEN],
        status: Status::new(),
    };
    let mut scratch = vec![f64::NAN; reward_scratch_len(num_groups)];
    let row_input = |data: &[i64]| input(data, "int64", &[rows]);
    let (first_error, num_steps, credit) = match &case.verdicts {
        VerdictData::Steps {
            first_error,
            num_steps,
        } => (
            Some(row_input(first_error)),
            Some(row_input(num_steps)),
            None,
        ),
        VerdictData::Credit(c) => (None, None, Some(input(c, "float64", &[rows]))),
    };
    let correct: Option<Vec<u8>> = case
        .correct
        .as_ref()
        .map(|c| c.iter().map(|&x| u8::from(x)).collect());
    let d_correct = correct.as_ref().map(|c| input(c, "uint8", &[rows]));
    let scratch_len = scratch.len();
    let tensors = RewardTensors {
        rewards: &input(&case.rewards, "float64", &[rows]),
        first_error: first_error.as_ref(),
        num_steps: num_steps.as_ref(),
        credit: credit.as_ref(),
        correct: d_correct.as_ref(),
        out_rewards: &output(&mut run.rewards, "float32", &[rows]),
        out_credit: &output(&mut run.credit, "float32", &[rows]),
        all_negative: &output(&mut run.all_negative, "uint8", &[rows]),
        diversified: &output(&mut run.diversified, "uint8", &[rows]),
        stats: &output(&mut run.stats, "float64", &[REWARD_STATS_LEN]),
        scratch: &output(&mut scratch, "float64", &[scratch_len]),
        status: &run.status.tensor(),
    };
    case.grouping
        .with_device(|groups| groups::sgpo_rewards(0, groups, &tensors, case.options))
        .expect("launches");
    run
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn check_rewards(what: &str, case: &RewardCase) {
    let rows = case.rewards.len();
    let groups = case.grouping.cpu(rows);
    let cpu = sgpo_rs::rewards::sgpo_rewards(
        &case.rewards,
        case.verdicts.cpu(),
        case.correct.as_deref(),
        &groups,
        case.options,
    )
    .unwrap_or_else(|e| panic!("{what}: the CPU engine refused clean inputs: {e}"));
    let run = run_rewards(case);
    run.status.assert_clean(what);
    assert!(
        same_bits(&run.rewards, &cpu.rewards),
        "{what}: rewards {:?} vs cpu {:?}",
        run.rewards,
        cpu.rewards
    );
    assert!(
        same_bits(&run.credit, &cpu.credit),
        "{what}: credit {:?} vs cpu {:?}",
        run.credit,
        cpu.credit
    );
    let flags = |v: &[bool]| v.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>();
    assert_eq!(
        run.all_negative,
        flags(&cpu.all_negative),
        "{what}: all_negative"
    );
    assert_eq!(
        run.diversified,
        flags(&cpu.diversified),
        "{what}: diversified"
    );
    let s = &cpu.stats;
    let counts = [
        s.all_negative_groups,
        s.diversified_groups,
        s.judge_missing_groups,
    ];
    assert_eq!(
        run.stats[..3].to_vec(),
        counts.map(|c| c as f64).to_vec(),
        "{what}: group counts"
    );
    let credited = run.stats[4];
    let mean = if credited > 0.0 {
        run.stats[3] / credited
    } else {
        0.0
    };
    assert_eq!(
        credited,
        cpu.diversified.iter().filter(|&&d| d).count() as f64,
        "{what}: credited rows"
    );
    assert_near(
        &format!("{what}: mean credit"),
        mean,
        s.mean_credit,
        1e-12 * s.mean_credit.abs(),
    );
}

const RULES: [CreditRule; 3] = [
    CreditRule::Prefix,
    CreditRule::Logistic {
        beta: 5.0,
        gamma: 0.5,
    },
    CreditRule::Logistic {
        beta: 40.0,
        gamma: 0.2,
    },
];

const MODES: [DiversifyMode; 2] = [DiversifyMode::AllNegative, DiversifyMode::AllIncorrect];

/// `(rows, group size)`: one row; small groups; 1024 rows in groups of 8; 600 singletons (more
/// groups than one block's 256 threads).
const REWARD_SHAPES: [(usize, usize); 5] = [(1, 1), (8, 4), (12, 3), (1024, 8), (600, 1)];

#[test]
fn sgpo_rewards_every_rule_mode_grouping_and_verdict_kind_match_the_cpu_engine() {
    let mut rng = Rng(41);
    let mut k = 0;
    for (rows, size) in REWARD_SHAPES {
        for rule in RULES {
            for mode in MODES {
                k += 1;
                let rewards = random_rewards(&mut rng, rows);
                let grouping = if k % 2 == 0 {
                    Grouping::Consecutive(size)
                } else {
                    Grouping::Ids(random_ids(&mut rng, rows, 2 * size))
                };
                let verdicts = if k % 3 == 0 {
                    VerdictData::random_credit(&mut rng, rows)
                } else {
                    VerdictData::random_steps(&mut rng, rows)
                };
                let correct = (k % 4 < 2).then(|| (0..rows).map(|_| rng.chance(30)).collect());
                let case = RewardCase {
                    rewards,
                    verdicts,
                    correct,
                    grouping,
                    options: RewardOptions {
                        credit_scale: [0.5, 0.3, 1.0][k % 3],
                        mode,
                        rule,
                    },
                };
                let what = format!(
                    "{rows} rows ({:?}), {rule:?}, {mode:?}, credit {}, correct {}",
                    case.grouping.label(),
                    matches!(case.verdicts, VerdictData::Credit(_)),
                    case.correct.is_some()
                );
                check_rewards(&what, &case);
            }
        }
    }
}

#[test]
fn sgpo_rewards_all_negative_groups_without_verdicts_and_nan_rows_match_the_cpu_engine() {
    // Group 0: all wrong, all judged (diversified); 1: all wrong, one unjudged (judge missing);
    // 2: all NaN (unscorable: not all-negative); 3: one right; 4: wrong and NaN rows.
    let rewards = [
        0.0,
        0.0,
        0.0,
        0.0,
        f64::NAN,
        f64::NAN,
        1.0,
        0.0,
        0.0,
        f64::NAN,
    ];
    let first_error = [1, -1, 0, -2, 0, -2, -2, 2, 0, 1];
    let num_steps = [4, 3, 2, 5, 1, 0, 0, 3, 2, 2];
    for mode in MODES {
        for rule in RULES {
            for grouping in [
                Grouping::Consecutive(2),
                Grouping::Ids(vec![9, 9, 4, 4, 0, 0, 5, 5, 1, 1]),
            ] {
                let case = RewardCase {
                    rewards: rewards.to_vec(),
                    verdicts: VerdictData::Steps {
                        first_error: first_error.to_vec(),
                        num_steps: num_steps.to_vec(),
                    },
                    correct: None,
                    grouping,
                    options: RewardOptions {
                        credit_scale: 0.5,
                        mode,
                        rule,
                    },
                };
                check_rewards(&format!("hand-made groups {mode:?} {rule:?}"), &case);
            }
        }
    }
}

/// The kernels' group-normalised advantages of `rewards` and the status.
fn run_group_advantages(
    rewards: &[f64],
    grouping: &Grouping,
    options: AdvantageOptions,
) -> (Vec<f32>, Status) {
    let rows = rewards.len();
    let mut out = vec![f32::NAN; rows];
    let mut scratch = [f64::NAN];
    let mut status = Status::new();
    let (d_out, d_scratch, d_status) = (
        output(&mut out, "float32", &[rows]),
        output(&mut scratch, "float64", &[1]),
        status.tensor(),
    );
    let d_rewards = input(rewards, "float64", &[rows]);
    grouping
        .with_device(|groups| {
            groups::group_advantages(
                0, groups, &d_rewards, options, &d_out, &d_scratch, &d_status,
            )
        })
        .expect("launches");
    (out, status)
}

/// Group-normalised advantages of `rewards` on both sides; batch scale within 1 ulp, the
/// others bit-identical.
fn check_advantages(what: &str, rewards: &[f64], grouping: &Grouping, options: AdvantageOptions) {
    let rows = rewards.len();
    let cpu = sgpo_rs::advantages::group_advantages(rewards, &grouping.cpu(rows), options)
        .unwrap_or_else(|e| panic!("{what}: the CPU engine refused clean inputs: {e}"));
    let (out, status) = run_group_advantages(rewards, grouping, options);
    status.assert_clean(what);
    let max_ulps = if options.scale == Scale::Batch { 1 } else { 0 };
    for (row, (&g, &c)) in out.iter().zip(&cpu).enumerate() {
        assert!(
            ulps_f32(g, c) <= max_ulps,
            "{what}: advantage[{row}] {g:e} vs cpu {c:e}"
        );
    }
}

const SCALES: [Scale; 3] = [Scale::Group, Scale::Batch, Scale::None];

#[test]
fn group_advantages_every_scale_and_singleton_rule_match_the_cpu_engine() {
    let mut rng = Rng(42);
    for (rows, size) in REWARD_SHAPES {
        for scale in SCALES {
            for (singleton, eps) in [
                (Singleton::Zero, 1e-4),
                (Singleton::Unit, 1e-6),
                (Singleton::Unit, 0.0),
            ] {
                let rewards = random_rewards(&mut rng, rows);
                let options = AdvantageOptions {
                    scale,
                    eps,
                    singleton,
                };
                for grouping in [
                    Grouping::Consecutive(size),
                    Grouping::Ids(random_ids(&mut rng, rows, 2 * size)),
                ] {
                    let what = format!("{rows} rows, {}, {options:?}", grouping.label());
                    check_advantages(&what, &rewards, &grouping, options);
                }
            }
        }
    }
}

#[test]
fn group_advantages_low_variance_singleton_and_nan_groups_match_the_cpu_engine() {
    // Groups of two: equal rewards; verl issue 6348's [1, 1.00001]; all NaN; one NaN (a
    // singleton by count); rewards of 1e6 apart by 1e-9 relative; a plain pair.
    let rewards = [
        0.5,
        0.5,
        1.0,
        1.00001,
        f64::NAN,
        f64::NAN,
        2.0,
        f64::NAN,
        1e6,
        1e6 + 1e-3,
        -1.0,
        3.0,
    ];
    for scale in SCALES {
        for (singleton, eps) in [
            (Singleton::Zero, 1e-4),
            (Singleton::Unit, 1e-6),
            (Singleton::Zero, 0.0),
        ] {
            let options = AdvantageOptions {
                scale,
                eps,
                singleton,
            };
            for grouping in [
                Grouping::Consecutive(2),
                Grouping::Ids(vec![5, 5, 3, 3, 8, 8, 1, 1, 0, 0, 7, 7]),
            ] {
                check_advantages(
                    &format!("low variance {options:?}"),
                    &rewards,
                    &grouping,
                    options,
                );
            }
        }
    }
}

/// The token broadcast on both sides: bit-identical.
fn check_token_advantages<M: Mask>(
    what: &str,
    advantages: &[f32],
    weights: &[f32],
    len: usize,
    mask_align: Align,
    out_align: Align,
) {
    let rows = advantages.len();
    let mask: Vec<M> = weights.iter().map(|&w| M::from_weight(w)).collect();
    let mut want = vec![0f32; rows * len];
    sgpo_rs::advantages::token_advantages(advantages, &mask, len, &mut want)
        .unwrap_or_else(|e| panic!("{what}: the CPU engine refused clean inputs: {e}"));
    let mask = Placed::new(&mask, mask_align);
    let mut out = Placed::new(&vec![f32::NAN; rows * len], out_align);
    let mut status = Status::new();
    groups::token_advantages(
        0,
        &input(advantages, "float32", &[rows]),
        &mask.input(M::DTYPE, &[rows, len]),
        &out.output("float32", &[rows, len]),
        &status.tensor(),
    )
    .expect("launches");
    status.assert_clean(what);
    for (k, (&g, &w)) in out.get().iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: out[{k}] {g} vs cpu {w}");
    }
}

#[test]
fn token_advantages_every_mask_type_and_alignment_match_the_cpu_engine() {
    let mut rng = Rng(43);
    // Rows of 1 and 3 (heads of every length before a row's 16-byte boundary), 77 (head, body
    // and tail), 1029 (two chunks per row, unaligned) and 2048 (aligned, two chunks).
    for (rows, len) in [(5, 1), (7, 3), (30, 77), (5, 1029), (3, 2048)] {
        for mask in [MaskDtype::Bool, MaskDtype::U8, MaskDtype::F32] {
            // Co-aligned mask and output (16-byte stores), a mask one element off (scalar), an
            // output one element off (scalar).
            for (mask_align, out_align) in [
                (Align::On16, Align::On16),
                (Align::Off16, Align::On16),
                (Align::On16, Align::Off16),
            ] {
                let advantages: Vec<f32> =
                    (0..rows).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
                let weights: Vec<f32> = (0..rows * len)
                    .map(|_| {
                        if rng.chance(30) {
                            0.0
                        } else {
                            *rng.pick(mask.weights())
                        }
                    })
                    .collect();
                let what = format!("{rows}x{len} {mask:?} mask {mask_align:?} out {out_align:?}");
                match mask {
                    MaskDtype::Bool => check_token_advantages::<bool>(
                        &what,
                        &advantages,
                        &weights,
                        len,
                        mask_align,
                        out_align,
                    ),
                    MaskDtype::U8 => check_token_advantages::<u8>(
                        &what,
                        &advantages,
                        &weights,
                        len,
                        mask_align,
                        out_align,
                    ),
                    MaskDtype::F32 => check_token_advantages::<f32>(
                        &what,
                        &advantages,
                        &weights,
                        len,
                        mask_align,
                        out_align,
                    ),
                }
            }
        }
    }
}

// --- bad inputs ---------------------------------------------------------------------------------

/// Eight rows in groups of two (consecutive and as ids), judged 0/1 rewards.
fn clean_reward_case(grouping: Grouping) -> RewardCase {
    RewardCase {
        rewards: vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        verdicts: VerdictData::Steps {
            first_error: vec![1, 0, -2, 2, -1, 0, -2, -2],
            num_steps: vec![3, 2, 0, 4, 2, 1, 0, 0],
        },
        correct: None,
        grouping,
        options: RewardOptions::default(),
    }
}

/// A bad value put into the clean reward case, and what must follow (see
/// [`assert_both_raise`]).
struct BadReward {
    name: &'static str,
    spoil: fn(&mut RewardCase),
    arg: &'static str,
    bit: u32,
    row: u64,
}

#[rustfmt::skip]
fn bad_rewards() -> Vec<BadReward> {
    let case = |name, spoil, arg, bit, row| BadReward { name, spoil, arg, bit, row };
    let (verdict, credit) = (status::BAD_VERDICT, status::BAD_CREDIT);
    vec![
        // name, spoil, CPU error's argument, bit, first row
        case("first_error -3", |c| set_step(c, 5, Some(-3), None), "first_error", verdict, 5),
        case("first_error = num_steps", |c| set_step(c, 3, Some(4), None), "first_error", verdict, 3),
        case("num_steps 0 on a judged row", |c| set_step(c, 4, None, Some(0)), "num_steps", verdict, 4),
        case("num_steps -1 on an unjudged row", |c| set_step(c, 2, None, Some(-1)), "num_steps", verdict, 2),
        case("credit 1.5", |c| c.verdicts = credit_with(3, 1.5), "credit", credit, 3),
        case("credit -0.1", |c| c.verdicts = credit_with(6, -0.1), "credit", credit, 6),
        case("credit inf", |c| c.verdicts = credit_with(1, f64::INFINITY), "credit", credit, 1),
        case("infinite reward", |c| c.rewards[6] = f64::NEG_INFINITY, "rewards", status::NONFINITE_REWARD, 6),
        case("reward past float32", |c| c.rewards[7] = 1e39, "rewards", status::OVERFLOW, 7),
        // A large reward marked incorrect, then credited (1/3 of 2e38) past float32's range.
        case("credit past float32", |c| {
            c.rewards[0] = 3e38;
            c.correct = Some(vec![false; 8]);
            c.options.credit_scale = 2e38;
        }, "rewards", status::OVERFLOW, 0),
    ]
}

#[test]
fn sgpo_rewards_bad_verdicts_and_rewards_set_the_status_where_the_cpu_engine_raises() {
    for bad in bad_rewards() {
        for grouping in [
            Grouping::Consecutive(2),
            Grouping::Ids(vec![3, 3, 1, 1, 2, 2, 0, 0]),
        ] {
            let mut case = clean_reward_case(grouping);
            (bad.spoil)(&mut case);
            let groups = case.grouping.cpu(case.rewards.len());
            let cpu = sgpo_rs::rewards::sgpo_rewards(
                &case.rewards,
                case.verdicts.cpu(),
                case.correct.as_deref(),
                &groups,
                case.options,
            );
            let run = run_rewards(&case);
            let what = format!("{} ({})", bad.name, case.grouping.label());
            assert_both_raise(&what, cpu, &run.status, bad.arg, bad.bit, bad.row);
        }
    }
}

fn set_step(case: &mut RewardCase, row: usize, first_error: Option<i64>, num_steps: Option<i64>) {
    let VerdictData::Steps {
        first_error: k,
        num_steps: n,
    } = &mut case.verdicts
    else {
        unreachable!("step verdicts")
    };
    if let Some(v) = first_error {
        k[row] = v;
    }
    if let Some(v) = num_steps {
        n[row] = v;
    }
}

/// Credits for the clean case's eight rows, with `value` at `row`.
fn credit_with(row: usize, value: f64) -> VerdictData {
    let mut credit = vec![0.25, 0.5, f64::NAN, 1.0, 0.0, 0.75, f64::NAN, f64::NAN];
    credit[row] = value;
    VerdictData::Credit(credit)
}

#[test]
fn group_advantages_bad_rewards_set_the_status_where_the_cpu_engine_raises() {
    #[rustfmt::skip]
    let cases = [
        // name, rewards (groups of two), scale, bit, first row
        ("infinite reward", [0.0, 1.0, f64::INFINITY, 0.0], Scale::Group, status::NONFINITE_REWARD, 2),
        ("infinite reward, batch scale", [0.0, f64::NEG_INFINITY, 1.0, 0.0], Scale::Batch, status::NONFINITE_REWARD, 1),
        ("advantage past float32", [0.0, 1.0, 1e39, -1e39], Scale::None, status::OVERFLOW, 2),
    ];
    for (name, rewards, scale, bit, row) in cases {
        for grouping in [Grouping::Consecutive(2), Grouping::Ids(vec![4, 4, 2, 2])] {
            let options = AdvantageOptions {
                scale,
                eps: 1e-6,
                singleton: Singleton::Zero,
            };
            let cpu = sgpo_rs::advantages::group_advantages(&rewards, &grouping.cpu(4), options);
            let (_, status) = run_group_advantages(&rewards, &grouping, options);
            let what = format!("{name} ({})", grouping.label());
            assert_both_raise(&what, cpu, &status, "rewards", bit, row);
        }
    }
}

#[test]
fn token_advantages_bad_inputs_set_the_status_where_the_cpu_engine_raises() {
    // Three rows of seven tokens, weight 1 but at (1, 4) (flat index 11) where given.
    let len = 7;
    let clean = [0.5f32, -1.0, 2.0];
    let (bad, bad_mask) = (status::NONFINITE_INPUT, status::BAD_MASK);
    #[rustfmt::skip]
    let cases = [
        // name, advantages, weight at (1, 4), mask type, CPU error's argument, bit, first index
        ("NaN advantage", [0.5, f32::NAN, 2.0], None, MaskDtype::Bool, "advantages", bad, 1),
        ("infinite advantage", [0.5, -1.0, f32::INFINITY], None, MaskDtype::F32, "advantages", bad, 2),
        ("negative weight", clean, Some(-1.0), MaskDtype::F32, "mask", bad_mask, 11),
        ("NaN weight", clean, Some(f32::NAN), MaskDtype::F32, "mask", bad_mask, 11),
        ("infinite weight", clean, Some(f32::INFINITY), MaskDtype::F32, "mask", bad_mask, 11),
        ("overflowing product", [0.5, 3e38, 2.0], Some(2.0), MaskDtype::F32, "mask", status::OVERFLOW, 11),
        ("overflowing uint8 product", [0.5, 2e38, 2.0], Some(3.0), MaskDtype::U8, "mask", status::OVERFLOW, 11),
    ];
    for (name, advantages, spoiled, mask, arg, bit, first) in cases {
        let mut weights = vec![1.0f32; advantages.len() * len];
        if let Some(w) = spoiled {
            weights[len + 4] = w;
        }
        let (cpu, status) = match mask {
            MaskDtype::Bool => token_run::<bool>(&advantages, &weights, len),
            MaskDtype::U8 => token_run::<u8>(&advantages, &weights, len),
            MaskDtype::F32 => token_run::<f32>(&advantages, &weights, len),
        };
        assert_both_raise(name, cpu, &status, arg, bit, first);
    }
}

/// The token broadcast of bad inputs on both sides: the CPU's result and the status.
fn token_run<M: Mask>(
    advantages: &[f32],
    weights: &[f32],
    len: usize,
) -> (sgpo_rs::Result<()>, Status) {
    let rows = advantages.len();
    let mask: Vec<M> = weights.iter().map(|&w| M::from_weight(w)).collect();
    let mut sink = vec![0f32; rows * len];
    let cpu = sgpo_rs::advantages::token_advantages(advantages, &mask, len, &mut sink);
    let mut out = vec![f32::NAN; rows * len];
    let mut status = Status::new();
    groups::token_advantages(
        0,
        &input(advantages, "float32", &[rows]),
        &input(&mask, M::DTYPE, &[rows, len]),
        &output(&mut out, "float32", &[rows, len]),
        &status.tensor(),
    )
    .expect("launches");
    (cpu, status)
}

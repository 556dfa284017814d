//! The SGPO reward rule of docs/design.md, table-driven, every expected value worked out by hand.
//!
//! Rule: prefix credit `c_i = first_error_i / num_steps_i`, `1` when `first_error_i = -1`, none
//! when `-2`. A group is eligible when all its (scorable) responses are incorrect (mode
//! `all_negative`) or always (`all_incorrect`, which credits only the incorrect rows). An eligible
//! group whose rows-to-credit all have a verdict gets `r'_i = r_i + credit_scale * c_i` on them;
//! otherwise it stays plain GRPO and counts as `judge_missing`. NaN rewards are unscorable: never
//! credited and ignored when deciding all-negative. `correct` defaults to `r_i > 0`.

use sgpo_rs::advantages::{group_advantages, AdvantageOptions};
use sgpo_rs::groups::Groups;
use sgpo_rs::rewards::{sgpo_rewards, DiversifyMode, RewardOptions, RewardStats, Verdicts};
use sgpo_rs::Error;

const NAN: f64 = f64::NAN;
const T: bool = true;
const F: bool = false;

enum Layout {
    Contiguous(usize),
    Ids(Vec<i64>),
}

enum Verdict {
    Steps(Vec<i64>, Vec<i64>),
    Credit(Vec<f64>),
}

struct Case {
    name: &'static str,
    rewards: Vec<f64>,
    verdict: Verdict,
    correct: Option<Vec<bool>>,
    layout: Layout,
    credit_scale: f64,
    mode: DiversifyMode,
    // Expected outputs.
    out_rewards: Vec<f32>,
    credit: Vec<f32>,
    all_negative: Vec<bool>,
    diversified: Vec<bool>,
    /// (num_groups, all_negative_groups, diversified_groups, judge_missing_groups, mean_credit)
    stats: (usize, usize, usize, usize, f64),
}

fn steps(first_error: &[i64], num_steps: &[i64]) -> Verdict {
    Verdict::Steps(first_error.to_vec(), num_steps.to_vec())
}

fn cases() -> Vec<Case> {
    use DiversifyMode::{AllIncorrect, AllNegative};
    vec![
        Case {
            name: "paper setting: the all-negative group is diversified, the mixed one is not",
            rewards: vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0],
            verdict: steps(&[0, 1, 3, -1, -2, 2, -2, -2], &[4, 4, 4, 4, 0, 4, 0, 0]),
            correct: None,
            layout: Layout::Contiguous(4),
            credit_scale: 0.5,
            mode: AllNegative,
            // c = 0/4, 1/4, 3/4, 1 -> + 0.5 c; the mixed group keeps its rewards, but its judged
            // row 5 still reports its credit 2/4.
            out_rewards: vec![0.0, 0.125, 0.375, 0.5, 1.0, 0.0, 0.0, 1.0],
            credit: vec![0.0, 0.25, 0.75, 1.0, 0.0, 0.5, 0.0, 0.0],
            all_negative: vec![T, T, T, T, F, F, F, F],
            diversified: vec![T, T, T, T, F, F, F, F],
            // mean credit over credited rows: (0 + .25 + .75 + 1) / 4
            stats: (2, 1, 1, 0, 0.5),
        },
        Case {
            name: "one unjudged row leaves its group plain and counts as judge_missing",
            rewards: vec![0.0; 6],
            verdict: steps(&[1, -2, 0, 2, -1, 0], &[2, 5, 3, 3, 1, 7]),
            correct: None,
            layout: Layout::Contiguous(3),
            credit_scale: 0.5,
            mode: AllNegative,
            // group 1: c = 2/3, 1, 0 -> 0.5 * 2/3 = 1/3 (f32 0.33333334)
            out_rewards: vec![0.0, 0.0, 0.0, 0.333_333_34, 0.5, 0.0],
            credit: vec![0.5, 0.0, 0.0, 0.666_666_7, 1.0, 0.0],
            all_negative: vec![T; 6],
            // row 5 is credited too, with c = 0.
            diversified: vec![F, F, F, T, T, T],
            stats: (2, 2, 1, 1, (2.0 / 3.0 + 1.0 + 0.0) / 3.0),
        },
        Case {
            name: "negative outcome rewards are incorrect; credit is added to them",
            rewards: vec![-1.0, -1.0, -0.5, -1.0],
            verdict: steps(&[0, 1, 1, -1], &[2, 2, 3, 5]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.25,
            mode: AllNegative,
            // c = 0, 1/2, 1/3, 1 -> -1, -1 + 1/8, -0.5 + 1/12, -1 + 1/4
            out_rewards: vec![-1.0, -0.875, -0.416_666_66, -0.75],
            credit: vec![0.0, 0.5, 0.333_333_34, 1.0],
            all_negative: vec![T; 4],
            diversified: vec![T; 4],
            stats: (2, 2, 2, 0, (0.0 + 0.5 + 1.0 / 3.0 + 1.0) / 4.0),
        },
        Case {
            name: "a reward of exactly 0 (or -0) is incorrect by default, any positive one correct",
            rewards: vec![0.0, -0.0, 1e-9, 0.0],
            verdict: steps(&[1, -1, 0, 0], &[2, 4, 1, 1]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![0.25, 0.5, 1e-9, 0.0],
            credit: vec![0.5, 1.0, 0.0, 0.0],
            all_negative: vec![T, T, F, F],
            diversified: vec![T, T, F, F],
            stats: (2, 1, 1, 0, 0.75),
        },
        Case {
            name: "credit_scale 0: the group is diversified with unchanged rewards",
            rewards: vec![0.0, 0.0],
            verdict: steps(&[0, -1], &[3, 3]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.0,
            mode: AllNegative,
            out_rewards: vec![0.0, 0.0],
            credit: vec![0.0, 1.0],
            all_negative: vec![T, T],
            diversified: vec![T, T],
            stats: (1, 1, 1, 0, 0.5),
        },
        Case {
            name: "all_incorrect credits the incorrect rows of mixed groups",
            rewards: vec![1.0, 0.0, 0.0, 0.0],
            verdict: steps(&[-2, 0, 2, -1], &[0, 4, 4, 2]),
            correct: None,
            layout: Layout::Contiguous(4),
            credit_scale: 0.5,
            mode: AllIncorrect,
            out_rewards: vec![1.0, 0.0, 0.25, 0.5],
            credit: vec![0.0, 0.0, 0.5, 1.0],
            all_negative: vec![F; 4],
            diversified: vec![F, T, T, T],
            stats: (1, 0, 1, 0, 0.5),
        },
        Case {
            name: "all_incorrect: judge_missing counts mixed groups with an unjudged incorrect row",
            // g0 mixed, judged; g1 mixed, incorrect row unjudged; g2 all correct; g3 all wrong.
            rewards: vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            verdict: steps(&[-2, 1, -2, -2, -2, -2, -1, 0], &[0, 4, 0, 0, 0, 0, 3, 3]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.5,
            mode: AllIncorrect,
            out_rewards: vec![1.0, 0.125, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0],
            credit: vec![0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            all_negative: vec![F, F, F, F, F, F, T, T],
            diversified: vec![F, T, F, F, F, F, T, T],
            stats: (4, 1, 2, 1, (0.25 + 1.0 + 0.0) / 3.0),
        },
        Case {
            name: "all_negative on the same batch: mixed groups are neither credited nor missing",
            rewards: vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            verdict: steps(&[-2, 1, -2, -2, -2, -2, -1, 0], &[0, 4, 0, 0, 0, 0, 3, 3]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0],
            credit: vec![0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            all_negative: vec![F, F, F, F, F, F, T, T],
            diversified: vec![F, F, F, F, F, F, T, T],
            stats: (4, 1, 1, 0, 0.5),
        },
        Case {
            name: "NaN rewards: unscorable rows are skipped, keep NaN, never credited",
            // g0: scorable rows all wrong -> all-negative; the NaN row's verdict is ignored for
            // crediting but its credit is reported. g1: a correct row. g2: nothing scorable.
            rewards: vec![NAN, 0.0, 0.0, NAN, 1.0, 0.0, NAN, NAN, NAN],
            verdict: steps(
                &[1, 0, -1, -2, -2, -2, -2, -2, -2],
                &[2, 2, 2, 0, 0, 0, 0, 0, 0],
            ),
            correct: None,
            layout: Layout::Contiguous(3),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![
                f32::NAN,
                0.0,
                0.5,
                f32::NAN,
                1.0,
                0.0,
                f32::NAN,
                f32::NAN,
                f32::NAN,
            ],
            credit: vec![0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            all_negative: vec![T, T, T, F, F, F, F, F, F],
            diversified: vec![F, T, T, F, F, F, F, F, F],
            stats: (3, 1, 1, 0, 0.5),
        },
        Case {
            name: "NaN rewards: an unjudged unscorable row does not make the group judge_missing",
            rewards: vec![0.0, NAN, 0.0],
            verdict: steps(&[1, -2, 3], &[4, 0, 4]),
            correct: None,
            layout: Layout::Contiguous(3),
            credit_scale: 0.5,
            mode: AllIncorrect,
            out_rewards: vec![0.125, f32::NAN, 0.375],
            credit: vec![0.25, 0.0, 0.75],
            all_negative: vec![T, T, T],
            diversified: vec![T, F, T],
            stats: (1, 1, 1, 0, 0.5),
        },
        Case {
            name: "explicit correct overrides the reward sign",
            // g0: positive rewards, all marked wrong -> all-negative. g1: zero rewards but one
            // marked right -> mixed, untouched.
            rewards: vec![0.3, 0.3, 0.3, 0.3, 0.0, 0.0],
            verdict: steps(&[0, 1, 2, -1, 0, 1], &[4, 4, 4, 4, 2, 2]),
            correct: Some(vec![F, F, F, F, T, F]),
            layout: Layout::Ids(vec![5, 5, 5, 5, 6, 6]),
            credit_scale: 0.5,
            mode: AllNegative,
            // 0.3 + 0.5 * (0, 1/4, 1/2, 1)
            out_rewards: vec![0.3, 0.425, 0.55, 0.8, 0.0, 0.0],
            credit: vec![0.0, 0.25, 0.5, 1.0, 0.0, 0.5],
            all_negative: vec![T, T, T, T, F, F],
            diversified: vec![T, T, T, T, F, F],
            stats: (2, 1, 1, 0, 0.4375),
        },
        Case {
            name: "explicit correct in all_incorrect mode credits the rows marked wrong",
            rewards: vec![1.0, 1.0, 0.0],
            verdict: steps(&[-2, 2, -2], &[0, 8, 0]),
            correct: Some(vec![T, F, T]),
            layout: Layout::Contiguous(3),
            credit_scale: 0.5,
            mode: AllIncorrect,
            out_rewards: vec![1.0, 1.125, 0.0],
            credit: vec![0.0, 0.25, 0.0],
            all_negative: vec![F, F, F],
            diversified: vec![F, T, F],
            stats: (1, 0, 1, 0, 0.25),
        },
        Case {
            name: "credit array: NaN means not judged; 0 and 1 are valid credits",
            rewards: vec![0.0; 6],
            verdict: Verdict::Credit(vec![0.2, NAN, 0.9, 1.0, 0.0, 0.7]),
            correct: None,
            layout: Layout::Contiguous(3),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![0.0, 0.0, 0.0, 0.5, 0.0, 0.35],
            credit: vec![0.2, 0.0, 0.9, 1.0, 0.0, 0.7],
            all_negative: vec![T; 6],
            diversified: vec![F, F, F, T, T, T],
            stats: (2, 2, 1, 1, (1.0 + 0.0 + 0.7) / 3.0),
        },
        Case {
            name: "credit array in all_incorrect mode with a correct row left alone",
            rewards: vec![1.0, 0.0, -1.0, 2.0],
            verdict: Verdict::Credit(vec![NAN, 0.5, 0.25, NAN]),
            correct: None,
            layout: Layout::Contiguous(4),
            credit_scale: 1.0,
            mode: AllIncorrect,
            out_rewards: vec![1.0, 0.5, -0.75, 2.0],
            credit: vec![0.0, 0.5, 0.25, 0.0],
            all_negative: vec![F; 4],
            diversified: vec![F, T, T, F],
            stats: (1, 0, 1, 0, 0.375),
        },
        Case {
            name:
                "unsorted ids of varying sizes (verl): 7 -> rows 0,2,5; 3 -> 1,4; 9 -> 3; 11 -> 6",
            rewards: vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            verdict: steps(&[0, -2, 2, -1, 1, 3, -2], &[4, 0, 4, 2, 2, 4, 0]),
            correct: None,
            layout: Layout::Ids(vec![7, 3, 7, 9, 3, 7, 11]),
            credit_scale: 0.5,
            mode: AllNegative,
            // 7: c = 0, 1/2, 3/4; 3: mixed; 9: singleton, no error -> 1; 11: singleton unjudged.
            out_rewards: vec![0.0, 1.0, 0.25, 0.5, 0.0, 0.375, 0.0],
            credit: vec![0.0, 0.0, 0.5, 1.0, 0.5, 0.75, 0.0],
            all_negative: vec![T, F, T, T, F, T, T],
            diversified: vec![T, F, T, T, F, T, F],
            stats: (4, 3, 2, 1, (0.0 + 0.5 + 0.75 + 1.0) / 4.0),
        },
        Case {
            name: "the same ids in all_incorrect mode also credit row 4 of the mixed group 3",
            rewards: vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            verdict: steps(&[0, -2, 2, -1, 1, 3, -2], &[4, 0, 4, 2, 2, 4, 0]),
            correct: None,
            layout: Layout::Ids(vec![7, 3, 7, 9, 3, 7, 11]),
            credit_scale: 0.5,
            mode: AllIncorrect,
            out_rewards: vec![0.0, 1.0, 0.25, 0.5, 0.25, 0.375, 0.0],
            credit: vec![0.0, 0.0, 0.5, 1.0, 0.5, 0.75, 0.0],
            all_negative: vec![T, F, T, T, F, T, T],
            diversified: vec![T, F, T, T, T, T, F],
            stats: (4, 3, 3, 1, (0.0 + 0.5 + 0.75 + 1.0 + 0.5) / 5.0),
        },
        Case {
            name: "extreme ids, including i64::MIN and i64::MAX",
            rewards: vec![0.0, 0.0, 0.0, 1.0, 0.0],
            verdict: steps(&[1, 0, -1, -2, 0], &[2, 2, 3, 0, 1]),
            correct: None,
            layout: Layout::Ids(vec![i64::MIN, i64::MAX, i64::MIN, -1, i64::MAX]),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![0.25, 0.0, 0.5, 1.0, 0.0],
            credit: vec![0.5, 0.0, 1.0, 0.0, 0.0],
            all_negative: vec![T, T, T, F, T],
            diversified: vec![T, T, T, F, T],
            stats: (3, 2, 2, 0, (0.5 + 0.0 + 1.0 + 0.0) / 4.0),
        },
        Case {
            name: "large step counts: 999 / 1000 is below 1, still less than no error found",
            rewards: vec![0.0, 0.0],
            verdict: steps(&[999, -1], &[1000, 1]),
            correct: None,
            layout: Layout::Contiguous(2),
            credit_scale: 0.5,
            mode: AllNegative,
            out_rewards: vec![0.4995, 0.5],
            credit: vec![0.999, 1.0],
            all_negative: vec![T, T],
            diversified: vec![T, T],
            stats: (1, 1, 1, 0, (0.999 + 1.0) / 2.0),
        },
    ]
}

fn same_f32(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

#[test]
fn sgpo_rule_table() {
    for case in cases() {
        let groups = match &case.layout {
            Layout::Contiguous(size) => Groups::contiguous(case.rewards.len(), *size),
            Layout::Ids(ids) => Groups::from_ids(ids),
        }
        .unwrap_or_else(|e| panic!("{}: groups: {e}", case.name));
        let verdicts = match &case.verdict {
            Verdict::Steps(first_error, num_steps) => Verdicts::Steps {
                first_error,
                num_steps,
            },
            Verdict::Credit(credit) => Verdicts::Credit(credit),
        };
        let options = RewardOptions {
            credit_scale: case.credit_scale,
            mode: case.mode,
            ..RewardOptions::default()
        };
        let out = sgpo_rewards(
            &case.rewards,
            verdicts,
            case.correct.as_deref(),
            &groups,
            options,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let name = case.name;
        assert!(
            same_f32(&out.rewards, &case.out_rewards),
            "{name}: rewards {:?}, expected {:?}",
            out.rewards,
            case.out_rewards
        );
        assert!(
            same_f32(&out.credit, &case.credit),
            "{name}: credit {:?}, expected {:?}",
            out.credit,
            case.credit
        );
        assert_eq!(out.all_negative, case.all_negative, "{name}: all_negative");
        assert_eq!(out.diversified, case.diversified, "{name}: diversified");
        let (num_groups, all_negative, diversified, judge_missing, mean_credit) = case.stats;
        let RewardStats {
            num_groups: got_groups,
            all_negative_groups,
            diversified_groups,
            judge_missing_groups,
            mean_credit: got_mean,
        } = out.stats;
        assert_eq!(
            (
                got_groups,
                all_negative_groups,
                diversified_groups,
                judge_missing_groups
            ),
            (num_groups, all_negative, diversified, judge_missing),
            "{name}: (num_groups, all_negative, diversified, judge_missing)"
        );
        assert!(
            (got_mean - mean_credit).abs() <= 1e-12,
            "{name}: mean_credit {got_mean}, expected {mean_credit}"
        );
    }
}

/// Inputs the rule rejects, and the argument each error names.
#[test]
fn invalid_inputs_name_their_argument() {
    let g2 = Groups::contiguous(2, 2).unwrap();
    let run = |rewards: &[f64], verdicts: Verdicts<'_>, correct: Option<&[bool]>, scale: f64| {
        sgpo_rewards(
            rewards,
            verdicts,
            correct,
            &g2,
            RewardOptions {
                credit_scale: scale,
                mode: DiversifyMode::AllNegative,
                ..RewardOptions::default()
            },
        )
    };
    let st = |fe: &'static [i64], ns: &'static [i64]| Verdicts::Steps {
        first_error: fe,
        num_steps: ns,
    };
    let table: Vec<(&str, sgpo_rs::Result<_>, &str)> = vec![
        (
            "first_error -3",
            run(&[0.0, 0.0], st(&[-3, 0], &[2, 2]), None, 0.5),
            "first_error",
        ),
        (
            "first_error == num_steps",
            run(&[0.0, 0.0], st(&[2, 0], &[2, 2]), None, 0.5),
            "first_error",
        ),
        (
            "first_error i64::MIN",
            run(&[0.0, 0.0], st(&[i64::MIN, 0], &[2, 2]), None, 0.5),
            "first_error",
        ),
        (
            "num_steps 0 on a judged row",
            run(&[0.0, 0.0], st(&[-1, 0], &[0, 2]), None, 0.5),
            "num_steps",
        ),
        (
            "num_steps negative",
            run(&[0.0, 0.0], st(&[-2, 0], &[-1, 2]), None, 0.5),
            "num_steps",
        ),
        (
            "first_error length",
            run(&[0.0, 0.0], st(&[0], &[2, 2]), None, 0.5),
            "first_error",
        ),
        (
            "num_steps length",
            run(&[0.0, 0.0], st(&[0, 0], &[2, 2, 2]), None, 0.5),
            "num_steps",
        ),
        (
            "rewards length",
            run(&[0.0], st(&[0, 0], &[2, 2]), None, 0.5),
            "rewards",
        ),
        (
            "correct length",
            run(&[0.0, 0.0], st(&[0, 0], &[2, 2]), Some(&[true]), 0.5),
            "correct",
        ),
        (
            "credit above 1",
            run(&[0.0, 0.0], Verdicts::Credit(&[1.5, 0.0]), None, 0.5),
            "credit",
        ),
        (
            "credit negative",
            run(&[0.0, 0.0], Verdicts::Credit(&[0.0, -0.1]), None, 0.5),
            "credit",
        ),
        (
            "credit infinite",
            run(
                &[0.0, 0.0],
                Verdicts::Credit(&[f64::INFINITY, 0.0]),
                None,
                0.5,
            ),
            "credit",
        ),
        (
            "credit length",
            run(&[0.0, 0.0], Verdicts::Credit(&[0.0]), None, 0.5),
            "credit",
        ),
        (
            "credit_scale negative",
            run(&[0.0, 0.0], st(&[0, 0], &[2, 2]), None, -0.5),
            "credit_scale",
        ),
        (
            "credit_scale NaN",
            run(&[0.0, 0.0], st(&[0, 0], &[2, 2]), None, f64::NAN),
            "credit_scale",
        ),
        (
            "credit_scale inf",
            run(&[0.0, 0.0], st(&[0, 0], &[2, 2]), None, f64::INFINITY),
            "credit_scale",
        ),
        (
            "reward inf",
            run(&[f64::INFINITY, 0.0], st(&[0, 0], &[2, 2]), None, 0.5),
            "rewards",
        ),
        (
            "reward -inf",
            run(&[0.0, f64::NEG_INFINITY], st(&[0, 0], &[2, 2]), None, 0.5),
            "rewards",
        ),
    ];
    for (what, result, arg) in table {
        let err = match result {
            Ok(out) => panic!("{what}: accepted, gave {out:?}"),
            Err(err) => err,
        };
        let got = match &err {
            Error::Shape { arg, .. }
            | Error::Value { arg, .. }
            | Error::NonFinite { arg, .. }
            | Error::Choice { arg, .. }
            | Error::Dtype { arg, .. }
            | Error::Device { arg, .. }
            | Error::Overflow { arg, .. } => *arg,
            Error::Cuda(message) => panic!("{what}: the CPU rule raised a CUDA error: {message}"),
        };
        assert_eq!(got, arg, "{what}: {err}");
    }
    // An unjudged row may have num_steps 0; a judged row may have first_error num_steps - 1.
    assert!(run(&[0.0, 0.0], st(&[-2, 0], &[0, 1]), None, 0.5).is_ok());
    assert!(DiversifyMode::parse("all_negative") == Ok(DiversifyMode::AllNegative));
    assert!(DiversifyMode::parse("all_incorrect") == Ok(DiversifyMode::AllIncorrect));
    assert!(matches!(
        DiversifyMode::parse("all-negative"),
        Err(Error::Choice { arg: "mode", .. })
    ));
}

/// The point of the rule: an all-wrong group whose advantages were all 0 now has non-zero,
/// correctly ordered advantages (TRL semantics: unbiased std, eps 1e-4).
#[test]
fn diversified_group_gets_nonzero_advantages() {
    let groups = Groups::contiguous(4, 4).unwrap();
    let rewards = [0.0; 4];
    let plain = group_advantages(&rewards, &groups, AdvantageOptions::TRL).unwrap();
    assert_eq!(plain, vec![0.0; 4]);
    let out = sgpo_rewards(
        &rewards,
        Verdicts::Steps {
            first_error: &[0, 1, 3, -1],
            num_steps: &[4, 4, 4, 4],
        },
        None,
        &groups,
        RewardOptions::default(),
    )
    .unwrap();
    assert_eq!(out.rewards, vec![0.0, 0.125, 0.375, 0.5]);
    let rewards: Vec<f64> = out.rewards.iter().map(|&r| r as f64).collect();
    let adv = group_advantages(&rewards, &groups, AdvantageOptions::TRL).unwrap();
    // mean 0.25; deviations -1/4, -1/8, 1/8, 1/4; unbiased variance (2/16 + 2/64) / 3 = 5/96.
    let std = (5.0f64 / 96.0).sqrt();
    for (a, dev) in adv.iter().zip([-0.25, -0.125, 0.125, 0.25]) {
        let want = dev / (std + 1e-4);
        assert!((*a as f64 - want).abs() <= 1e-6, "{adv:?}");
    }
}

/// The logistic rule against a float64 reference, `r' = r + scale * sigma(beta (c - gamma))` on
/// the credited rows of diversified groups: steep and flat maps, thresholds at and outside
/// [0, 1], a `-1` verdict, a NaN row, a mixed group and a singleton group.
#[test]
fn logistic_rule_matches_a_float64_reference() {
    use sgpo_rs::rewards::CreditRule;
    let rewards = [0.0, 0.0, 0.0, 0.0, NAN, 0.0, 1.0, 0.0, 0.0];
    let first_error = [0, 2, -1, 1, -2, 3, -2, 1, 0];
    let num_steps = [4, 4, 3, 2, 0, 5, 0, 3, 1];
    // Groups: rows 0-2 all wrong; 3-5 all wrong with an unscorable row; 6-7 mixed; 8 alone.
    let groups = Groups::from_ids(&[0, 0, 0, 1, 1, 1, 2, 2, 3]).unwrap();
    let credited = [T, T, T, T, F, T, F, F, T];
    let score = |row: usize| match first_error[row] {
        -1 => 1.0,
        k => k as f64 / num_steps[row] as f64,
    };
    for (beta, gamma) in [
        (5.0, 0.5),
        (1e-3, 0.5),
        (1e6, 0.5),
        (5.0, -1.0),
        (5.0, 2.0),
        (5.0, 0.0),
        (5.0, 1.0),
    ] {
        for scale in [1.0, 0.5] {
            let options = RewardOptions {
                credit_scale: scale,
                rule: CreditRule::Logistic { beta, gamma },
                ..RewardOptions::default()
            };
            let out = sgpo_rewards(
                &rewards,
                Verdicts::Steps {
                    first_error: &first_error,
                    num_steps: &num_steps,
                },
                None,
                &groups,
                options,
            )
            .unwrap();
            for row in 0..rewards.len() {
                let expected = if credited[row] {
                    let sigma = 1.0 / (1.0 + f64::exp(-beta * (score(row) - gamma)));
                    (rewards[row] + scale * sigma) as f32
                } else {
                    rewards[row] as f32
                };
                let got = out.rewards[row];
                assert!(
                    got == expected || (got.is_nan() && expected.is_nan()),
                    "beta {beta} gamma {gamma} scale {scale} row {row}: {got} != {expected}"
                );
                assert_eq!(out.diversified[row], credited[row]);
            }
            // The credit output is the score itself, before the rule.
            assert_eq!(out.credit[1], 0.5);
            assert!(
                (out.stats.mean_credit - (0.0 + 0.5 + 1.0 + 0.5 + 0.6 + 0.0) / 6.0).abs() < 1e-12
            );
        }
    }
    // A later first error never earns less, under any valid parameters.
    let rule = CreditRule::Logistic {
        beta: 5.0,
        gamma: 0.5,
    };
    let credits: Vec<f64> = (0..=20).map(|k| rule.apply(k as f64 / 20.0)).collect();
    assert!(credits.windows(2).all(|w| w[0] <= w[1]));
}

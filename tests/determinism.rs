//! Results do not depend on the number of threads: every kernel is run inside rayon pools of 1, 2,
//! 3 and 8 threads (and the global pool) at shapes that split into many tasks, and the loss bits,
//! gradient bits, metric bits, advantage bits, reward bits and even the error reported for a batch
//! with several bad rows must be identical.

mod common;

use common::Rng;

use half::bf16;

use sgpo_rs::advantages::{group_advantages, token_advantages, AdvantageOptions, Scale, Singleton};
use sgpo_rs::elem::{FloatElem, MaskElem};
use sgpo_rs::groups::Groups;
use sgpo_rs::loss::{
    policy_loss, AdvantageView, Aggregation, ImportanceSamplingLevel, KlEstimator, LossInputs,
    LossOptions, LossType,
};
use sgpo_rs::rewards::{sgpo_rewards, DiversifyMode, RewardOptions, Verdicts};
use sgpo_rs::Result;

/// 257 rows (a prime: uneven splits) of 1031 tokens (prime).
const BIG: (usize, usize) = (257, 1031);
/// Same row count, shorter rows: every loss type and level, cheaply in a debug build.
const WIDE: (usize, usize) = (257, 33);
const THREADS: [usize; 4] = [1, 2, 3, 8];

/// Runs `f` once in the global pool and once in each pool of `THREADS`, and asserts that every
/// run gives the same fingerprint.
fn same_everywhere<R: PartialEq + std::fmt::Debug + Send>(what: &str, f: impl Fn() -> R + Sync) {
    let baseline = f();
    for n in THREADS {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("a rayon pool");
        let got = pool.install(&f);
        if got != baseline {
            let show = |r: &R| {
                let text = format!("{r:?}");
                text.chars().take(400).collect::<String>()
            };
            panic!(
                "{what}: result with {n} threads differs from the global pool's:\n  {}\nvs\n  {}",
                show(&got),
                show(&baseline)
            );
        }
    }
}

/// Everything a loss call returns, as bits; an error as its debug text (an `Error` holding a NaN
/// value is not equal to itself).
type LossBits = std::result::Result<(u64, Vec<u32>, Vec<(&'static str, u64)>), String>;

struct Batch {
    batch: usize,
    len: usize,
    logp: Vec<f32>,
    old: Vec<f32>,
    reference: Vec<f32>,
    adv_row: Vec<f32>,
    adv_token: Vec<f32>,
    mask: Vec<f32>,
}

/// Right-padded rows of varying length (some empty), fractional weights on a few tokens.
fn batch(seed: u64, (batch, len): (usize, usize)) -> Batch {
    let mut rng = Rng(seed);
    let n = batch * len;
    let mut b = Batch {
        batch,
        len,
        logp: Vec::with_capacity(n),
        old: Vec::with_capacity(n),
        reference: Vec::with_capacity(n),
        adv_row: (0..batch).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
        adv_token: (0..n).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
        mask: Vec::with_capacity(n),
    };
    for i in 0..batch {
        let kept = if i % 37 == 5 { 0 } else { rng.below(len + 1) };
        for t in 0..len {
            let lp = rng.uniform(-6.0, -0.01);
            b.logp.push(lp as f32);
            b.old.push((lp + rng.uniform(-0.4, 0.4)) as f32);
            b.reference.push((lp + rng.uniform(-1.0, 1.0)) as f32);
            let w = if t >= kept {
                0.0
            } else if rng.below(50) == 0 {
                0.5
            } else {
                1.0
            };
            b.mask.push(w);
        }
    }
    b
}

fn loss_bits<T: FloatElem, M: MaskElem>(
    b: &Batch,
    logp: &[T],
    old: &[T],
    reference: &[T],
    mask: &[M],
    per_token: bool,
    options: &LossOptions,
) -> LossBits {
    let inputs = LossInputs {
        logp,
        old_logp: Some(old),
        ref_logp: Some(reference),
        advantages: if per_token {
            AdvantageView::PerToken(&b.adv_token)
        } else {
            AdvantageView::PerRow(&b.adv_row)
        },
        mask,
        batch: b.batch,
        len: b.len,
    };
    let mut grad = vec![f32::NAN; b.batch * b.len];
    let out = policy_loss(&inputs, options, &mut grad).map_err(|e| format!("{e:?}"))?;
    Ok((
        out.loss.to_bits(),
        grad.iter().map(|g| g.to_bits()).collect(),
        out.metrics
            .0
            .iter()
            .map(|&(k, v)| (k, v.to_bits()))
            .collect(),
    ))
}

#[test]
fn policy_loss_is_bit_identical_for_any_thread_count_at_a_large_shape() {
    let b = batch(1, BIG);
    let options = LossOptions {
        beta: 0.04,
        ..LossOptions::default()
    };
    same_everywhere("dapo, token level, k3, f32 mask", || {
        let out = loss_bits(&b, &b.logp, &b.old, &b.reference, &b.mask, false, &options);
        assert!(out.is_ok());
        out
    });

    // bf16 log-probabilities, a bool mask, per-token advantages, GSPO with verl's estimator and
    // a verl aggregation that needs the batch's valid-row count.
    let to_bf16 = |xs: &[f32]| xs.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let (lp, old, reference) = (to_bf16(&b.logp), to_bf16(&b.old), to_bf16(&b.reference));
    let mask: Vec<bool> = b.mask.iter().map(|&w| w != 0.0).collect();
    let options = LossOptions {
        loss_type: LossType::Grpo,
        importance_sampling_level: ImportanceSamplingLevel::Sequence,
        beta: 0.04,
        kl_estimator: KlEstimator::LowVarKl,
        aggregation: Some(Aggregation::ValidRowMeanOfTokenMeans),
        ..LossOptions::default()
    };
    same_everywhere("grpo, sequence level, bf16, bool mask", || {
        let out = loss_bits(&b, &lp, &old, &reference, &mask, true, &options);
        assert!(out.is_ok());
        out
    });
}

#[test]
fn every_loss_type_and_level_is_bit_identical_for_any_thread_count() {
    let b = batch(2, WIDE);
    for loss_type in sgpo_rs::loss::registry::LOSS_TYPES
        .iter()
        .map(|s| s.loss_type)
    {
        for level in [
            ImportanceSamplingLevel::Token,
            ImportanceSamplingLevel::Sequence,
        ] {
            for per_token in [false, true] {
                let options = LossOptions {
                    loss_type,
                    importance_sampling_level: level,
                    beta: 0.04,
                    epsilon_high: Some(0.28),
                    ..LossOptions::default()
                };
                same_everywhere(&format!("{loss_type:?} {level:?} {per_token}"), || {
                    let out = loss_bits(
                        &b,
                        &b.logp,
                        &b.old,
                        &b.reference,
                        &b.mask,
                        per_token,
                        &options,
                    );
                    assert!(out.is_ok(), "{out:?}");
                    out
                });
            }
        }
    }
}

/// With bad values in several rows, every thread count reports the same (the first) one.
#[test]
fn the_reported_error_does_not_depend_on_the_thread_count() {
    let mut b = batch(3, WIDE);
    let first = 40 * b.len + 3;
    b.mask[first] = 1.0;
    b.logp[first] = f32::NAN;
    for row in [41, 100, 250] {
        b.mask[row * b.len] = 1.0;
        b.old[row * b.len] = f32::INFINITY;
    }
    let options = LossOptions::default();
    same_everywhere("non-finite logp in row 40, old_logp in rows 41..", || {
        let out = loss_bits(&b, &b.logp, &b.old, &b.reference, &b.mask, false, &options);
        let Err(text) = &out else {
            panic!("expected the row-40 error, got {out:?}");
        };
        assert!(
            text.starts_with("NonFinite { arg: \"logp\"") && text.contains("at: \"(40, 3)"),
            "{text}"
        );
        out
    });

    // Bad mask weights in several rows: the first is reported.
    let mut b = batch(4, WIDE);
    b.mask[7 * b.len + 2] = -1.0;
    b.mask[90 * b.len] = f32::NAN;
    same_everywhere("bad mask weights", || {
        let out = loss_bits(&b, &b.logp, &b.old, &b.reference, &b.mask, false, &options);
        let Err(text) = &out else {
            panic!("expected a mask error, got {out:?}");
        };
        assert!(
            text.starts_with("Value { arg: \"mask\"") && text.contains("(7, 2)"),
            "{text}"
        );
        out
    });

    let mut mask = vec![1.0f32; BIG.0 * BIG.1];
    mask[20 * BIG.1 + 9] = -2.0;
    mask[200 * BIG.1] = f32::INFINITY;
    let advantages = vec![1.5f32; BIG.0];
    same_everywhere("token_advantages bad mask", || {
        let mut out = vec![0.0f32; mask.len()];
        let err = token_advantages(&advantages, &mask, BIG.1, &mut out).unwrap_err();
        assert!(err.to_string().contains("(20, 9)"), "{err}");
        err.to_string()
    });
}

#[test]
fn token_advantages_are_bit_identical_for_any_thread_count() {
    let b = batch(5, BIG);
    let mask_i64: Vec<i64> = b.mask.iter().map(|&w| i64::from(w != 0.0)).collect();
    same_everywhere("token_advantages f32 mask", || {
        let mut out = vec![f32::NAN; b.mask.len()];
        token_advantages(&b.adv_row, &b.mask, b.len, &mut out).map(|()| bits32(&out))
    });
    same_everywhere("token_advantages i64 mask", || {
        let mut out = vec![f32::NAN; b.mask.len()];
        token_advantages(&b.adv_row, &mask_i64, b.len, &mut out).map(|()| bits32(&out))
    });
}

fn bits32(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn group_statistics_and_rewards_are_bit_identical_for_any_thread_count() {
    let mut rng = Rng(6);
    let rows = BIG.0 * 16;
    let rewards: Vec<f64> = (0..rows)
        .map(|i| {
            if i % 53 == 7 {
                f64::NAN
            } else {
                (rng.below(2) as f64) + rng.uniform(-1e-3, 1e-3)
            }
        })
        .collect();
    let ids: Vec<i64> = (0..rows).map(|_| rng.below(600) as i64 - 300).collect();
    let first_error: Vec<i64> = (0..rows).map(|_| rng.below(6) as i64 - 2).collect();
    let num_steps: Vec<i64> = (0..rows).map(|_| 4 + rng.below(5) as i64).collect();
    let layouts = [
        Groups::contiguous(rows, 16).expect("contiguous groups"),
        Groups::from_ids(&ids).expect("id groups"),
    ];
    for groups in &layouts {
        for scale in [Scale::Group, Scale::Batch, Scale::None] {
            for singleton in [Singleton::Zero, Singleton::Unit] {
                let options = AdvantageOptions {
                    scale,
                    eps: 1e-6,
                    singleton,
                };
                same_everywhere("group_advantages", || -> Result<Vec<u32>> {
                    Ok(bits32(&group_advantages(&rewards, groups, options)?))
                });
            }
        }
        for mode in [DiversifyMode::AllNegative, DiversifyMode::AllIncorrect] {
            let options = RewardOptions {
                credit_scale: 0.3,
                mode,
                ..RewardOptions::default()
            };
            same_everywhere("sgpo_rewards", || {
                let out = sgpo_rewards(
                    &rewards,
                    Verdicts::Steps {
                        first_error: &first_error,
                        num_steps: &num_steps,
                    },
                    None,
                    groups,
                    options,
                )
                .expect("valid verdicts");
                (
                    bits32(&out.rewards),
                    bits32(&out.credit),
                    out.all_negative,
                    out.diversified,
                    format!("{:?}", out.stats),
                )
            });
        }
    }
}

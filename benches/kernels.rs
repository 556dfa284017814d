//! Criterion benches of the engine kernels (no Python): `cargo bench --bench kernels`.
//!
//! Every bench sets `Throughput::Bytes` to the bytes the kernel must read and write at least
//! once (inputs read + outputs written, see `*_bytes` below), so criterion's `thrpt` column is an
//! effective bandwidth to compare with the machine's copy bandwidth (`benches/compare.py` measures
//! it). Sample sizes are small and sampling is flat so the whole run takes a few minutes on two
//! cores; pass `-- <filter>` to run a subset, e.g. `cargo bench --bench kernels -- policy_loss`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use half::bf16;

// The integration tests' seeded generator, so the benches draw the same kind of inputs.
#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;
use sgpo_rs::advantages::{group_advantages, token_advantages, AdvantageOptions};
use sgpo_rs::elem::{FloatElem, MaskElem};
use sgpo_rs::groups::Groups;
use sgpo_rs::loss::{
    policy_loss, AdvantageView, ImportanceSamplingLevel, LossInputs, LossOptions, LossType,
};
use sgpo_rs::rewards::{sgpo_rewards, RewardOptions, Verdicts};

/// Rows of the reward / advantage benches and their group size (TRL `num_generations`).
const ROWS: usize = 8192;
const GROUP: usize = 8;
/// Token length of the token-broadcast bench: 8192 x 8192 f32 would be 256 MB of output alone.
const TOKEN_LEN: usize = 2048;

/// Per-row token counts: every row keeps between a quarter and all of its `len` tokens, like
/// right-padded completions of varying length.
fn row_lengths(rng: &mut Rng, rows: usize, len: usize) -> Vec<usize> {
    (0..rows)
        .map(|_| len / 4 + rng.below(len - len / 4 + 1))
        .collect()
}

fn mask_from_lengths<M: Copy>(lengths: &[usize], len: usize, on: M, off: M) -> Vec<M> {
    let mut mask = Vec::with_capacity(lengths.len() * len);
    for &n in lengths {
        mask.extend((0..len).map(|t| if t < n { on } else { off }));
    }
    mask
}

/// Advantages of a GRPO step: roughly unit scale, both signs.
fn advantages(rng: &mut Rng, rows: usize) -> Vec<f32> {
    (0..rows)
        .map(|_| (rng.uniform(0.0, 1.0) * 4.0 - 2.0) as f32)
        .collect()
}

/// The inputs of one `(batch, len)` loss call: `logp` in [-3, 0), `old_logp` within +-0.3 of it
/// (so some tokens leave the 0.2 clip range), `ref_logp` within +-0.5.
struct LossData {
    batch: usize,
    len: usize,
    logp: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    lengths: Vec<usize>,
}

impl LossData {
    fn new(batch: usize, len: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let n = batch * len;
        let logp: Vec<f32> = (0..n)
            .map(|_| (-3.0 * rng.uniform(0.0, 1.0)) as f32)
            .collect();
        let old_logp = logp
            .iter()
            .map(|&l| l + (0.6 * rng.uniform(0.0, 1.0) - 0.3) as f32)
            .collect();
        let ref_logp = logp
            .iter()
            .map(|&l| l + (rng.uniform(0.0, 1.0) - 0.5) as f32)
            .collect();
        LossData {
            batch,
            len,
            logp,
            old_logp,
            ref_logp,
            advantages: advantages(&mut rng, batch),
            lengths: row_lengths(&mut rng, batch, len),
        }
    }
}

/// Bytes a policy-loss call reads and writes at least once: `logp`, `old_logp` (and `ref_logp`
/// when `beta != 0`) and the mask read, per-row advantages read, the f32 gradient written.
fn loss_bytes(batch: usize, len: usize, float: usize, mask: usize, with_ref: bool) -> u64 {
    let tokens = (batch * len) as u64;
    let inputs = if with_ref { 3 } else { 2 };
    tokens * (inputs * float as u64 + mask as u64 + 4) + 4 * batch as u64
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
}

fn bench_rewards(c: &mut Criterion) {
    let mut rng = Rng(1);
    // Half the groups all-negative (reward 0), the others with a correct answer.
    let rewards: Vec<f64> = (0..ROWS)
        .map(|i| {
            if (i / GROUP).is_multiple_of(2) || rng.below(2) == 0 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let num_steps: Vec<i64> = (0..ROWS).map(|_| 1 + rng.below(12) as i64).collect();
    let first_error: Vec<i64> = num_steps
        .iter()
        .map(|&n| (rng.below(n as usize + 1) as i64) - 1)
        .collect();
    let groups = Groups::contiguous(ROWS, GROUP).unwrap();
    // Read rewards (f64), first_error and num_steps (i64); write rewards and credit (f32) and
    // the two bool flags.
    let bytes = (ROWS * (8 + 8 + 8 + 4 + 4 + 1 + 1)) as u64;

    let mut group = c.benchmark_group("sgpo_rewards");
    configure(&mut group);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(format!("n{ROWS}_g{GROUP}"), |b| {
        b.iter(|| {
            sgpo_rewards(
                black_box(&rewards),
                Verdicts::Steps {
                    first_error: &first_error,
                    num_steps: &num_steps,
                },
                None,
                &groups,
                RewardOptions::default(),
            )
            .unwrap()
        })
    });
    group.finish();
}

fn bench_group_advantages(c: &mut Criterion) {
    let mut rng = Rng(2);
    let rewards: Vec<f64> = (0..ROWS).map(|_| rng.uniform(0.0, 1.0)).collect();
    // verl layout: one prompt id per row, shuffled, same group sizes.
    let mut ids: Vec<i64> = (0..ROWS).map(|i| (i / GROUP) as i64 * 7919).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let contiguous = Groups::contiguous(ROWS, GROUP).unwrap();

    let mut group = c.benchmark_group("group_advantages");
    configure(&mut group);
    // Read rewards (f64), write advantages (f32).
    group.throughput(Throughput::Bytes((ROWS * (8 + 4)) as u64));
    group.bench_function(format!("contiguous_n{ROWS}_g{GROUP}"), |b| {
        b.iter(|| {
            group_advantages(black_box(&rewards), &contiguous, AdvantageOptions::TRL).unwrap()
        })
    });
    // The ids are grouped inside the timed call, as the Python API does on every call: + ids read.
    group.throughput(Throughput::Bytes((ROWS * (8 + 8 + 4)) as u64));
    group.bench_function(format!("group_ids_n{ROWS}_g{GROUP}"), |b| {
        b.iter(|| {
            let groups = Groups::from_ids(black_box(&ids)).unwrap();
            group_advantages(black_box(&rewards), &groups, AdvantageOptions::VERL).unwrap()
        })
    });
    group.finish();
}

fn bench_token_advantages(c: &mut Criterion) {
    let mut rng = Rng(3);
    let adv = advantages(&mut rng, ROWS);
    let lengths = row_lengths(&mut rng, ROWS, TOKEN_LEN);
    let mask = mask_from_lengths(&lengths, TOKEN_LEN, true, false);
    let mut out = vec![0.0f32; ROWS * TOKEN_LEN];

    let mut group = c.benchmark_group("token_advantages");
    configure(&mut group);
    // Read advantages (f32) and the bool mask, write the f32 (N, L) output.
    let bytes = (ROWS * 4 + ROWS * TOKEN_LEN * (1 + 4)) as u64;
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(format!("bool_n{ROWS}_l{TOKEN_LEN}"), |b| {
        b.iter(|| token_advantages(black_box(&adv), black_box(&mask), TOKEN_LEN, &mut out).unwrap())
    });
    group.finish();
}

/// One policy-loss bench: `T` the log-prob type, `M` the mask type.
#[allow(clippy::too_many_arguments)]
fn loss_bench<T: FloatElem, M: MaskElem>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    data: &LossData,
    logp: &[T],
    old_logp: &[T],
    ref_logp: &[T],
    mask: &[M],
    options: &LossOptions,
) {
    let (batch, len) = (data.batch, data.len);
    let with_ref = options.beta != 0.0;
    group.throughput(Throughput::Bytes(loss_bytes(
        batch,
        len,
        std::mem::size_of::<T>(),
        std::mem::size_of::<M>(),
        with_ref,
    )));
    let inputs = LossInputs {
        logp,
        old_logp: Some(old_logp),
        ref_logp: with_ref.then_some(ref_logp),
        advantages: AdvantageView::PerRow(&data.advantages),
        mask,
        batch,
        len,
    };
    let mut grad = vec![0.0f32; batch * len];
    group.bench_function(format!("{name}_{batch}x{len}"), |b| {
        b.iter(|| policy_loss(black_box(&inputs), options, &mut grad).unwrap())
    });
}

fn bench_policy_loss(c: &mut Criterion) {
    let dapo = LossOptions::default();
    let grpo_sequence = LossOptions {
        loss_type: LossType::Grpo,
        importance_sampling_level: ImportanceSamplingLevel::Sequence,
        ..LossOptions::default()
    };
    let dapo_kl = LossOptions {
        beta: 0.04,
        ..LossOptions::default()
    };

    let mut group = c.benchmark_group("policy_loss");
    configure(&mut group);
    for (batch, len) in [(64, 4096), (512, 8192)] {
        let data = LossData::new(batch, len, 4 + batch as u64);
        let bool_mask = mask_from_lengths(&data.lengths, len, true, false);
        let i64_mask = mask_from_lengths(&data.lengths, len, 1i64, 0i64);
        let (lp, old, rf) = (&data.logp, &data.old_logp, &data.ref_logp);
        loss_bench(
            &mut group,
            "dapo_f32_bool",
            &data,
            lp,
            old,
            rf,
            &bool_mask,
            &dapo,
        );
        loss_bench(
            &mut group,
            "dapo_f32_i64",
            &data,
            lp,
            old,
            rf,
            &i64_mask,
            &dapo,
        );
        loss_bench(
            &mut group,
            "grpo_sequence_f32_bool",
            &data,
            lp,
            old,
            rf,
            &bool_mask,
            &grpo_sequence,
        );
        loss_bench(
            &mut group,
            "dapo_beta0.04_f32_bool",
            &data,
            lp,
            old,
            rf,
            &bool_mask,
            &dapo_kl,
        );
        if batch == 64 {
            let to_bf16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
            let (lp, old, rf) = (to_bf16(lp), to_bf16(old), to_bf16(rf));
            loss_bench(
                &mut group,
                "dapo_bf16_bool",
                &data,
                &lp,
                &old,
                &rf,
                &bool_mask,
                &dapo,
            );
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_rewards,
    bench_group_advantages,
    bench_token_advantages,
    bench_policy_loss
);
criterion_main!(benches);

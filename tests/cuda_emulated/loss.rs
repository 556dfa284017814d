//! The fused policy loss (`cuda::loss::policy_loss` after `LossTensors::check`) against
//! `sgpo_rs::loss::policy_loss`.
//!
//! Every case poisons what the kernels write (gradient, workspace, results start as NaN) and the
//! padding they must not read (masked tokens hold NaN log-probabilities, infinite old and
//! reference log-probabilities and, per token, NaN advantages), so a forgotten write or a masked
//! token that reaches a sum fails the comparison, and a status set by padding fails the clean
//! status check.
//!
//! Tolerances (the module doc of `main.rs` argues them): gradient within 1e-6 of max|grad|; loss
//! and metrics within 1e-6 of (|value| + mean|a|).

use half::{bf16, f16};

use sgpo_rs::cuda::loss::{metric_slots, policy_loss, workspace_len, LossTensors, OUT_LEN};
use sgpo_rs::cuda::status;
use sgpo_rs::loss::{
    float32_handles, AdvantageView, Aggregation, ImportanceSamplingLevel, KlEstimator, LossInputs,
    LossOptions, LossOutput, LossType,
};

use super::support::{
    assert_both_raise, assert_near, rounded, Align, Dtype, Float, Mask, MaskDtype, Placed, Status,
};
use crate::common::{loss_types, Rng, ESTIMATORS, LEVELS};

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];
const MASKS: [MaskDtype; 3] = [MaskDtype::Bool, MaskDtype::U8, MaskDtype::F32];

/// `(B, T)` shapes: one token; rows of 5, 37 and 1030 tokens (not multiples of 4: the scalar
/// loads); rows of 8 and 64 (aligned: four tokens per load); 2052 and 1030 tokens (three and two
/// chunks of 1024 per row).
const SHAPES: [(usize, usize); 7] = [
    (2, 1),
    (3, 5),
    (4, 8),
    (3, 37),
    (5, 64),
    (3, 1030),
    (2, 2052),
];

/// How far the old and reference log-probabilities stray from `logp`.
#[derive(Debug, Clone, Copy)]
enum Spread {
    /// |lp - old| < 0.4, |lp - ref| < 0.5: ratios around the clip bounds.
    Moderate,
    /// |lp - old| and |lp - ref| up to the bound: ratios of e^+-100, log ratios past verl's
    /// +-20 clamp, low_var_kl past its clamps.
    Extreme(f64),
    /// Log ratios ln(bound) + {0, +-1e-7} for the given bounds, before `old` is rounded to the
    /// element type (exactly 0 for a bound of 1).
    AtBounds(&'static [f64]),
}

/// One batch's values in float32 (rounded to the case's element type when run) and its mask
/// weights; `old`/`reference` may be absent.
struct LossData {
    batch: usize,
    len: usize,
    logp: Vec<f32>,
    old: Option<Vec<f32>>,
    reference: Option<Vec<f32>>,
    advantages: Vec<f32>,
    per_token: bool,
    weights: Vec<f32>,
}

impl LossData {
    /// Random values: row 1 (of two or more) fully masked, gaps elsewhere, advantages with
    /// exact zeros among them, and every masked token poisoned.
    fn random(
        rng: &mut Rng,
        (batch, len): (usize, usize),
        spread: Spread,
        per_token: bool,
        mask: MaskDtype,
    ) -> LossData {
        let n = batch * len;
        let logp: Vec<f32> = (0..n).map(|_| rng.uniform(-6.0, -0.01) as f32).collect();
        let log_ratio = |rng: &mut Rng| -> f64 {
            match spread {
                Spread::Moderate => rng.uniform(-0.4, 0.4),
                Spread::Extreme(s) => rng.uniform(-s, s),
                Spread::AtBounds(bounds) => {
                    let b = *rng.pick(bounds);
                    b.ln() + [0.0, 1e-7, -1e-7][rng.below(3)] * f64::from(b != 1.0)
                }
            }
        };
        let old: Vec<f32> = logp
            .iter()
            .map(|&x| (x as f64 - log_ratio(rng)) as f32)
            .collect();
        let ref_spread = match spread {
            Spread::Extreme(s) => s.min(25.0),
            _ => 0.5,
        };
        let reference: Vec<f32> = logp
            .iter()
            .map(|&x| (x as f64 + rng.uniform(-ref_spread, ref_spread)) as f32)
            .collect();
        let advantage = |rng: &mut Rng| -> f32 {
            if rng.chance(10) {
                0.0
            } else {
                rng.uniform(-2.0, 2.0) as f32
            }
        };
        let advantages: Vec<f32> = (0..if per_token { n } else { batch })
            .map(|_| advantage(rng))
            .collect();
        let weights: Vec<f32> = (0..n)
            .map(|k| {
                let empty_row = batch > 1 && k / len == 1;
                if empty_row || !rng.chance(85) {
                    0.0
                } else {
                    *rng.pick(mask.weights())
                }
            })
            .collect();
        let mut data = LossData {
            batch,
            len,
            logp,
            old: Some(old),
            reference: Some(reference),
            advantages,
            per_token,
            weights,
        };
        data.poison_padding();
        data
    }

    /// Masked tokens hold what must never reach a result or the status.
    fn poison_padding(&mut self) {
        for k in 0..self.weights.len() {
            if self.weights[k] != 0.0 {
                continue;
            }
            self.logp[k] = f32::NAN;
            if let Some(old) = &mut self.old {
                old[k] = f32::INFINITY;
            }
            if let Some(reference) = &mut self.reference {
                reference[k] = f32::NEG_INFINITY;
            }
            if self.per_token {
                self.advantages[k] = f32::NAN;
            }
        }
    }

    /// The mean |a| over the values the loss reads: the order of the per-token terms.
    fn advantage_order(&self) -> f64 {
        let used: Vec<f64> = self
            .advantages
            .iter()
            .enumerate()
            .filter(|&(k, _)| !self.per_token || self.weights[k] != 0.0)
            .map(|(_, a)| a.abs() as f64)
            .collect();
        used.iter().sum::<f64>() / used.len().max(1) as f64
    }

    /// The largest per-token term of the loss and of the KL metric, in float64 from the inputs
    /// (policy term at most `|a| max(r, 1 + eh, c)`, KL term `|kl| kr`). The loss and the KL
    /// metric are weighted means of such terms, so where those cancel (mixed-sign advantages,
    /// the k1 KL's sign) a float32 rounding of one term is bounded by this, not by the mean:
    /// the float32 paths (the CPU's and `loss_tokens32`, each within about 5e-7 of every term)
    /// can then differ by more than 1e-6 of the mean itself.
    fn largest_terms(&self, options: &LossOptions) -> (f64, f64) {
        let (mut loss, mut kl) = (0f64, 0f64);
        let hi = 1.0 + options.epsilon_high.unwrap_or(options.epsilon_low);
        let beta = options.beta;
        for k in 0..self.logp.len() {
            if self.weights[k] == 0.0 {
                continue;
            }
            let lp = self.logp[k] as f64;
            let d = self.old.as_ref().map_or(0.0, |o| lp - o[k] as f64);
            let r = d.clamp(-708.0, 709.0).exp();
            let a = self.advantages[if self.per_token { k } else { k / self.len }] as f64;
            let kl_term = match &self.reference {
                Some(rf) if beta != 0.0 => {
                    let x = rf[k] as f64 - lp;
                    let kl = match options.kl_estimator {
                        KlEstimator::K1 | KlEstimator::Abs => x.abs(),
                        KlEstimator::K2 => 0.5 * x * x,
                        KlEstimator::K3 => x.exp_m1() - x,
                        KlEstimator::LowVarKl => {
                            (x.clamp(-20.0, 20.0).exp_m1() - x.clamp(-20.0, 20.0)).min(10.0)
                        }
                    };
                    kl * if options.kl_bias_correction { r } else { 1.0 }
                }
                _ => 0.0,
            };
            let policy = a.abs() * r.max(hi).max(options.clip_ratio_c);
            loss = loss.max(policy + beta * kl_term);
            kl = kl.max(kl_term);
        }
        (loss, kl)
    }
}

/// What one case gave on both sides.
struct LossRun {
    cpu: sgpo_rs::Result<LossOutput>,
    cpu_grad: Vec<f32>,
    grad: Vec<f32>,
    out: Vec<f64>,
    status: Status,
}

fn run_loss(
    data: &LossData,
    options: &LossOptions,
    dtype: Dtype,
    mask: MaskDtype,
    align: Align,
) -> LossRun {
    match (dtype, mask) {
        (Dtype::F32, MaskDtype::Bool) => run::<f32, bool>(data, options, align),
        (Dtype::F32, MaskDtype::U8) => run::<f32, u8>(data, options, align),
        (Dtype::F32, MaskDtype::F32) => run::<f32, f32>(data, options, align),
        (Dtype::Bf16, MaskDtype::Bool) => run::<bf16, bool>(data, options, align),
        (Dtype::Bf16, MaskDtype::U8) => run::<bf16, u8>(data, options, align),
        (Dtype::Bf16, MaskDtype::F32) => run::<bf16, f32>(data, options, align),
        (Dtype::F16, MaskDtype::Bool) => run::<f16, bool>(data, options, align),
        (Dtype::F16, MaskDtype::U8) => run::<f16, u8>(data, options, align),
        (Dtype::F16, MaskDtype::F32) => run::<f16, f32>(data, options, align),
    }
}

/// The CPU engine and the kernels on the same `T`/`M` values, every buffer placed at `align`.
fn run<T: Float, M: Mask>(data: &LossData, options: &LossOptions, align: Align) -> LossRun {
    let (b, t) = (data.batch, data.len);
    let n = b * t;
    let logp = Placed::new(&rounded::<T>(&data.logp), align);
    let old = data
        .old
        .as_ref()
        .map(|o| Placed::new(&rounded::<T>(o), align));
    let reference = data
        .reference
        .as_ref()
        .map(|r| Placed::new(&rounded::<T>(r), align));
    let advantages = Placed::new(&data.advantages, align);
    let weights: Vec<M> = data.weights.iter().map(|&w| M::from_weight(w)).collect();
    let mask = Placed::new(&weights, align);

    let inputs = LossInputs {
        logp: logp.get(),
        old_logp: old.as_ref().map(Placed::get),
        ref_logp: reference.as_ref().map(Placed::get),
        advantages: if data.per_token {
            AdvantageView::PerToken(advantages.get())
        } else {
            AdvantageView::PerRow(advantages.get())
        },
        mask: mask.get(),
        batch: b,
        len: t,
    };
    let mut cpu_grad = vec![0f32; n];
    let cpu = sgpo_rs::loss::policy_loss(&inputs, options, &mut cpu_grad);

    let mut grad = Placed::new(&vec![f32::NAN; n], align);
    let mut workspace = vec![f64::NAN; workspace_len(b, t)];
    let mut out = vec![f64::NAN; OUT_LEN];
    let mut status = Status::new();
    let shape = [b, t];
    let adv_shape: &[usize] = if data.per_token { &shape } else { &shape[..1] };
    let d_logp = logp.input(T::DTYPE, &shape);
    let d_old = old.as_ref().map(|o| o.input(T::DTYPE, &shape));
    let d_ref = reference.as_ref().map(|r| r.input(T::DTYPE, &shape));
    let d_adv = advantages.input("float32", adv_shape);
    let d_mask = mask.input(M::DTYPE, &shape);
    let d_grad = grad.output("float32", &shape);
    let work_len = workspace.len();
    let d_work = super::support::output(&mut workspace, "float64", &[work_len]);
    let d_out = super::support::output(&mut out, "float64", &[OUT_LEN]);
    let d_status = status.tensor();
    let tensors = LossTensors {
        logp: &d_logp,
        old_logp: d_old.as_ref(),
        ref_logp: d_ref.as_ref(),
        advantages: &d_adv,
        mask: &d_mask,
        grad: &d_grad,
        workspace: &d_work,
        out: &d_out,
        status: &d_status,
    };
    let (stream, device_inputs, buffers) = tensors.check(options, 0).expect("checks");
    policy_loss(&stream, &device_inputs, options, &buffers).expect("launches");
    LossRun {
        cpu,
        cpu_grad,
        grad: grad.get().to_vec(),
        out,
        status,
    }
}

/// Asserts that the kernels found the inputs clean and agree with the CPU engine: gradient
/// within 1e-6 of max|grad| and exactly 0 on masked tokens, loss and every metric the CPU
/// reports within 1e-6 of (|value| + mean|a|), the same metric keys in the same order.
fn assert_agrees(what: &str, data: &LossData, options: &LossOptions, run: &LossRun) {
    run.status.assert_clean(what);
    let cpu = run
        .cpu
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: the CPU engine refused clean inputs: {e}"));
    let scale = run
        .cpu_grad
        .iter()
        .fold(0f32, |m, g| m.max(g.abs()))
        .max(f32::MIN_POSITIVE);
    for (k, (&g, &c)) in run.grad.iter().zip(&run.cpu_grad).enumerate() {
        if data.weights[k] == 0.0 {
            assert_eq!(g, 0.0, "{what}: grad[{k}] of a masked token");
        }
        assert!(
            (g - c).abs() <= 1e-6 * scale,
            "{what}: grad[{k}] {g:e} vs cpu {c:e} (max|grad| {scale:e})"
        );
    }
    let order = data.advantage_order();
    // Where the per-token terms are far larger than their mean (extreme ratios), a term's
    // float32 rounding is bounded by the term: see `largest_terms`.
    let float32 = float32_handles(options);
    let (largest_loss, largest_kl) = if float32 {
        data.largest_terms(options)
    } else {
        (0.0, 0.0)
    };
    assert_near(
        &format!("{what}: loss"),
        run.out[0],
        cpu.loss,
        1e-6 * (cpu.loss.abs() + order + largest_loss),
    );
    let slots = metric_slots(options);
    let keys: Vec<&str> = slots.iter().map(|s| s.0).collect();
    let cpu_keys: Vec<&str> = cpu.metrics.0.iter().map(|m| m.0).collect();
    assert_eq!(keys, cpu_keys, "{what}: metric keys");
    for (name, slot) in slots {
        let want = cpu.metrics.get(name).expect("cpu metric");
        let largest = if name == "kl" { largest_kl } else { 0.0 };
        assert_near(
            &format!("{what}: metric {name}"),
            run.out[slot],
            want,
            1e-6 * (want.abs() + order + largest),
        );
    }
}

/// What a case with possibly overflowing values gave.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Agreed,
    BothRaised,
}

/// Like [`assert_agrees`], except that a CPU error must come with a set status.
fn assert_agrees_or_both_raise(
    what: &str,
    data: &LossData,
    options: &LossOptions,
    run: &LossRun,
) -> Verdict {
    match &run.cpu {
        Ok(_) => {
            assert_agrees(what, data, options, run);
            Verdict::Agreed
        }
        Err(e) => {
            assert_ne!(
                run.status.bits(),
                0,
                "{what}: the CPU engine raised ({e}) but the status is clean"
            );
            Verdict::BothRaised
        }
    }
}

/// One case of the sweeps below: every input dimension as data.
#[derive(Debug, Clone, Copy)]
struct Case {
    shape: (usize, usize),
    dtype: Dtype,
    mask: MaskDtype,
    per_token: bool,
    align: Align,
}

impl Case {
    /// The `k`-th combination. The dimensions rotate with different periods: any 10 consecutive
    /// cases meet every element type with every mask type, both advantage layouts and both
    /// alignments, and any 7 every shape.
    fn rotating(k: usize) -> Case {
        Case {
            shape: SHAPES[k % SHAPES.len()],
            dtype: DTYPES[k % 3],
            mask: MASKS[(k / 3) % 3],
            per_token: k % 2 == 1,
            align: if (k / 2) % 5 == 4 {
                Align::Off16
            } else {
                Align::On16
            },
        }
    }

    fn data(&self, rng: &mut Rng, spread: Spread) -> LossData {
        LossData::random(rng, self.shape, spread, self.per_token, self.mask)
    }

    fn name(&self, options: &LossOptions) -> String {
        format!(
            "{} {} beta {} {:?} bias {} {:?} {:?} mask {:?} per-token {} {:?}",
            options.loss_type.name(),
            options.importance_sampling_level.name(),
            options.beta,
            options.kl_estimator,
            options.kl_bias_correction,
            self.shape,
            self.dtype,
            self.mask,
            self.per_token,
            self.align
        )
    }

    fn check(&self, rng: &mut Rng, spread: Spread, options: &LossOptions) {
        let data = self.data(rng, spread);
        let run = run_loss(&data, options, self.dtype, self.mask, self.align);
        assert_agrees(&self.name(options), &data, options, &run);
    }
}

/// KL settings: none, then every estimator with bias correction on and off at beta 0.04.
fn kl_settings() -> Vec<(f64, KlEstimator, bool)> {
    let mut out = vec![(0.0, KlEstimator::K3, true)];
    for estimator in ESTIMATORS {
        for bias in [true, false] {
            out.push((0.04, estimator, bias));
        }
    }
    out
}

fn options(loss_type: LossType, level: ImportanceSamplingLevel) -> LossOptions {
    LossOptions {
        loss_type,
        importance_sampling_level: level,
        ..LossOptions::default()
    }
}

#[test]
fn loss_every_type_level_and_kl_setting_matches_the_cpu_engine() {
    let mut rng = Rng(7);
    let mut k = 0;
    for loss_type in loss_types() {
        for level in LEVELS {
            for (beta, kl_estimator, kl_bias_correction) in kl_settings() {
                let options = LossOptions {
                    beta,
                    kl_estimator,
                    kl_bias_correction,
                    ..options(loss_type, level)
                };
                Case::rotating(k).check(&mut rng, Spread::Moderate, &options);
                k += 1;
            }
        }
    }
}

#[test]
fn loss_every_aggregation_matches_the_cpu_engine() {
    let aggregations = [
        Some(Aggregation::RowMeanOfTokenMeans),
        Some(Aggregation::TokenMean),
        Some(Aggregation::VerlTokenMean),
        Some(Aggregation::Divisor(37.5)),
        Some(Aggregation::RowMeanOfTokenSums),
        Some(Aggregation::ValidRowMeanOfTokenSums),
        Some(Aggregation::ValidRowMeanOfTokenMeans),
    ];
    let mut rng = Rng(8);
    let mut k = 3;
    for loss_type in loss_types() {
        for (j, aggregation) in aggregations.into_iter().enumerate() {
            let options = LossOptions {
                aggregation,
                beta: 0.04,
                ..options(loss_type, LEVELS[j % 2])
            };
            Case::rotating(k).check(&mut rng, Spread::Moderate, &options);
            k += 1;
        }
        // The loss type's own aggregation with TRL's normalisers given.
        let options = LossOptions {
            num_items: Some(123.0),
            max_completion_length: Some(4096),
            ..options(loss_type, ImportanceSamplingLevel::Token)
        };
        Case::rotating(k).check(&mut rng, Spread::Moderate, &options);
        k += 1;
    }
}

#[test]
fn loss_fractional_weights_summing_below_one_match_the_cpu_engine() {
    // Weights of 1e-3 or less, so the batch's sum is below 1: where TokenMean (max(sum M, 1))
    // and verl's token-mean (sum M) differ, and where seq-mean-token-mean's `n + 1e-8` is not
    // negligible (a row of one token of weight 1e-6).
    let mut rng = Rng(11);
    for aggregation in [
        None,
        Some(Aggregation::TokenMean),
        Some(Aggregation::VerlTokenMean),
        Some(Aggregation::ValidRowMeanOfTokenMeans),
        Some(Aggregation::RowMeanOfTokenMeans),
    ] {
        for loss_type in [LossType::Dapo, LossType::Vanilla] {
            for level in LEVELS {
                let mut data =
                    LossData::random(&mut rng, (4, 37), Spread::Moderate, false, MaskDtype::F32);
                let len = data.len;
                for (k, w) in data.weights.iter_mut().enumerate() {
                    *w = match k / len {
                        2 => f32::from(k % len == 5) * 1e-6,
                        _ => *w * 1e-3,
                    };
                }
                // Row 2's one token is clean (the rest of it is padding).
                let at = 2 * len + 5;
                data.logp[at] = -0.7;
                old(&mut data)[at] = -0.8;
                reference(&mut data)[at] = -0.6;
                data.poison_padding();
                let options = LossOptions {
                    aggregation,
                    beta: 0.04,
                    ..options(loss_type, level)
                };
                let run = run_loss(&data, &options, Dtype::F32, MaskDtype::F32, Align::On16);
                let what = format!("weights below one, {aggregation:?} {loss_type:?} {level:?}");
                assert_agrees(&what, &data, &options, &run);
            }
        }
    }
}

#[test]
fn loss_delta_epsilon_high_and_the_scalar_knobs_match_the_cpu_engine() {
    let mut rng = Rng(9);
    let mut k = 1;
    for loss_type in loss_types() {
        for level in LEVELS {
            let options = LossOptions {
                epsilon_low: 0.1,
                epsilon_high: Some(if loss_type == LossType::Cispo {
                    1.1
                } else {
                    0.28
                }),
                delta: (loss_type != LossType::Vanilla).then_some(1.15),
                beta: 0.04,
                grad_scale: 0.25,
                clip_ratio_c: 1.6,
                sapo_temperature_pos: 0.7,
                sapo_temperature_neg: 1.9,
                vespo_k_pos: 1.5,
                vespo_lambda_pos: 0.5,
                vespo_k_neg: 4.0,
                vespo_lambda_neg: 1.5,
                ..options(loss_type, level)
            };
            Case::rotating(k).check(&mut rng, Spread::Moderate, &options);
            k += 1;
        }
    }
}

#[test]
fn loss_without_old_or_reference_logp_matches_the_cpu_engine() {
    let mut rng = Rng(10);
    let mut k = 2;
    for loss_type in loss_types() {
        for level in LEVELS {
            let case = Case::rotating(k);
            let mut data = case.data(&mut rng, Spread::Moderate);
            data.old = None;
            data.reference = None;
            let options = options(loss_type, level);
            let run = run_loss(&data, &options, case.dtype, case.mask, case.align);
            assert_agrees(
                &format!("no old: {}", case.name(&options)),
                &data,
                &options,
                &run,
            );
            k += 1;
        }
    }
}

#[test]
fn loss_every_element_and_mask_type_at_both_alignments_matches_the_cpu_engine() {
    let mut rng = Rng(12);
    for dtype in DTYPES {
        for mask in MASKS {
            for (shape, align) in [
                ((4, 64), Align::On16),
                ((4, 64), Align::Off16),
                ((3, 1030), Align::On16),
            ] {
                for loss_type in [LossType::Grpo, LossType::Vanilla] {
                    let case = Case {
                        shape,
                        dtype,
                        mask,
                        per_token: loss_type == LossType::Vanilla,
                        align,
                    };
                    let options = LossOptions {
                        beta: 0.04,
                        ..options(loss_type, ImportanceSamplingLevel::Token)
                    };
                    case.check(&mut rng, Spread::Moderate, &options);
                }
            }
        }
    }
}

#[test]
fn loss_with_every_row_masked_matches_the_cpu_engine() {
    let mut rng = Rng(13);
    for loss_type in loss_types() {
        for level in LEVELS {
            let case = Case::rotating(loss_type as usize + 3);
            let mut data = case.data(&mut rng, Spread::Moderate);
            data.weights.iter_mut().for_each(|w| *w = 0.0);
            data.poison_padding();
            let options = LossOptions {
                beta: 0.04,
                ..options(loss_type, level)
            };
            let run = run_loss(&data, &options, case.dtype, case.mask, case.align);
            assert_agrees(
                &format!("all masked: {}", case.name(&options)),
                &data,
                &options,
                &run,
            );
        }
    }
}

#[test]
fn loss_extreme_log_ratios_agree_or_both_raise() {
    let mut rng = Rng(14);
    let (mut agreed, mut raised) = (0, 0);
    let mut k = 0;
    for loss_type in loss_types() {
        for level in LEVELS {
            for spread in [30.0, 100.0] {
                let case = Case::rotating(k);
                k += 1;
                let data = case.data(&mut rng, Spread::Extreme(spread));
                let options = LossOptions {
                    beta: 0.04,
                    kl_estimator: ESTIMATORS[k % ESTIMATORS.len()],
                    ..options(loss_type, level)
                };
                let run = run_loss(&data, &options, case.dtype, case.mask, case.align);
                let what = format!("log ratios to +-{spread}: {}", case.name(&options));
                match assert_agrees_or_both_raise(&what, &data, &options, &run) {
                    Verdict::Agreed => agreed += 1,
                    Verdict::BothRaised => raised += 1,
                }
            }
        }
    }
    // Bounded losses (sapo, vanilla's clamps, ...) must still be compared, not only refused, and
    // the unbounded ones must overflow somewhere.
    eprintln!("extreme log ratios: {agreed} compared, {raised} raised on both sides");
    assert!(
        agreed >= 8 && raised >= 1,
        "{agreed} compared, {raised} raised"
    );
}

#[test]
fn loss_ratios_at_and_near_the_clip_bounds_match_the_cpu_engine() {
    let mut rng = Rng(15);
    let mut k = 0;
    for loss_type in loss_types() {
        for level in LEVELS {
            // Ratios exactly 1 on bounds of 1 (epsilon_low = epsilon_high = 0, delta = 1: torch's
            // tie rules), then float32 log ratios within 1e-7 of ln 0.8, ln 1.2 and ln 1.28
            // (where the kernels' float32 exponential must defer to the float64 one).
            let exact = LossOptions {
                epsilon_low: 0.0,
                epsilon_high: Some(if loss_type == LossType::Cispo {
                    1.0
                } else {
                    0.0
                }),
                delta: (loss_type != LossType::Vanilla).then_some(1.0),
                ..options(loss_type, level)
            };
            Case::rotating(k).check(&mut rng, Spread::AtBounds(&[1.0, 1.0, 1.3]), &exact);
            k += 1;
            let near = LossOptions {
                epsilon_high: Some(0.28),
                beta: 0.04,
                ..options(loss_type, level)
            };
            let case = Case {
                dtype: Dtype::F32,
                ..Case::rotating(k)
            };
            case.check(&mut rng, Spread::AtBounds(&[0.8, 1.2, 1.28, 1.0]), &near);
            k += 1;
        }
    }
}

/// A bad value put into clean inputs, and what must follow: the CPU engine raises an error
/// naming `arg`, the kernels set `bit` and report `first` as the smallest offending flat index.
struct BadInput {
    name: &'static str,
    mask: MaskDtype,
    per_token: bool,
    beta: f64,
    level: ImportanceSamplingLevel,
    spoil: fn(&mut LossData),
    arg: &'static str,
    bit: u32,
    first: usize,
}

/// The flat index the bad-input cases spoil: row 2, token 5 of a (4, 12) batch.
const AT: usize = 2 * 12 + 5;

#[rustfmt::skip]
fn bad_inputs() -> Vec<BadInput> {
    use ImportanceSamplingLevel::{Sequence, Token};
    use MaskDtype::{Bool, F32};
    let case = |name, mask, per_token, beta, level, spoil, arg, bit, first| BadInput {
        name, mask, per_token, beta, level, spoil, arg, bit, first,
    };
    let (bad, bad_mask) = (status::NONFINITE_INPUT, status::BAD_MASK);
    vec![
        // name, mask, per-token advantages, beta, level, spoil, CPU error's argument, bit, first
        case("NaN logp", Bool, false, 0.0, Token, |d| d.logp[AT] = f32::NAN, "logp", bad, AT),
        case("-inf logp", Bool, false, 0.0, Sequence, |d| d.logp[AT] = f32::NEG_INFINITY, "logp", bad, AT),
        case("+inf old_logp", Bool, false, 0.0, Token, |d| old(d)[AT] = f32::INFINITY, "old_logp", bad, AT),
        case("NaN old_logp", F32, false, 0.0, Sequence, |d| old(d)[AT] = f32::NAN, "old_logp", bad, AT),
        case("NaN ref_logp", Bool, false, 0.04, Token, |d| reference(d)[AT] = f32::NAN, "ref_logp", bad, AT),
        case("-inf ref_logp", F32, true, 0.04, Sequence, |d| reference(d)[AT] = f32::NEG_INFINITY, "ref_logp", bad, AT),
        case("NaN row advantage", Bool, false, 0.0, Token, |d| d.advantages[2] = f32::NAN, "advantages", bad, 2 * 12),
        // Row 1 is fully masked: its advantage is still read and must still be finite.
        case("inf advantage of an empty row", Bool, false, 0.0, Token, |d| d.advantages[1] = f32::INFINITY, "advantages", bad, 12),
        case("NaN token advantage", F32, true, 0.0, Token, |d| d.advantages[AT] = f32::NAN, "advantages", bad, AT),
        case("negative mask weight", F32, false, 0.0, Token, |d| d.weights[AT] = -1.0, "mask", bad_mask, AT),
        case("NaN mask weight", F32, false, 0.0, Sequence, |d| d.weights[AT] = f32::NAN, "mask", bad_mask, AT),
        case("infinite mask weight", F32, true, 0.04, Token, |d| d.weights[AT] = f32::INFINITY, "mask", bad_mask, AT),
    ]
}

fn old(data: &mut LossData) -> &mut Vec<f32> {
    data.old.as_mut().expect("old_logp")
}

fn reference(data: &mut LossData) -> &mut Vec<f32> {
    data.reference.as_mut().expect("ref_logp")
}

#[test]
fn loss_bad_inputs_set_the_status_where_the_cpu_engine_raises() {
    for (k, bad) in bad_inputs().into_iter().enumerate() {
        for dtype in DTYPES {
            let mut rng = Rng(16 + k as u64);
            let mut data =
                LossData::random(&mut rng, (4, 12), Spread::Moderate, bad.per_token, bad.mask);
            // Clean values at the spoiled token, unmasked, then the one bad value.
            data.weights[AT] = 1.0;
            data.logp[AT] = -1.0;
            old(&mut data)[AT] = -1.1;
            reference(&mut data)[AT] = -0.9;
            if bad.per_token {
                data.advantages[AT] = 0.5;
            }
            (bad.spoil)(&mut data);
            let options = LossOptions {
                beta: bad.beta,
                ..options(LossType::Grpo, bad.level)
            };
            let run = run_loss(&data, &options, dtype, bad.mask, Align::On16);
            let what = format!("{} ({dtype:?})", bad.name);
            let first = bad.first as u64;
            assert_both_raise(
                &what,
                run.cpu.as_ref(),
                &run.status,
                bad.arg,
                bad.bit,
                first,
            );
        }
    }
}

#[test]
fn loss_overflowing_gradient_sets_the_status_where_the_cpu_engine_raises() {
    // A log ratio of 100 at a negative advantage: the unclipped ratio e^100 ~ 2.7e43, over the
    // row's few tokens, overflows float32 in the gradient and the loss.
    let mut rng = Rng(30);
    let mut data = LossData::random(&mut rng, (2, 8), Spread::Moderate, false, MaskDtype::Bool);
    data.weights[3] = 1.0;
    data.logp[3] = -0.5;
    old(&mut data)[3] = -100.5;
    data.advantages[0] = -1.0;
    let options = options(LossType::Grpo, ImportanceSamplingLevel::Token);
    let run = run_loss(&data, &options, Dtype::F32, MaskDtype::Bool, Align::On16);
    assert!(
        run.cpu.is_err(),
        "the CPU engine accepted an overflowing loss"
    );
    assert_ne!(
        run.status.bits() & status::OVERFLOW,
        0,
        "status {:#x}",
        run.status.bits()
    );
}

#[test]
fn loss_overflowing_sum_of_finite_terms_sets_the_status_where_the_cpu_engine_raises() {
    // 64 tokens with log ratio 85 at advantage -1, summed with divisor 1: each gradient entry
    // (e^85 ~ 8.2e36) fits float32, the loss (64 e^85 ~ 5.3e38) does not.
    let (b, t) = (1, 64);
    let data = LossData {
        batch: b,
        len: t,
        logp: vec![-0.5; t],
        old: Some(vec![-85.5; t]),
        reference: None,
        advantages: vec![-1.0],
        per_token: false,
        weights: vec![1.0; t],
    };
    let options = LossOptions {
        aggregation: Some(Aggregation::Divisor(1.0)),
        ..options(LossType::Grpo, ImportanceSamplingLevel::Token)
    };
    let run = run_loss(&data, &options, Dtype::F32, MaskDtype::Bool, Align::On16);
    assert!(
        run.cpu.is_err(),
        "the CPU engine accepted an overflowing loss"
    );
    assert!(
        run.grad.iter().all(|g| g.is_finite()),
        "every gradient entry fits float32"
    );
    assert_ne!(
        run.status.bits() & status::OVERFLOW,
        0,
        "status {:#x}",
        run.status.bits()
    );
}

#[test]
fn loss_reference_is_not_read_without_a_kl_term() {
    // beta = 0: a NaN reference log-probability at an unmasked token is no error on either side.
    let mut rng = Rng(31);
    for level in LEVELS {
        let mut data = LossData::random(&mut rng, (3, 8), Spread::Moderate, false, MaskDtype::Bool);
        data.weights[5] = 1.0;
        data.logp[5] = -1.0;
        old(&mut data)[5] = -1.1;
        reference(&mut data)[5] = f32::NAN;
        let options = options(LossType::Grpo, level);
        let run = run_loss(&data, &options, Dtype::F32, MaskDtype::Bool, Align::On16);
        assert_agrees(
            &format!("NaN reference at beta 0, {level:?}"),
            &data,
            &options,
            &run,
        );
    }
}

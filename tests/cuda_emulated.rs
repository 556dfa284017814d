//! The CUDA kernels and their launch sequences, run by the emulator (feature `emulator`: each
//! kernel's own source compiled by the host's C++ compiler, threads as fibers), against the CPU
//! engine, which is their oracle. Needs no GPU: `cargo test --features emulator --test
//! cuda_emulated`.
//!
//! Each case describes host buffers as CUDA tensors (`DeviceTensor` on "cuda:0"), calls the same
//! entry point the Python wrapper calls on a GPU, and compares every output with the CPU path's.
//! Tolerances: outputs the kernels compute with the CPU path's formulas in float64 and round to
//! float32 once agree to 1 float32 ulp; float32 intermediates (the exponentials, the log-softmax's
//! per-pack sums) are stated at each comparison.
#![cfg(feature = "emulator")]

mod common;

use common::Rng;

use sgpo_rs::cuda::loss::{metric_slots, policy_loss, workspace_len, LossTensors, OUT_LEN};
use sgpo_rs::cuda::{groups, status, DeviceTensor};
use sgpo_rs::loss::{AdvantageView, LossInputs, LossOptions, LossType};

/// A host buffer the kernels read, described as a contiguous CUDA tensor.
fn describe<T>(data: &[T], dtype: &str, shape: &[usize]) -> DeviceTensor {
    at(data.as_ptr() as u64, data.len(), dtype, shape)
}

/// A host buffer the kernels write (the pointer comes from a unique borrow).
fn describe_out<T>(data: &mut [T], dtype: &str, shape: &[usize]) -> DeviceTensor {
    at(data.as_mut_ptr() as u64, data.len(), dtype, shape)
}

fn at(ptr: u64, len: usize, dtype: &str, shape: &[usize]) -> DeviceTensor {
    assert_eq!(shape.iter().product::<usize>(), len, "shape of {dtype}");
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1] as i64;
    }
    DeviceTensor {
        ptr,
        dtype: dtype.to_string(),
        shape: shape.to_vec(),
        strides,
        device: "cuda:0".to_string(),
    }
}

/// The status word's bits (0: the kernels found nothing wrong).
fn status_bits(word: &[u64; status::BYTES / 8]) -> u32 {
    word[0] as u32
}

fn ulps_apart(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 {
            i32::MIN - bits
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

struct LossCase {
    batch: usize,
    len: usize,
    options: LossOptions,
    per_token_advantages: bool,
}

fn run_loss_case(rng: &mut Rng, case: &LossCase) {
    let (b, t) = (case.batch, case.len);
    let n = b * t;
    let logp: Vec<f32> = (0..n).map(|_| rng.uniform(-6.0, -0.01) as f32).collect();
    let old: Vec<f32> = logp
        .iter()
        .map(|&x| x + rng.uniform(-0.4, 0.4) as f32)
        .collect();
    let reference: Vec<f32> = logp
        .iter()
        .map(|&x| x + rng.uniform(-0.5, 0.5) as f32)
        .collect();
    // Masks with gaps and an empty row.
    let mask: Vec<u8> = (0..n)
        .map(|k| u8::from(k / t != 1 && rng.chance(85)))
        .collect();
    let adv_len = if case.per_token_advantages { n } else { b };
    let advantages: Vec<f32> = (0..adv_len)
        .map(|_| rng.uniform(-2.0, 2.0) as f32)
        .collect();

    let view = if case.per_token_advantages {
        AdvantageView::PerToken(&advantages)
    } else {
        AdvantageView::PerRow(&advantages)
    };
    let inputs = LossInputs {
        logp: &logp,
        old_logp: Some(&old),
        ref_logp: Some(&reference),
        advantages: view,
        mask: &mask,
        batch: b,
        len: t,
    };
    let mut cpu_grad = vec![0f32; n];
    let cpu = sgpo_rs::loss::policy_loss(&inputs, &case.options, &mut cpu_grad).expect("cpu loss");

    let mut grad = vec![f32::NAN; n];
    let mut workspace = vec![f64::NAN; workspace_len(b, t)];
    let mut out = vec![f64::NAN; OUT_LEN];
    let mut status_word = [0u64; status::BYTES / 8];
    let adv_shape: Vec<usize> = if case.per_token_advantages {
        vec![b, t]
    } else {
        vec![b]
    };
    let (d_logp, d_old, d_ref) = (
        describe(&logp, "float32", &[b, t]),
        describe(&old, "float32", &[b, t]),
        describe(&reference, "float32", &[b, t]),
    );
    let d_adv = describe(&advantages, "float32", &adv_shape);
    let d_mask = describe(&mask, "bool", &[b, t]);
    let d_grad = describe_out(&mut grad, "float32", &[b, t]);
    let work_len = workspace.len();
    let d_work = describe_out(&mut workspace, "float64", &[work_len]);
    let d_out = describe_out(&mut out, "float64", &[OUT_LEN]);
    let d_status = describe_out(&mut status_word, "int64", &[2]);
    let tensors = LossTensors {
        logp: &d_logp,
        old_logp: Some(&d_old),
        ref_logp: Some(&d_ref),
        advantages: &d_adv,
        mask: &d_mask,
        grad: &d_grad,
        workspace: &d_work,
        out: &d_out,
        status: &d_status,
    };
    let (stream, device_inputs, buffers) = tensors.check(&case.options, 0).expect("checks");
    policy_loss(&stream, &device_inputs, &case.options, &buffers).expect("launches");
    assert_eq!(status_bits(&status_word), 0, "status set on clean inputs");

    let what = format!(
        "{:?} {}x{} beta {} per-token {}",
        case.options.loss_type, b, t, case.options.beta, case.per_token_advantages
    );
    let scale = cpu_grad.iter().fold(0f32, |m, g| m.max(g.abs())).max(1e-30);
    for (k, (&g, &c)) in grad.iter().zip(&cpu_grad).enumerate() {
        assert!(
            (g - c).abs() <= 1e-6 * scale,
            "{what}: grad[{k}] {g} vs cpu {c} (scale {scale})"
        );
    }
    // The loss is a weighted mean of per-token terms of the order of |a| (which may cancel):
    // 1e-6 of that order.
    let order = advantages.iter().map(|a| a.abs() as f64).sum::<f64>() / adv_len as f64;
    assert!(
        (out[0] - cpu.loss).abs() <= 1e-6 * (cpu.loss.abs() + order),
        "{what}: loss {} vs cpu {}",
        out[0],
        cpu.loss
    );
    for (name, slot) in metric_slots(&case.options) {
        let want = cpu.metrics.get(name).expect("cpu metric");
        let got = out[slot];
        let same =
            (want.is_nan() && got.is_nan()) || (got - want).abs() <= 1e-6 * (want.abs() + order);
        assert!(same, "{what}: metric {name} {got} vs cpu {want}");
    }
}

#[test]
fn loss_matches_the_cpu_engine() {
    let mut rng = Rng(7);
    for loss_type in [LossType::Dapo, LossType::Grpo, LossType::Vanilla] {
        for (batch, len) in [(3, 5), (4, 1030)] {
            for beta in [0.0, 0.04] {
                for per_token_advantages in [false, true] {
                    let options = LossOptions {
                        loss_type,
                        beta,
                        ..LossOptions::default()
                    };
                    run_loss_case(
                        &mut rng,
                        &LossCase {
                            batch,
                            len,
                            options,
                            per_token_advantages,
                        },
                    );
                }
            }
        }
    }
}

#[test]
fn token_advantages_match_the_cpu_engine() {
    let mut rng = Rng(11);
    for (rows, len) in [(1, 1), (3, 7), (5, 1029), (3, 9001), (2, 8192)] {
        let advantages: Vec<f32> = (0..rows).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
        let mask: Vec<u8> = (0..rows * len).map(|_| u8::from(rng.chance(70))).collect();
        let mut want = vec![0f32; rows * len];
        sgpo_rs::advantages::token_advantages(&advantages, &mask, len, &mut want).expect("cpu");
        let mut out = vec![f32::NAN; rows * len];
        let mut status_word = [0u64; status::BYTES / 8];
        groups::token_advantages(
            0,
            &describe(&advantages, "float32", &[rows]),
            &describe(&mask, "bool", &[rows, len]),
            &describe_out(&mut out, "float32", &[rows, len]),
            &describe_out(&mut status_word, "int64", &[2]),
        )
        .expect("launches");
        assert_eq!(status_bits(&status_word), 0);
        for (k, (&g, &w)) in out.iter().zip(&want).enumerate() {
            assert_eq!(ulps_apart(g, w), 0, "{rows}x{len}: out[{k}] {g} vs {w}");
        }
    }
}

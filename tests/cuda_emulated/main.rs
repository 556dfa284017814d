//! Every CUDA entry point, run by the emulator (feature `emulator`: each kernel's own source
//! compiled by the host's C++ compiler, threads as fibers), against the CPU engine, which is its
//! oracle. Needs no GPU: `cargo test --features emulator --test cuda_emulated`.
//!
//! Each case places host buffers (at a chosen 16-byte alignment), describes them as CUDA tensors
//! (`DeviceTensor` on "cuda:0"), calls the entry point the Python wrapper calls on a GPU, and
//! compares every output with the CPU engine's on the same values. Outputs start as NaN (a
//! forgotten write shows), the status word as zeros (as torch allocates it).
//!
//! - [`loss`]: `cuda::loss::policy_loss` for every loss type of the registry, both importance
//!   sampling levels, every KL estimator with bias correction on and off, every aggregation,
//!   delta, epsilon_high and the other knobs, per-row and per-token advantages, float32,
//!   bfloat16 and float16 inputs, bool, uint8 and float32 masks, rows of 1 to 2052 tokens
//!   (aligned and not, one to three chunks), empty rows, an all-masked batch, weights summing
//!   below 1, absent old/reference log-probabilities, poisoned padding, extreme log ratios and
//!   ratios at the clip bounds; bad inputs and overflows.
//! - [`logprob`]: `cuda::logprob::selective_logprobs` and `selective_logprobs_backward`, every
//!   element type, vocabularies on and off the 16-byte pack, TRL's strided `[:, :-1]` view and a
//!   column slice, temperature, entropy, saved statistics, the in-place backward, `-inf`
//!   logits, large logits; bad inputs.
//! - `token_advantages_match_the_cpu_engine` below: the token broadcast.
//!
//! Bad inputs: for each, the kernels must set the status bit (and the smallest offending index
//! where the kernels record one) and the CPU engine must raise on the same values; values the
//! kernels must not read (masked tokens, the rows a view skips) must leave the status clean.
//!
//! Tolerances, where they are not exact equality:
//! - loss: per-token math is float64 on both sides except the kernels' exponentials (float32,
//!   with the argument's rounding folded back in: 2.4e-7 relative) and, for f32/bf16/f16 inputs
//!   of the clipped losses at token level, the CPU's float32 path (5e-7 of each value's own
//!   magnitude). So the gradient agrees within 1e-6 of max|grad|, the loss and the metrics
//!   within 1e-6 of (|value| + mean|a|) (the loss is a weighted mean of terms of the order of
//!   |a|, which may cancel).
//! - selective log-softmax: stated in [`logprob`] (float32 per-pack sums, float32 scaling by
//!   1/T and float32 exponentials in the backward, against the CPU's float64 path).
//! - token advantages: bit-identical (one float32 product on both sides).
//!
//! The emulator runs the kernels' 16-byte loads and stores on the host, where a misaligned one
//! goes unnoticed (a GPU faults). To have every access's alignment checked, run with the host
//! compiler's undefined-behaviour sanitizer:
//! `CXX="g++ -fsanitize=undefined -fno-sanitize-recover=all" cargo test --features emulator
//! --test cuda_emulated`. What the emulator cannot show - the device's own `exp`/`log` to the
//! last ulp, races, speed - only a GPU run can (`scripts/gpu_check.sh`).
#![cfg(feature = "emulator")]

#[path = "../common/mod.rs"]
mod common;

mod logprob;
mod loss;
mod support;

use common::Rng;
use sgpo_rs::cuda::groups;
use support::{input, output, ulps_f32, Status};

#[test]
fn token_advantages_match_the_cpu_engine() {
    let mut rng = Rng(11);
    for (rows, len) in [(1, 1), (3, 7), (5, 1029)] {
        let advantages: Vec<f32> = (0..rows).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
        let mask: Vec<u8> = (0..rows * len).map(|_| u8::from(rng.chance(70))).collect();
        let mut want = vec![0f32; rows * len];
        sgpo_rs::advantages::token_advantages(&advantages, &mask, len, &mut want).expect("cpu");
        let mut out = vec![f32::NAN; rows * len];
        let mut status = Status::new();
        groups::token_advantages(
            0,
            &input(&advantages, "float32", &[rows]),
            &input(&mask, "bool", &[rows, len]),
            &output(&mut out, "float32", &[rows, len]),
            &status.tensor(),
        )
        .expect("launches");
        status.assert_clean("token advantages");
        for (k, (&g, &w)) in out.iter().zip(&want).enumerate() {
            assert_eq!(ulps_f32(g, w), 0, "{rows}x{len}: out[{k}] {g} vs {w}");
        }
    }
}

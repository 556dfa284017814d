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
//!   logits, large logits, confident targets; bad inputs.
//! - [`groups`]: `cuda::groups::sgpo_rewards`, `group_advantages` and `token_advantages`, with
//!   consecutive groups and group ids (CSR, built as the Python wrapper builds it), both verdict
//!   kinds, both credit rules and modes, every scale, singleton and low-variance groups, NaN
//!   rewards, every mask type and row alignment; bad inputs.
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
//! - groups: rewards, credits, flags, counts and token advantages are bit-identical (the same
//!   float64 formulas in the same order, rounded once); the mean credit and batch-scaled
//!   advantages, whose sums run in another order, within float64 rounding (1e-12 relative) and
//!   1 float32 ulp.
//!
//! The emulator builds the kernels with the host compiler's undefined-behaviour sanitizer where
//! the compiler has it (g++ and clang++ do): a misaligned 16-byte load or store, which a GPU
//! faults on, aborts the test binary with the kernel's file and line. What the emulator cannot
//! show - the device's own `exp`/`log` to the last ulp, races, speed - only a GPU run can
//! (`scripts/gpu_check.sh`).
#![cfg(feature = "emulator")]

#[path = "../common/mod.rs"]
mod common;

mod groups;
mod logprob;
mod loss;
mod support;

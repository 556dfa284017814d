//! Host side of `kernels/loss.cu`: the fused policy loss on device pointers.
//!
//! The caller provides the inputs, a float32 gradient buffer, a float64 workspace of
//! [`workspace_len`] elements, a float64 `out` of [`OUT_LEN`] elements (loss, then the metric
//! slots [`metric_slots`] names) and a status buffer initialised as [`super::status`] says. Nothing is copied to or from the
//! host, and nothing waits: the caller reads `out` and the status when it needs them.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::LOSS;
use super::{FloatDtype, MaskDtype};
use crate::error::{Error, Result};
use crate::loss::registry::{CUDA_SLOTS, KL_CUDA_SLOT};
use crate::loss::{Aggregation, ImportanceSamplingLevel, KlEstimator, LossOptions, LossType};

const BLOCK: u32 = 256;
/// Tokens per `loss_tokens` block (`LOSS_TOKENS`).
const TOKENS_PER_BLOCK: usize = 1024;
/// Partial sums per block (`LOSS_PARTIALS`).
const PARTIALS: usize = 6;
/// Elements of `out`: the loss and the metric slots of the registry.
pub const OUT_LEN: usize = CUDA_SLOTS;

/// The `(B, T)` inputs on the device. `old_logp`/`ref_logp` are 0 when absent; advantages are
/// float32, `(B,)` or `(B, T)`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLossInputs {
    pub logp: u64,
    pub old_logp: u64,
    pub ref_logp: u64,
    pub advantages: u64,
    pub advantages_per_token: bool,
    pub mask: u64,
    pub dtype: FloatDtype,
    pub mask_dtype: MaskDtype,
    pub batch: usize,
    pub len: usize,
}

/// Output and scratch buffers on the device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLossBuffers {
    /// float32 `(B, T)`: `grad_scale * dL/dlogp`.
    pub grad: u64,
    /// float64, [`workspace_len`] elements.
    pub workspace: u64,
    /// float64, [`OUT_LEN`] elements.
    pub out: u64,
    pub status: u64,
}

/// `LossParams` of the kernel: same fields, same order, no implicit padding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LossParams {
    rows: i64,
    len: i64,
    chunks: i32,
    loss_type: i32,
    sequence: i32,
    kl_estimator: i32,
    bias_correction: i32,
    advantages_per_token: i32,
    has_old: i32,
    has_ref: i32,
    aggregation: i32,
    /// 1 when every row of every input and of `grad` starts 16-byte aligned (`len % 4 == 0`
    /// and aligned buffers): the kernel then loads and stores four tokens at a time.
    vec: i32,
    divisor: f64,
    beta: f64,
    lo: f64,
    hi: f64,
    delta: f64,
    epsilon_high: f64,
    clip_ratio_c: f64,
    tau_pos: f64,
    tau_neg: f64,
    vespo_k_pos: f64,
    vespo_lambda_pos: f64,
    vespo_k_neg: f64,
    vespo_lambda_neg: f64,
    grad_scale: f64,
}

impl LossParams {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(std::mem::size_of::<Self>());
        for v in [self.rows, self.len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.chunks,
            self.loss_type,
            self.sequence,
            self.kl_estimator,
            self.bias_correction,
            self.advantages_per_token,
            self.has_old,
            self.has_ref,
            self.aggregation,
            self.vec,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.divisor,
            self.beta,
            self.lo,
            self.hi,
            self.delta,
            self.epsilon_high,
            self.clip_ratio_c,
            self.tau_pos,
            self.tau_neg,
            self.vespo_k_pos,
            self.vespo_lambda_pos,
            self.vespo_k_neg,
            self.vespo_lambda_neg,
            self.grad_scale,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

fn chunks(len: usize) -> usize {
    len.div_ceil(TOKENS_PER_BLOCK).max(1)
}

/// Whether the token kernel may read and write four tokens at a time: every row of every input
/// and of the gradient starts on a boundary of four elements' bytes (16 for float32, 8 for
/// half, 4 for a byte mask), which fresh torch tensors with `len % 4 == 0` satisfy.
fn vectorizable(inputs: &DeviceLossInputs, grad: u64) -> bool {
    let size = inputs.dtype.size() as u64;
    let mask_size = match inputs.mask_dtype {
        MaskDtype::U8 => 1,
        MaskDtype::F32 => 4,
    };
    let aligned = |ptr: u64, size: u64| ptr.is_multiple_of(4 * size);
    inputs.len.is_multiple_of(4)
        && aligned(inputs.logp, size)
        && aligned(inputs.old_logp, size)
        && aligned(inputs.ref_logp, size)
        && (!inputs.advantages_per_token || aligned(inputs.advantages, 4))
        && aligned(inputs.mask, mask_size)
        && aligned(grad, 4)
}

/// float64 elements of the workspace for a `(batch, len)` loss.
pub fn workspace_len(batch: usize, len: usize) -> usize {
    // row stats (3 per row), batch counts (2), partials, row ratio gradients (1 per row)
    batch * 3 + 2 + batch * chunks(len) * PARTIALS + batch
}

fn loss_type_code(t: LossType) -> i32 {
    t.spec().cuda_code
}

fn kl_code(k: KlEstimator) -> i32 {
    match k {
        KlEstimator::K1 => 0,
        KlEstimator::Abs => 1,
        KlEstimator::K2 => 2,
        KlEstimator::K3 => 3,
        KlEstimator::LowVarKl => 4,
    }
}

fn aggregation_code(a: Aggregation) -> (i32, f64) {
    match a {
        Aggregation::RowMeanOfTokenMeans => (0, 1.0),
        Aggregation::TokenMean => (1, 1.0),
        Aggregation::VerlTokenMean => (2, 1.0),
        Aggregation::Divisor(d) => (3, d),
        Aggregation::RowMeanOfTokenSums => (4, 1.0),
        Aggregation::ValidRowMeanOfTokenSums => (5, 1.0),
        Aggregation::ValidRowMeanOfTokenMeans => (6, 1.0),
    }
}

/// The metrics the loss type logs and their slots in `out`, in the order and with the keys of
/// the CPU path (`crate::loss::LossMetrics`).
pub fn metric_slots(options: &LossOptions) -> Vec<(&'static str, usize)> {
    let mut slots = Vec::new();
    if options.beta != 0.0 {
        slots.push(("kl", KL_CUDA_SLOT));
    }
    let metrics = options.loss_type.spec().metrics;
    slots.extend(metrics.iter().map(|m| (m.name, m.cuda_slot)));
    slots
}

/// Launches the loss: after it, `out[0]` is the loss, the metric slots are filled, `grad` holds
/// `grad_scale * dL/dlogp`, and the status says whether the inputs were valid.
pub fn policy_loss(
    stream: &Stream,
    inputs: &DeviceLossInputs,
    options: &LossOptions,
    buffers: &DeviceLossBuffers,
) -> Result<()> {
    options.validate()?;
    let (batch, len) = (inputs.batch, inputs.len);
    if batch == 0 {
        return Err(Error::value(
            "logp",
            "expected at least one row, got an empty batch",
        ));
    }
    if len == 0 {
        return Err(Error::value(
            "logp",
            "expected at least one token per row (T >= 1), got T = 0",
        ));
    }
    if options.beta != 0.0 && inputs.ref_logp == 0 {
        return Err(Error::value("ref_logp", "required when beta != 0"));
    }
    let chunks = chunks(len);
    let blocks = batch
        .checked_mul(chunks)
        .filter(|&b| b <= i32::MAX as usize)
        .ok_or_else(|| {
            Error::shape(
                "logp",
                "(B, T) with B * ceil(T / 1024) < 2^31",
                format!("({batch}, {len})"),
            )
        })?;
    let aggregation = options.aggregation_for(batch, len);
    let (aggregation, divisor) = aggregation_code(aggregation);
    let sequence = options.importance_sampling_level == ImportanceSamplingLevel::Sequence;
    let params = LossParams {
        rows: batch as i64,
        len: len as i64,
        chunks: chunks as i32,
        loss_type: loss_type_code(options.loss_type),
        sequence: i32::from(sequence),
        kl_estimator: kl_code(options.kl_estimator),
        bias_correction: i32::from(options.kl_bias_correction),
        advantages_per_token: i32::from(inputs.advantages_per_token),
        has_old: i32::from(inputs.old_logp != 0),
        has_ref: i32::from(inputs.ref_logp != 0),
        aggregation,
        vec: i32::from(vectorizable(inputs, buffers.grad)),
        divisor,
        beta: options.beta,
        lo: 1.0 - options.epsilon_low,
        hi: 1.0 + options.epsilon_high(),
        delta: options.delta.unwrap_or(f64::INFINITY),
        epsilon_high: options.epsilon_high(),
        clip_ratio_c: options.clip_ratio_c,
        tau_pos: options.sapo_temperature_pos,
        tau_neg: options.sapo_temperature_neg,
        vespo_k_pos: options.vespo_k_pos,
        vespo_lambda_pos: options.vespo_lambda_pos,
        vespo_k_neg: options.vespo_k_neg,
        vespo_lambda_neg: options.vespo_lambda_neg,
        grad_scale: options.grad_scale,
    }
    .bytes();

    let ws = buffers.workspace;
    let row_stats = ws;
    let batch_counts = row_stats + (batch * 3 * 8) as u64;
    let partials = batch_counts + 16;
    let row_common = partials + (batch * chunks * PARTIALS * 8) as u64;
    let suffix = format!("{}_{}", inputs.dtype.suffix(), inputs.mask_dtype.suffix());
    let per_row = Shape {
        grid: (batch as u32, 1, 1),
        block: BLOCK,
        shared_bytes: 0,
    };
    let single = Shape {
        grid: (1, 1, 1),
        block: BLOCK,
        shared_bytes: 0,
    };
    let per_chunk = Shape {
        grid: (blocks as u32, 1, 1),
        block: BLOCK,
        shared_bytes: 0,
    };
    launch(
        stream,
        &LOSS,
        &format!("loss_rows_{suffix}"),
        per_row,
        &[
            Arg::Ptr(inputs.logp),
            Arg::Ptr(inputs.old_logp),
            Arg::Ptr(inputs.advantages),
            Arg::Ptr(inputs.mask),
            Arg::Struct(params.clone()),
            Arg::Ptr(row_stats),
            Arg::Ptr(buffers.status),
        ],
    )?;
    launch(
        stream,
        &LOSS,
        "loss_batch",
        single,
        &[
            Arg::Struct(params.clone()),
            Arg::Ptr(row_stats),
            Arg::Ptr(batch_counts),
        ],
    )?;
    let tokens = |write_grad: bool| {
        launch(
            stream,
            &LOSS,
            &format!("loss_tokens_{suffix}"),
            per_chunk,
            &[
                Arg::Ptr(inputs.logp),
                Arg::Ptr(inputs.old_logp),
                Arg::Ptr(inputs.ref_logp),
                Arg::Ptr(inputs.advantages),
                Arg::Ptr(inputs.mask),
                Arg::Struct(params.clone()),
                Arg::Ptr(row_stats),
                Arg::Ptr(batch_counts),
                Arg::Ptr(row_common),
                Arg::I32(i32::from(write_grad)),
                Arg::Ptr(buffers.grad),
                Arg::Ptr(partials),
                Arg::Ptr(buffers.status),
            ],
        )
    };
    // Token level: one pass writes the gradient. Sequence level: the row ratio gradients need the
    // whole row first, so a second pass writes the gradient after the finalize.
    tokens(!sequence)?;
    launch(
        stream,
        &LOSS,
        "loss_finalize",
        single,
        &[
            Arg::Struct(params.clone()),
            Arg::Ptr(inputs.advantages),
            Arg::Ptr(row_stats),
            Arg::Ptr(batch_counts),
            Arg::Ptr(partials),
            Arg::Ptr(row_common),
            Arg::Ptr(buffers.out),
            Arg::Ptr(buffers.status),
        ],
    )?;
    if sequence {
        tokens(true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_the_kernel_layout() {
        // 2 i64 + 10 i32 + 14 f64, no padding (LossParams in kernels/loss.cu).
        let p = LossParams {
            rows: 1,
            len: 2,
            chunks: 3,
            loss_type: 4,
            sequence: 5,
            kl_estimator: 6,
            bias_correction: 7,
            advantages_per_token: 8,
            has_old: 9,
            has_ref: 10,
            aggregation: 11,
            vec: 0,
            divisor: 1.5,
            beta: 0.0,
            lo: 0.0,
            hi: 0.0,
            delta: 0.0,
            epsilon_high: 0.0,
            clip_ratio_c: 0.0,
            tau_pos: 0.0,
            tau_neg: 0.0,
            vespo_k_pos: 0.0,
            vespo_lambda_pos: 0.0,
            vespo_k_neg: 0.0,
            vespo_lambda_neg: 0.0,
            grad_scale: 9.0,
        };
        let bytes = p.bytes();
        assert_eq!(bytes.len(), std::mem::size_of::<LossParams>());
        assert_eq!(bytes.len(), 16 + 40 + 14 * 8);
        assert_eq!(&bytes[56..64], &1.5f64.to_le_bytes());
        assert_eq!(&bytes[bytes.len() - 8..], &9.0f64.to_le_bytes());
    }

    #[test]
    fn metric_slots_follow_the_cpu_keys() {
        let mut options = LossOptions {
            beta: 0.04,
            ..LossOptions::default()
        };
        let keys: Vec<_> = metric_slots(&options).iter().map(|s| s.0).collect();
        assert_eq!(keys[0], "kl");
        assert_eq!(keys.len(), 6);
        options.loss_type = LossType::Vanilla;
        options.beta = 0.0;
        let keys: Vec<_> = metric_slots(&options).iter().map(|s| s.0).collect();
        assert_eq!(keys, ["pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"]);
    }
}

//! Host side of `kernels/loss.cu`: the fused policy loss on device pointers.
//!
//! The caller provides the inputs, a float32 gradient buffer, a float64 workspace of
//! [`workspace_len`] elements, a float64 `out` of [`OUT_LEN`] elements (loss, then the metric
//! slots [`metric_slots`] names) and a status buffer initialised as [`super::status`] says. Nothing is copied to or from the
//! host, and nothing waits: the caller reads `out` and the status when it needs them.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::LOSS;
use super::tensor::{status_buffer, DeviceTensor};
use super::{FloatDtype, MaskDtype};
use crate::error::{Error, Result};
use crate::loss::registry::{CUDA_SLOTS, KL_CUDA_SLOT};
use crate::loss::{
    float32_handles, Aggregation, Float32Bounds, ImportanceSamplingLevel, KlEstimator, LossOptions,
    LossShapes, LossType,
};

const BLOCK: u32 = 256;
/// Tokens per `loss_tokens` block (`LOSS_TOKENS`).
const TOKENS_PER_BLOCK: usize = 1024;
/// Partial sums per block (`LOSS_PARTIALS`).
const PARTIALS: usize = 6;
/// Values per row `loss_finalize_rows` leaves for `loss_finalize` (`FIN_ROW`).
const FINALIZE_ROW: usize = 12;
/// Rows per `loss_finalize_rows` block: one warp each (`FIN_ROWS_PER_BLOCK`).
const FINALIZE_ROWS_PER_BLOCK: usize = BLOCK as usize / 32;
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

/// The loss's tensors as the caller describes them: the inputs (`old_logp`, `ref_logp`
/// optional) and the buffers it allocated (`grad`, `workspace`, `out`, `status`).
#[derive(Debug, Clone, Copy)]
pub struct LossTensors<'a> {
    pub logp: &'a DeviceTensor,
    pub old_logp: Option<&'a DeviceTensor>,
    pub ref_logp: Option<&'a DeviceTensor>,
    pub advantages: &'a DeviceTensor,
    pub mask: &'a DeviceTensor,
    pub grad: &'a DeviceTensor,
    pub workspace: &'a DeviceTensor,
    pub out: &'a DeviceTensor,
    pub status: &'a DeviceTensor,
}

impl LossTensors<'_> {
    /// Checks every tensor before anything is launched - shapes by the CPU path's own rules
    /// ([`LossShapes`]), then element types, devices, layouts and the buffers' sizes - and
    /// returns the stream (`stream_handle` on the inputs' device) and the pointers to launch on. `ref_logp` is only read when
    /// `beta != 0` (its shape is checked either way, as on the CPU).
    pub fn check(
        &self,
        options: &LossOptions,
        stream_handle: u64,
    ) -> Result<(Stream, DeviceLossInputs, DeviceLossBuffers)> {
        let dims = LossShapes {
            logp: &self.logp.shape,
            old_logp: self.old_logp.map(|t| t.shape.as_slice()),
            ref_logp: self.ref_logp.map(|t| t.shape.as_slice()),
            advantages: &self.advantages.shape,
            mask: &self.mask.shape,
        }
        .check()?;
        let dtype = FloatDtype::parse("logp", &self.logp.dtype)?;
        for (arg, tensor) in [("old_logp", self.old_logp), ("ref_logp", self.ref_logp)] {
            if let Some(t) = tensor.filter(|t| t.dtype != self.logp.dtype) {
                return Err(Error::Dtype {
                    arg,
                    expected: format!("{} like logp", self.logp.dtype).into(),
                    got: t.dtype.clone(),
                });
            }
        }
        if self.advantages.dtype != "float32" {
            return Err(Error::Dtype {
                arg: "advantages",
                expected: "float32 on CUDA".into(),
                got: self.advantages.dtype.clone(),
            });
        }
        let mask_dtype = MaskDtype::parse(&self.mask.dtype)?;
        let stream = self.logp.stream("logp", stream_handle)?;
        let device = self.logp.device.as_str();
        let dense = |arg, t: &DeviceTensor| t.expect_dense(arg, device, "logp");
        let optional = |arg, t| DeviceTensor::optional_dense(t, arg, device, "logp");
        let (batch, len) = (dims.batch, dims.len);
        let ref_logp = optional("ref_logp", self.ref_logp)?;
        let inputs = DeviceLossInputs {
            logp: dense("logp", self.logp)?,
            old_logp: optional("old_logp", self.old_logp)?,
            ref_logp: if options.beta != 0.0 { ref_logp } else { 0 },
            advantages: dense("advantages", self.advantages)?,
            advantages_per_token: dims.advantages_per_token,
            mask: dense("mask", self.mask)?,
            dtype,
            mask_dtype,
            batch,
            len,
        };
        let buffers = DeviceLossBuffers {
            grad: self
                .grad
                .expect_buffer("out", "float32", &[batch, len], device)?,
            workspace: self.workspace.expect_buffer(
                "workspace",
                "float64",
                &[workspace_len(batch, len)],
                device,
            )?,
            out: self
                .out
                .expect_buffer("results", "float64", &[OUT_LEN], device)?,
            status: status_buffer(self.status, device)?,
        };
        Ok((stream, inputs, buffers))
    }
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
    /// 1: `loss_tokens32` (per-token float32 arithmetic) runs, for options the float32 path
    /// decides alike (`crate::loss::float32_handles`); the bounds below are then its.
    float32: i32,
    lo32: f32,
    hi32: f32,
    delta32: f32,
    c32: f32,
    near_lo: f32,
    near_hi: f32,
    near_delta: f32,
    near_c: f32,
    beta32: f32,
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
        out.extend_from_slice(&self.float32.to_le_bytes());
        for v in [
            self.lo32,
            self.hi32,
            self.delta32,
            self.c32,
            self.near_lo,
            self.near_hi,
            self.near_delta,
            self.near_c,
            self.beta32,
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
    // row stats (3 per row), batch counts (2), partials, row ratio gradients (1 per row), the
    // rows' shares of the sums
    batch * 3 + 2 + batch * chunks(len) * PARTIALS + batch + batch * FINALIZE_ROW
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
    let float32 = float32_handles(options);
    let bounds = Float32Bounds::of(options);
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
        float32: i32::from(float32),
        lo32: bounds.lo,
        hi32: bounds.hi,
        delta32: bounds.delta,
        c32: bounds.c,
        near_lo: bounds.near_lo,
        near_hi: bounds.near_hi,
        near_delta: bounds.near_delta,
        near_c: bounds.near_c,
        beta32: options.beta as f32,
    }
    .bytes();

    let ws = buffers.workspace;
    let row_stats = ws;
    let batch_counts = row_stats + (batch * 3 * 8) as u64;
    let partials = batch_counts + 16;
    let row_common = partials + (batch * chunks * PARTIALS * 8) as u64;
    let row_out = row_common + (batch * 8) as u64;
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
    let tokens = |kernel: &str, write_grad: bool| {
        launch(
            stream,
            &LOSS,
            &format!("{kernel}_{suffix}"),
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
    if float32 {
        // Token level only: the tokens in float32, then the few it leaves in float64.
        tokens("loss_tokens32", true)?;
        tokens("loss_tokens32_rest", true)?;
    } else {
        tokens("loss_tokens", !sequence)?;
    }
    let per_warp = Shape {
        grid: (batch.div_ceil(FINALIZE_ROWS_PER_BLOCK) as u32, 1, 1),
        block: BLOCK,
        shared_bytes: 0,
    };
    launch(
        stream,
        &LOSS,
        "loss_finalize_rows",
        per_warp,
        &[
            Arg::Struct(params.clone()),
            Arg::Ptr(inputs.advantages),
            Arg::Ptr(row_stats),
            Arg::Ptr(batch_counts),
            Arg::Ptr(partials),
            Arg::Ptr(row_common),
            Arg::Ptr(row_out),
        ],
    )?;
    launch(
        stream,
        &LOSS,
        "loss_finalize",
        single,
        &[
            Arg::Struct(params.clone()),
            Arg::Ptr(batch_counts),
            Arg::Ptr(row_out),
            Arg::Ptr(buffers.out),
            Arg::Ptr(buffers.status),
        ],
    )?;
    if sequence {
        tokens("loss_tokens", true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_the_kernel_layout() {
        // 2 i64 + 10 i32 + 14 f64 + 1 i32 + 9 f32, no padding (LossParams in kernels/loss.cu).
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
            float32: 1,
            lo32: 0.5,
            hi32: 0.0,
            delta32: 0.0,
            c32: 0.0,
            near_lo: 0.0,
            near_hi: 0.0,
            near_delta: 0.0,
            near_c: 0.0,
            beta32: 0.25,
        };
        let bytes = p.bytes();
        assert_eq!(bytes.len(), std::mem::size_of::<LossParams>());
        assert_eq!(bytes.len(), 16 + 40 + 14 * 8 + 4 + 9 * 4);
        assert_eq!(&bytes[56..64], &1.5f64.to_le_bytes());
        assert_eq!(&bytes[160..168], &9.0f64.to_le_bytes());
        assert_eq!(&bytes[168..172], &1i32.to_le_bytes());
        assert_eq!(&bytes[172..176], &0.5f32.to_le_bytes());
        assert_eq!(&bytes[bytes.len() - 4..], &0.25f32.to_le_bytes());
    }

    fn described(dtype: &str, shape: &[usize], device: &str, ptr: u64) -> DeviceTensor {
        let mut strides = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1] as i64;
        }
        DeviceTensor {
            ptr,
            dtype: dtype.into(),
            shape: shape.to_vec(),
            strides,
            device: device.into(),
        }
    }

    /// A well-formed call on `(3, 8)` float32 inputs, as `sgpo_rs._cuda` describes it.
    struct Call {
        logp: DeviceTensor,
        old: DeviceTensor,
        reference: DeviceTensor,
        adv: DeviceTensor,
        mask: DeviceTensor,
        grad: DeviceTensor,
        workspace: DeviceTensor,
        out: DeviceTensor,
        status: DeviceTensor,
    }

    impl Call {
        fn new() -> Call {
            let d = "cuda:1";
            Call {
                logp: described("float32", &[3, 8], d, 0x1000),
                old: described("float32", &[3, 8], d, 0x2000),
                reference: described("float32", &[3, 8], d, 0x3000),
                adv: described("float32", &[3], d, 0x4000),
                mask: described("uint8", &[3, 8], d, 0x5000),
                grad: described("float32", &[3, 8], d, 0x6000),
                workspace: described("float64", &[workspace_len(3, 8)], d, 0x7000),
                out: described("float64", &[OUT_LEN], d, 0x8000),
                status: described("int64", &[2], d, 0x9000),
            }
        }

        fn check(&self, beta: f64) -> Result<(Stream, DeviceLossInputs, DeviceLossBuffers)> {
            let options = LossOptions {
                beta,
                ..LossOptions::default()
            };
            LossTensors {
                logp: &self.logp,
                old_logp: Some(&self.old),
                ref_logp: Some(&self.reference),
                advantages: &self.adv,
                mask: &self.mask,
                grad: &self.grad,
                workspace: &self.workspace,
                out: &self.out,
                status: &self.status,
            }
            .check(&options, 7)
        }
    }

    #[test]
    fn a_well_described_call_gives_its_pointers() {
        let (stream, inputs, buffers) = Call::new().check(0.04).unwrap();
        assert_eq!((stream.device, stream.handle), (1, 7));
        assert_eq!((inputs.batch, inputs.len), (3, 8));
        assert_eq!(
            (inputs.logp, inputs.old_logp, inputs.ref_logp),
            (0x1000, 0x2000, 0x3000)
        );
        assert!(!inputs.advantages_per_token);
        assert_eq!(inputs.mask_dtype, MaskDtype::U8);
        assert_eq!((buffers.grad, buffers.status), (0x6000, 0x9000));
        // Without a KL term the reference is not read (its shape is still checked).
        assert_eq!(Call::new().check(0.0).unwrap().1.ref_logp, 0);
    }

    #[test]
    fn every_slip_is_refused_before_a_launch_with_the_argument_named() {
        type Slip = Box<dyn Fn(&mut Call)>;
        let cases: Vec<(&str, Slip)> = vec![
            ("mask: expected shape (3, 8) like logp, got (3, 7)", Box::new(|c| c.mask = described("uint8", &[3, 7], "cuda:1", 1))),
            ("advantages: expected shape (3,) or (3, 8), got (8,)", Box::new(|c| c.adv = described("float32", &[8], "cuda:1", 1))),
            ("logp: expected dtype float32, bfloat16 or float16 on CUDA, got float64", Box::new(|c| c.logp.dtype = "float64".into())),
            ("old_logp: expected dtype float32 like logp, got bfloat16", Box::new(|c| c.old.dtype = "bfloat16".into())),
            ("mask: expected a tensor on cuda:1 like logp, got one on cpu", Box::new(|c| c.mask.device = "cpu".into())),
            ("logp: expected a tensor on a CUDA device, got one on cpu", Box::new(|c| { for t in [&mut c.logp, &mut c.old, &mut c.reference, &mut c.adv, &mut c.mask] { t.device = "cpu".into(); } })),
            ("old_logp: expected a contiguous tensor", Box::new(|c| c.old.strides = vec![1, 3])),
            ("out: expected a contiguous float32 tensor of shape (3, 8) on cuda:1, got a contiguous float32 tensor of shape (8, 3)", Box::new(|c| c.grad = described("float32", &[8, 3], "cuda:1", 1))),
            ("workspace: expected a contiguous float64 tensor", Box::new(|c| c.workspace = described("float64", &[4], "cuda:1", 1))),
            ("results: expected a contiguous float64 tensor", Box::new(|c| c.out.dtype = "float32".into())),
            ("status: expected a contiguous int64 tensor of shape (2,)", Box::new(|c| c.status.device = "cuda:0".into())),
        ];
        for (message, slip) in cases {
            let mut call = Call::new();
            slip(&mut call);
            let err = call.check(0.04).unwrap_err().to_string();
            assert!(
                err.starts_with(message),
                "{err:?} does not start with {message:?}"
            );
        }
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

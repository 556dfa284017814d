//! Host side of `kernels/logprob.cu`: the fused selective log-softmax on device pointers.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::LOGPROB;
use super::FloatDtype;
use crate::error::{Error, Result};

/// Threads per block (`LOGPROB_BLOCK` in the kernel).
const BLOCK: u32 = 256;

/// `(N, V)` logits on the device: element type, row count, vocabulary, and the distance between
/// rows in elements (the last dimension must be contiguous).
#[derive(Debug, Clone, Copy)]
pub struct Logits {
    pub ptr: u64,
    pub dtype: FloatDtype,
    pub rows: usize,
    pub vocab: usize,
    pub row_stride: usize,
}

impl Logits {
    fn check(&self, temperature: f64) -> Result<()> {
        if self.vocab == 0 {
            return Err(Error::value(
                "logits",
                "expected a vocabulary of at least 1 (the last dimension is 0)",
            ));
        }
        if self.row_stride < self.vocab && self.rows > 1 {
            return Err(Error::value(
                "logits",
                format!(
                    "expected rows at least {} elements apart, got a stride of {}",
                    self.vocab, self.row_stride
                ),
            ));
        }
        if self.rows > i32::MAX as usize {
            return Err(Error::value(
                "logits",
                format!("expected at most {} rows, got {}", i32::MAX, self.rows),
            ));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::value(
                "temperature",
                format!("expected a finite value > 0, got {temperature}"),
            ));
        }
        Ok(())
    }

    /// Whether every row starts on a 16-byte boundary, so the kernel may read 16-byte packs.
    fn packed(&self) -> i32 {
        let size = self.dtype.size() as u64;
        i32::from(self.ptr % 16 == 0 && (self.row_stride as u64 * size) % 16 == 0)
    }

    fn shape(&self) -> Shape {
        Shape {
            grid: (self.rows as u32, 1, 1),
            block: BLOCK,
            shared_bytes: 0,
        }
    }
}

/// Forward: `logp[i] = log_softmax(logits[i] / T)[targets[i]]` (float32 `(N,)`) and, when
/// `entropy` is given, the row entropies. `targets` are int64; `status` a zeroed status buffer.
pub fn selective_logprobs(
    stream: &Stream,
    logits: &Logits,
    targets: u64,
    temperature: f64,
    logp: u64,
    entropy: Option<u64>,
    status: u64,
) -> Result<()> {
    logits.check(temperature)?;
    if logits.rows == 0 {
        return Ok(());
    }
    let kernel = format!("logprob_forward_{}", logits.dtype.suffix());
    launch(
        stream,
        &LOGPROB,
        &kernel,
        logits.shape(),
        &[
            Arg::Ptr(logits.ptr),
            Arg::I64(logits.rows as i64),
            Arg::I64(logits.vocab as i64),
            Arg::I64(logits.row_stride as i64),
            Arg::I32(logits.packed()),
            Arg::Ptr(targets),
            Arg::F32(temperature as f32),
            Arg::Ptr(logp),
            Arg::Ptr(entropy.unwrap_or(0)),
            Arg::Ptr(status),
        ],
    )
}

/// Backward: writes `dlogits` (the logits' dtype, rows `out_stride` elements apart) from the
/// gradients of the log-probabilities and, optionally, of the entropies (float32 `(N,)`).
/// `dlogits` may be the logits buffer itself (in place).
#[allow(clippy::too_many_arguments)]
pub fn selective_logprobs_backward(
    stream: &Stream,
    logits: &Logits,
    targets: u64,
    temperature: f64,
    grad_logp: u64,
    grad_entropy: Option<u64>,
    dlogits: u64,
    out_stride: usize,
    status: u64,
) -> Result<()> {
    logits.check(temperature)?;
    if logits.rows == 0 {
        return Ok(());
    }
    let in_place = dlogits == logits.ptr;
    if in_place && out_stride != logits.row_stride {
        return Err(Error::value(
            "dlogits",
            "an in-place backward needs the logits' own row stride",
        ));
    }
    let kernel = format!("logprob_backward_{}", logits.dtype.suffix());
    launch(
        stream,
        &LOGPROB,
        &kernel,
        logits.shape(),
        &[
            Arg::Ptr(logits.ptr),
            Arg::I64(logits.rows as i64),
            Arg::I64(logits.vocab as i64),
            Arg::I64(logits.row_stride as i64),
            Arg::I32(logits.packed()),
            Arg::Ptr(targets),
            Arg::F32(temperature as f32),
            Arg::Ptr(grad_logp),
            Arg::Ptr(grad_entropy.unwrap_or(0)),
            Arg::Ptr(dlogits),
            Arg::I64(out_stride as i64),
            Arg::Ptr(status),
        ],
    )
}

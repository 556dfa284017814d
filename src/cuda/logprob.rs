//! Host side of `kernels/logprob.cu`: the fused selective log-softmax on device pointers.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::LOGPROB;
use super::FloatDtype;
use crate::error::{Error, Result};

/// Threads per block (`LOGPROB_BLOCK` in the kernel).
const BLOCK: u32 = 256;

/// `(N, V)` logits on the device: element type, row count, vocabulary, and where each row starts
/// (in elements; the last dimension must be contiguous). Rows come in groups of `group_rows`,
/// `group_stride` apart, `row_stride` apart within a group: a `(B, T, V)` view with any batch
/// and row strides (TRL's `logits[:, :-1]`) is read in place. A plain `(N, V)` tensor is one
/// group of `N` rows.
#[derive(Debug, Clone, Copy)]
pub struct Logits {
    pub ptr: u64,
    pub dtype: FloatDtype,
    pub rows: usize,
    pub vocab: usize,
    pub row_stride: usize,
    pub group_rows: usize,
    pub group_stride: usize,
}

impl Logits {
    fn check(&self, temperature: f64) -> Result<()> {
        if self.vocab == 0 {
            return Err(Error::value(
                "logits",
                "expected a vocabulary of at least 1 (the last dimension is 0)",
            ));
        }
        if self.group_rows == 0 {
            return Err(Error::value(
                "logits",
                "expected groups of at least one row",
            ));
        }
        if (self.row_stride < self.vocab && self.group_rows > 1)
            || (self.group_stride < self.vocab && self.rows > self.group_rows)
        {
            return Err(Error::value(
                "logits",
                format!(
                    "expected rows at least {} elements apart, got strides {} and {}",
                    self.vocab, self.group_stride, self.row_stride
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
        // The kernels multiply by 1/T in float32.
        if !(temperature as f32).is_normal() || !((1.0 / temperature) as f32).is_normal() {
            return Err(Error::value(
                "temperature",
                format!(
                    "expected a value that float32 holds with its reciprocal (about 1.2e-38 to \
                     8.5e37) on CUDA, got {temperature}"
                ),
            ));
        }
        Ok(())
    }

    /// Whether every row starts on a 16-byte boundary, so the kernel may read 16-byte packs.
    fn packed(&self) -> i32 {
        let size = self.dtype.size() as u64;
        i32::from(
            self.ptr.is_multiple_of(16)
                && (self.row_stride as u64 * size).is_multiple_of(16)
                && (self.group_stride as u64 * size).is_multiple_of(16),
        )
    }

    /// Launches `{kernel}_{dtype}` with the arguments every logprob kernel starts with (layout,
    /// packing, targets, 1 / temperature) followed by `rest`.
    fn launch(
        &self,
        stream: &Stream,
        kernel: &str,
        targets: u64,
        temperature: f64,
        rest: &[Arg],
    ) -> Result<()> {
        let mut args = vec![
            Arg::Ptr(self.ptr),
            Arg::I64(self.rows as i64),
            Arg::I64(self.vocab as i64),
            Arg::I64(self.row_stride as i64),
            Arg::I64(self.group_rows as i64),
            Arg::I64(self.group_stride as i64),
            Arg::I32(self.packed()),
            Arg::Ptr(targets),
            // The reciprocal once, in float64, as the CPU path takes it.
            Arg::F32((1.0 / temperature) as f32),
        ];
        args.extend_from_slice(rest);
        let name = format!("{kernel}_{}", self.dtype.suffix());
        launch(stream, &LOGPROB, &name, self.shape(), &args)
    }

    fn shape(&self) -> Shape {
        Shape {
            grid: (self.rows as u32, 1, 1),
            block: BLOCK,
            shared_bytes: 0,
        }
    }
}

/// Float32 elements of the row statistics the forward can save for the backward: `(m, ln s, H)`
/// per row.
pub const STATS_PER_ROW: usize = 3;

/// Forward: `logp[i] = log_softmax(logits[i] / T)[targets[i]]` (float32 `(N,)`) and, when
/// `entropy` is given, the row entropies; when `stats` is given (float32, [`STATS_PER_ROW`] per
/// row), each row's statistics for [`selective_logprobs_backward`]. `targets` are int64; `status`
/// a status buffer initialised as [`super::status`] says.
#[allow(clippy::too_many_arguments)]
pub fn selective_logprobs(
    stream: &Stream,
    logits: &Logits,
    targets: u64,
    temperature: f64,
    logp: u64,
    entropy: Option<u64>,
    stats: Option<u64>,
    status: u64,
) -> Result<()> {
    logits.check(temperature)?;
    if logits.rows == 0 {
        return Ok(());
    }
    logits.launch(
        stream,
        "logprob_forward",
        targets,
        temperature,
        &[
            Arg::Ptr(logp),
            Arg::Ptr(entropy.unwrap_or(0)),
            Arg::Ptr(stats.unwrap_or(0)),
            Arg::Ptr(status),
        ],
    )
}

/// Backward: writes `dlogits` (the logits' dtype, rows `out_stride` elements apart) from the
/// gradients of the log-probabilities and, optionally, of the entropies (float32 `(N,)`).
/// `dlogits` is dense (rows `out_stride` apart), or the logits buffer itself (in place, same
/// layout as the logits). `stats`, the forward's saved row statistics of these logits at this
/// temperature, spares the kernel its own pass over the logits.
#[allow(clippy::too_many_arguments)]
pub fn selective_logprobs_backward(
    stream: &Stream,
    logits: &Logits,
    targets: u64,
    temperature: f64,
    stats: Option<u64>,
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
    if dlogits != logits.ptr && out_stride < logits.vocab && logits.rows > 1 {
        return Err(Error::value(
            "dlogits",
            format!(
                "expected rows at least {} elements apart, got {out_stride}",
                logits.vocab
            ),
        ));
    }
    // 16-byte stores where every output row starts on a 16-byte boundary.
    let size = logits.dtype.size() as u64;
    let out_packed = if dlogits == logits.ptr {
        logits.packed()
    } else {
        i32::from(dlogits.is_multiple_of(16) && (out_stride as u64 * size).is_multiple_of(16))
    };
    logits.launch(
        stream,
        "logprob_backward",
        targets,
        temperature,
        &[
            Arg::Ptr(stats.unwrap_or(0)),
            Arg::Ptr(grad_logp),
            Arg::Ptr(grad_entropy.unwrap_or(0)),
            Arg::Ptr(dlogits),
            Arg::I64(out_stride as i64),
            Arg::I32(out_packed),
            Arg::Ptr(status),
        ],
    )
}

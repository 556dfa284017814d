//! Host side of `kernels/logprob.cu`: the fused selective log-softmax on device pointers.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::LOGPROB;
use super::tensor::{status_buffer, DeviceTensor};
use super::FloatDtype;
use crate::error::{Error, Result};
use crate::logprob::{buffers_overlap, RowLayout};

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
    /// The layout of a described `(N, V)` or `(B, T, V)` logits tensor whose last dimension is
    /// contiguous; the rows may be any (non-negative) number of elements apart.
    /// The rows' layout (the CPU path's [`RowLayout`], from which [`Logits::from_tensor`] took it).
    pub fn layout(&self) -> RowLayout {
        RowLayout {
            rows: self.rows,
            vocab: self.vocab,
            row_stride: self.row_stride,
            group_rows: self.group_rows,
            group_stride: self.group_stride,
        }
    }

    pub fn from_tensor(t: &DeviceTensor) -> Result<Logits> {
        let dtype = FloatDtype::parse("logits", &t.dtype)?;
        // The CPU path's own reading of the shape and strides (`crate::logprob::RowLayout`).
        let layout = RowLayout::from_strides("logits", &t.shape, &t.strides)?;
        Ok(Logits {
            ptr: t.ptr,
            dtype,
            rows: layout.rows,
            vocab: layout.vocab,
            row_stride: layout.row_stride,
            group_rows: layout.group_rows,
            group_stride: layout.group_stride,
        })
    }

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
        i32::from(self.ptr.is_multiple_of(16) && self.packed_strides())
    }

    /// Whether rows and groups are whole multiples of 16 bytes apart.
    fn packed_strides(&self) -> bool {
        let size = self.dtype.size() as u64;
        (self.row_stride as u64 * size).is_multiple_of(16)
            && (self.group_stride as u64 * size).is_multiple_of(16)
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

/// What the forward and the backward check first: the logits' layout, the targets and the
/// status word.
struct Common {
    logits: Logits,
    targets: u64,
    status: u64,
}

fn check_common(
    logits: &DeviceTensor,
    targets: &DeviceTensor,
    status: &DeviceTensor,
) -> Result<Common> {
    let layout = Logits::from_tensor(logits)?;
    let device = logits.device.as_str();
    Ok(Common {
        targets: targets.expect_rows("targets", "int64", layout.rows, device, "logits")?,
        status: status_buffer(status, device)?,
        logits: layout,
    })
}

/// The forward's tensors as the caller describes them (`entropy`, `stats`: outputs wanted or
/// not).
#[derive(Debug, Clone, Copy)]
pub struct ForwardTensors<'a> {
    pub logits: &'a DeviceTensor,
    pub targets: &'a DeviceTensor,
    pub logp: &'a DeviceTensor,
    pub entropy: Option<&'a DeviceTensor>,
    pub stats: Option<&'a DeviceTensor>,
    pub status: &'a DeviceTensor,
}

/// Checks every tensor of the forward and launches it on `stream` (whose device must be the
/// logits').
pub fn selective_logprobs(
    stream_handle: u64,
    t: &ForwardTensors<'_>,
    temperature: f64,
) -> Result<()> {
    let c = check_common(t.logits, t.targets, t.status)?;
    let (device, rows) = (t.logits.device.as_str(), c.logits.rows);
    let logp = t.logp.expect_buffer("logp", "float32", &[rows], device)?;
    let buffer = |arg, b: Option<&DeviceTensor>, shape: &[usize]| {
        b.map(|b| b.expect_buffer(arg, "float32", shape, device))
            .transpose()
    };
    let entropy = buffer("entropy", t.entropy, &[rows])?;
    let stats = buffer("stats", t.stats, &[rows, STATS_PER_ROW])?;
    launch_forward(
        &t.logits.stream("logits", stream_handle)?,
        &c.logits,
        c.targets,
        temperature,
        logp,
        entropy,
        stats,
        c.status,
    )
}

/// The backward's tensors as the caller describes them. `dlogits` is a dense `(N, V)` tensor
/// of the logits' dtype, the logits tensor itself (in place), or a tensor of the logits' shape
/// in any layout whose rows share no element, apart from the logits (the matching view of a
/// full-size gradient).
#[derive(Debug, Clone, Copy)]
pub struct BackwardTensors<'a> {
    pub logits: &'a DeviceTensor,
    pub targets: &'a DeviceTensor,
    pub grad_logp: &'a DeviceTensor,
    pub grad_entropy: Option<&'a DeviceTensor>,
    pub stats: Option<&'a DeviceTensor>,
    pub dlogits: &'a DeviceTensor,
    pub status: &'a DeviceTensor,
}

/// Checks every tensor of the backward and launches it on `stream`.
pub fn selective_logprobs_backward(
    stream_handle: u64,
    t: &BackwardTensors<'_>,
    temperature: f64,
) -> Result<()> {
    let c = check_common(t.logits, t.targets, t.status)?;
    let (device, rows, vocab) = (t.logits.device.as_str(), c.logits.rows, c.logits.vocab);
    let per_row = |arg, g: &DeviceTensor| g.expect_rows(arg, "float32", rows, device, "logits");
    let grad_logp = per_row("grad_logp", t.grad_logp)?;
    let grad_entropy = t
        .grad_entropy
        .map(|g| per_row("grad_entropy", g))
        .transpose()?;
    let stats = t
        .stats
        .map(|s| s.expect_buffer("stats", "float32", &[rows, STATS_PER_ROW], device))
        .transpose()?;
    let logits_layout = c.logits.layout();
    let out = if t.dlogits.ptr == t.logits.ptr && rows > 0 {
        if t.dlogits != t.logits {
            return Err(Error::value(
                "dlogits",
                "an in-place backward writes into the logits tensor itself",
            ));
        }
        Out {
            ptr: t.dlogits.ptr,
            layout: logits_layout,
        }
    } else if rows > 0 && t.dlogits.shape == t.logits.shape {
        // A gradient of the logits' shape in a layout of its own (the matching view of a
        // full-size gradient, whose strides need not be the logits'): written through its own
        // row addressing.
        t.dlogits.expect_device("dlogits", device, "logits")?;
        if t.dlogits.dtype != t.logits.dtype {
            return Err(Error::Dtype {
                arg: "dlogits",
                expected: format!("{} like logits", t.logits.dtype).into(),
                got: t.dlogits.dtype.clone(),
            });
        }
        if overlaps(t.dlogits, t.logits) {
            return Err(Error::value(
                "dlogits",
                "expected memory apart from the logits (or the logits tensor itself: in place)",
            ));
        }
        Out {
            ptr: t.dlogits.ptr,
            layout: RowLayout::from_strides("dlogits", &t.dlogits.shape, &t.dlogits.strides)?,
        }
    } else {
        Out {
            ptr: t
                .dlogits
                .expect_buffer("dlogits", &t.logits.dtype, &[rows, vocab], device)?,
            layout: RowLayout::dense(rows, vocab),
        }
    };
    // Rows that share elements would be written by several blocks at once.
    if !out.layout.rows_disjoint() {
        return Err(Error::value(
            "dlogits",
            "expected rows that share no element (an expanded tensor cannot take a gradient)",
        ));
    }
    launch_backward(
        &t.logits.stream("logits", stream_handle)?,
        &c.logits,
        c.targets,
        temperature,
        stats,
        grad_logp,
        grad_entropy,
        out,
        c.status,
    )
}

/// Where the backward writes `dlogits`: a dense `(N, V)` buffer, the logits themselves (in
/// place, their own layout), or a tensor of their shape in any layout with disjoint rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Out {
    ptr: u64,
    layout: RowLayout,
}

/// Whether the elements two tensors can address share any byte (their spans from the lowest to
/// the highest addressed byte meet; strides are non-negative here).
fn overlaps(a: &DeviceTensor, b: &DeviceTensor) -> bool {
    let bytes = |t: &DeviceTensor| {
        let size = FloatDtype::parse("dlogits", &t.dtype).map_or(1, FloatDtype::size);
        let layout = RowLayout::from_strides("dlogits", &t.shape, &t.strides).ok()?;
        Some((t.ptr as usize, layout, size))
    };
    match (bytes(a), bytes(b)) {
        (Some(a), Some(b)) => buffers_overlap(a, b),
        // A layout the kernels cannot address is refused later anyway; count it as meeting.
        _ => true,
    }
}

/// Float32 elements of the row statistics the forward can save for the backward: `(m, ln s, H)`
/// per row.
pub const STATS_PER_ROW: usize = 3;

/// Forward: `logp[i] = log_softmax(logits[i] / T)[targets[i]]` (float32 `(N,)`) and, when
/// `entropy` is given, the row entropies; when `stats` is given (float32, [`STATS_PER_ROW`] per
/// row), each row's statistics for [`launch_backward`]. `targets` are int64; `status`
/// a status buffer initialised as [`super::status`] says.
#[allow(clippy::too_many_arguments)]
fn launch_forward(
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

/// Backward: writes `dlogits` (the logits' dtype) from the gradients of the log-probabilities
/// and, optionally, of the entropies (float32 `(N,)`), into a dense buffer or one laid out like
/// the logits ([`Out`]). `stats`, the forward's saved row statistics of these logits at this
/// temperature, spares the kernel its own pass over the logits.
#[allow(clippy::too_many_arguments)]
fn launch_backward(
    stream: &Stream,
    logits: &Logits,
    targets: u64,
    temperature: f64,
    stats: Option<u64>,
    grad_logp: u64,
    grad_entropy: Option<u64>,
    out: Out,
    status: u64,
) -> Result<()> {
    logits.check(temperature)?;
    if logits.rows == 0 {
        return Ok(());
    }
    // 16-byte stores where every output row starts on a 16-byte boundary.
    let size = logits.dtype.size() as u64;
    let layout = out.layout;
    let out_packed = out.ptr.is_multiple_of(16)
        && (layout.row_stride as u64 * size).is_multiple_of(16)
        && (layout.group_stride as u64 * size).is_multiple_of(16);
    logits.launch(
        stream,
        "logprob_backward",
        targets,
        temperature,
        &[
            Arg::Ptr(stats.unwrap_or(0)),
            Arg::Ptr(grad_logp),
            Arg::Ptr(grad_entropy.unwrap_or(0)),
            Arg::Ptr(out.ptr),
            Arg::I64(layout.row_stride as i64),
            Arg::I64(layout.group_rows as i64),
            Arg::I64(layout.group_stride as i64),
            Arg::I32(i32::from(out_packed)),
            Arg::Ptr(status),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(shape: &[usize], strides: &[i64]) -> DeviceTensor {
        DeviceTensor {
            ptr: 4096,
            dtype: "bfloat16".into(),
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            device: "cuda:0".into(),
        }
    }

    #[test]
    fn trl_sliced_logits_are_addressed_in_place() {
        // logits[:, :-1] of a (3, 11, 4099) tensor: 30 rows in groups of 10, 11 rows apart.
        let view = Logits::from_tensor(&logits(&[3, 10, 4099], &[11 * 4099, 4099, 1])).unwrap();
        assert_eq!((view.rows, view.vocab, view.row_stride), (30, 4099, 4099));
        assert_eq!((view.group_rows, view.group_stride), (10, 11 * 4099));
        let plain = Logits::from_tensor(&logits(&[5, 7], &[7, 1])).unwrap();
        assert_eq!((plain.rows, plain.row_stride, plain.group_rows), (5, 7, 5));
        // One row: its stride is meaningless (torch reports anything), the vocabulary is used.
        let one = Logits::from_tensor(&logits(&[1, 7], &[99, 1])).unwrap();
        assert_eq!(one.row_stride, 7);
    }

    #[test]
    fn a_gradient_whose_rows_share_elements_is_refused() {
        let view = logits(&[2, 3, 7], &[21, 7, 1]);
        let described = |dtype: &str, shape: &[usize], ptr: u64| DeviceTensor {
            ptr,
            dtype: dtype.into(),
            shape: shape.to_vec(),
            strides: vec![1; shape.len()],
            device: "cuda:0".into(),
        };
        let targets = described("int64", &[6], 1 << 20);
        let grad = described("float32", &[6], 1 << 21);
        let status = DeviceTensor {
            strides: vec![1],
            ..described("int64", &[2], 1 << 22)
        };
        // An expanded gradient: both sequences on the same memory.
        let expanded = DeviceTensor {
            ptr: 1 << 23,
            strides: vec![0, 7, 1],
            ..view.clone()
        };
        let err = selective_logprobs_backward(
            0,
            &BackwardTensors {
                logits: &view,
                targets: &targets,
                grad_logp: &grad,
                grad_entropy: None,
                stats: None,
                dlogits: &expanded,
                status: &status,
            },
            1.0,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("dlogits: expected rows that share no element"),
            "{err}"
        );
    }

    #[test]
    fn a_gradient_laid_out_like_the_logits_must_not_overlap_them() {
        // logits[:, :-1] of a (3, 11, 4099) bf16 tensor, and the same view of another tensor.
        let view = logits(&[3, 10, 4099], &[11 * 4099, 4099, 1]);
        let span = 3 * 11 * 4099 * 2;
        let apart = DeviceTensor {
            ptr: view.ptr + span as u64,
            ..view.clone()
        };
        assert!(!overlaps(&apart, &view));
        // One element on: the spans meet.
        let shifted = DeviceTensor {
            ptr: view.ptr + 2,
            ..view.clone()
        };
        assert!(overlaps(&shifted, &view));
        assert!(overlaps(&view, &view));
        // The view's last byte is the last one of row (2, 9), not of the full tensor.
        let last_row_end = ((2 * 11 + 9) * 4099 + 4099) * 2;
        let after = DeviceTensor {
            ptr: view.ptr + last_row_end as u64,
            ..view.clone()
        };
        assert!(!overlaps(&after, &view));
    }

    #[test]
    fn logits_the_kernels_cannot_address_are_refused() {
        let err = Logits::from_tensor(&logits(&[5, 7], &[1, 5])).unwrap_err();
        assert!(err.to_string().contains("contiguous last"), "{err}");
        let err = Logits::from_tensor(&logits(&[2, 2, 2, 7], &[28, 14, 7, 1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "logits: expected shape (N, V) or (B, T, V), got (2, 2, 2, 7)"
        );
        let mut wrong = logits(&[5, 7], &[7, 1]);
        wrong.dtype = "float64".into();
        assert!(Logits::from_tensor(&wrong).is_err());
    }

    #[test]
    fn per_row_inputs_are_checked_by_type_length_and_device() {
        let mut targets = logits(&[5], &[1]);
        targets.dtype = "int64".into();
        let rows =
            |t: &DeviceTensor, arg, dtype, n| t.expect_rows(arg, dtype, n, "cuda:0", "logits");
        assert!(rows(&targets, "targets", "int64", 5).is_ok());
        let err = rows(&targets, "targets", "int64", 6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "targets: expected shape (6,) (one value per row of logits), got (5,)"
        );
        let err = rows(&targets, "grad_logp", "float32", 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "grad_logp: expected dtype float32, got int64"
        );
        targets.device = "cpu".into();
        let err = rows(&targets, "targets", "int64", 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "targets: expected a tensor on cuda:0 like logits, got one on cpu"
        );
    }
}

//! Binding of [`crate::logprob`]: the fused selective log-softmax and its backward.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;

use super::arrays::{FloatView, View};
use super::errors::{to_py, value_error};
use crate::elem::FloatElem;
use crate::elem::GradElem;
use crate::logprob::{
    selective_logprobs, selective_logprobs_backward, ForwardOut, LogprobOptions, Upstream,
    STATS_PER_ROW,
};
use half::{bf16, f16};

/// `(rows, vocab)` of a 2-D logits view, and the checked 1-D `targets`.
fn logits_shape(logits: &FloatView<'_>, targets: &View<'_, i64>) -> PyResult<(usize, usize)> {
    let (rows, vocab) = match logits.shape() {
        [n, v] => (*n, *v),
        other => {
            return Err(value_error(
                "logits",
                format!("expected a 2-D array (N, V), got shape {other:?}"),
            ))
        }
    };
    if targets.shape() != [rows] {
        return Err(value_error(
            "targets",
            format!(
                "expected shape ({rows},) (one token id per row of logits), got {:?}",
                targets.shape()
            ),
        ));
    }
    Ok((rows, vocab))
}

/// Runs `$body` with `$x` bound to the logits' typed slice.
macro_rules! with_logits {
    ($view:expr, |$x:ident| $body:expr) => {
        match $view {
            FloatView::F32(_) => {
                let $x = $view.f32().unwrap_or(&[]);
                $body
            }
            FloatView::F64(_) => {
                let $x = $view.f64().unwrap_or(&[]);
                $body
            }
            FloatView::Bf16(_) => {
                let $x = $view.bf16().unwrap_or(&[]);
                $body
            }
            FloatView::F16(_) => {
                let $x = $view.f16().unwrap_or(&[]);
                $body
            }
        }
    };
}

/// Returns `(logp, entropy | None)`, float32 `(N,)`; with `stats=True`
/// `(logp, entropy | None, stats)`, `stats` float64 `(N, 4)` for the backward's `stats`.
#[pyfunction]
#[pyo3(signature = (logits, targets, *, half_dtype, temperature, entropy, stats=false))]
pub(crate) fn selective_logprobs_core<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    targets: &Bound<'py, PyAny>,
    half_dtype: &str,
    temperature: f64,
    entropy: bool,
    stats: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let logits = FloatView::new("logits", logits, half_dtype)?;
    let targets = View::<i64>::new("targets", targets)?;
    let (rows, vocab) = logits_shape(&logits, &targets)?;
    let logp = PyArray1::<f32>::zeros(py, rows, false);
    let ent = entropy.then(|| PyArray1::<f32>::zeros(py, rows, false));
    let st = stats.then(|| PyArray2::<f64>::zeros(py, [rows, STATS_PER_ROW], false));
    {
        let mut logp_guard = logp.readwrite();
        let logp_slice = logp_guard
            .as_slice_mut()
            .map_err(|_| value_error("logp", "internal: output is not contiguous"))?;
        let mut ent_guard = ent.as_ref().map(|e| e.readwrite());
        let ent_slice = match ent_guard.as_mut() {
            Some(g) => Some(
                g.as_slice_mut()
                    .map_err(|_| value_error("entropy", "internal: output is not contiguous"))?,
            ),
            None => None,
        };
        let mut st_guard = st.as_ref().map(|a| a.readwrite());
        let st_slice = match st_guard.as_mut() {
            Some(g) => Some(
                g.as_slice_mut()
                    .map_err(|_| value_error("stats", "internal: output is not contiguous"))?,
            ),
            None => None,
        };
        let t = targets.slice();
        with_logits!(&logits, |x| run_forward(
            py,
            x,
            vocab,
            t,
            temperature,
            logp_slice,
            ent_slice,
            st_slice
        ))
        .map_err(to_py)?;
    }
    match st {
        Some(st) => (logp, ent, st).into_pyobject(py).map(|t| t.into_any()),
        None => (logp, ent).into_pyobject(py).map(|t| t.into_any()),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_forward<T: FloatElem>(
    py: Python<'_>,
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp: &mut [f32],
    entropy: Option<&mut [f32]>,
    stats: Option<&mut [f64]>,
) -> crate::Result<()> {
    let out = ForwardOut {
        logp,
        entropy,
        stats,
    };
    py.detach(|| {
        selective_logprobs(
            logits,
            vocab,
            targets,
            &LogprobOptions::new(temperature),
            out,
        )
    })
}

/// Returns `dlogits` `(N, V)` in `out_dtype`: "float32" (default), "float64", or "bfloat16" /
/// "float16" as int16 bits (rounded to nearest even; view them as the half type).
#[pyfunction]
#[pyo3(signature = (logits, targets, grad_logp, grad_entropy, *, half_dtype, temperature, out_dtype="float32", stats=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn selective_logprobs_backward_core<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    targets: &Bound<'py, PyAny>,
    grad_logp: &Bound<'py, PyAny>,
    grad_entropy: Option<&Bound<'py, PyAny>>,
    half_dtype: &str,
    temperature: f64,
    out_dtype: &str,
    stats: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let logits = FloatView::new("logits", logits, half_dtype)?;
    let targets = View::<i64>::new("targets", targets)?;
    let (rows, vocab) = logits_shape(&logits, &targets)?;
    let grad_logp = View::<f32>::new("grad_logp", grad_logp)?;
    let grad_entropy = super::arrays::optional_view::<f32>("grad_entropy", grad_entropy)?;
    for (arg, view) in [
        ("grad_logp", Some(&grad_logp)),
        ("grad_entropy", grad_entropy.as_ref()),
    ] {
        if let Some(view) = view {
            if view.shape() != [rows] {
                return Err(value_error(
                    arg,
                    format!("expected shape ({rows},), got {:?}", view.shape()),
                ));
            }
        }
    }
    let stats = super::arrays::optional_view::<f64>("stats", stats)?;
    if let Some(view) = &stats {
        if view.shape() != [rows, STATS_PER_ROW] {
            return Err(value_error(
                "stats",
                format!(
                    "expected shape ({rows}, {STATS_PER_ROW}) (from the forward), got {:?}",
                    view.shape()
                ),
            ));
        }
    }
    let t = targets.slice();
    let g = grad_logp.slice();
    let gh = grad_entropy.as_ref().map(|v| v.slice());
    let args = BackwardArgs {
        vocab,
        targets: t,
        temperature,
        grad_logp: g,
        grad_entropy: gh,
        stats: stats.as_ref().map(|v| v.slice()),
    };
    match out_dtype {
        "float32" => backward_into::<f32, f32>(py, &logits, rows, &args, |o| o),
        "float64" => backward_into::<f64, f64>(py, &logits, rows, &args, |o| o),
        "bfloat16" => backward_into::<i16, bf16>(py, &logits, rows, &args, half_bits::<bf16>),
        "float16" => backward_into::<i16, f16>(py, &logits, rows, &args, half_bits::<f16>),
        other => Err(value_error(
            "out_dtype",
            format!(
                "expected \"float32\", \"float64\", \"bfloat16\" or \"float16\", got {other:?}"
            ),
        )),
    }
}

/// The int16 buffer of a numpy array as the half type whose bits it holds.
fn half_bits<H: GradElem>(bits: &mut [i16]) -> &mut [H] {
    debug_assert_eq!(std::mem::size_of::<H>(), std::mem::size_of::<i16>());
    // SAFETY: H is bf16 or f16, both `repr(transparent)` over u16 (same size and alignment as
    // i16), and every bit pattern is a valid value of either; the borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(bits.as_mut_ptr().cast::<H>(), bits.len()) }
}

/// The backward's inputs besides the logits.
struct BackwardArgs<'a> {
    vocab: usize,
    targets: &'a [i64],
    temperature: f64,
    grad_logp: &'a [f32],
    grad_entropy: Option<&'a [f32]>,
    stats: Option<&'a [f64]>,
}

/// Allocates `(rows, vocab)` numpy elements `E`, lets the kernel write them as `O` (`as_out`
/// reinterprets the buffer) and returns the array.
fn backward_into<'py, E: numpy::Element, O: GradElem>(
    py: Python<'py>,
    logits: &FloatView<'py>,
    rows: usize,
    args: &BackwardArgs<'_>,
    as_out: impl FnOnce(&mut [E]) -> &mut [O],
) -> PyResult<Bound<'py, PyAny>> {
    // Every element is written by the kernel, so the output starts uninitialised.
    // SAFETY: the array is fully written below before Python sees it (on error it is dropped).
    let dlogits = unsafe { PyArray2::<E>::new(py, [rows, args.vocab], false) };
    {
        let mut guard = dlogits.readwrite();
        let out = guard
            .as_slice_mut()
            .map_err(|_| value_error("dlogits", "internal: output is not contiguous"))?;
        let out = as_out(out);
        with_logits!(logits, |x| run_backward(py, x, args, out)).map_err(to_py)?;
    }
    Ok(dlogits.into_any())
}

fn run_backward<T: FloatElem, O: GradElem>(
    py: Python<'_>,
    logits: &[T],
    args: &BackwardArgs<'_>,
    dlogits: &mut [O],
) -> crate::Result<()> {
    let upstream = Upstream {
        grad_logp: args.grad_logp,
        grad_entropy: args.grad_entropy,
        stats: args.stats,
    };
    py.detach(|| {
        selective_logprobs_backward(
            logits,
            args.vocab,
            args.targets,
            &LogprobOptions::new(args.temperature),
            &upstream,
            dlogits,
        )
    })
}

//! Binding of [`crate::logprob`]: the fused selective log-softmax and its backward.

use numpy::{
    PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::arrays::{rows_of, FloatView, View};
use super::errors::{to_py, type_error, value_error};
use crate::elem::FloatElem;
use crate::elem::GradElem;
use crate::logprob::{
    buffers_overlap, selective_logprobs_backward_rows, selective_logprobs_rows, ForwardOut,
    LogitRows, LogprobOptions, RowLayout, Upstream, STATS_PER_ROW,
};
use half::{bf16, f16};

/// The checked 1-D `targets` of `rows` rows of logits.
fn check_targets(targets: &View<'_, i64>, rows: usize) -> PyResult<()> {
    if targets.shape() != [rows] {
        return Err(value_error(
            "targets",
            format!(
                "expected shape ({rows},) (one token id per row of logits), got {:?}",
                targets.shape()
            ),
        ));
    }
    Ok(())
}

/// The logits' row layout (`(N, V)` or `(B, T, V)`, read in place at any row strides).
fn logits_layout(logits: &FloatView<'_>) -> PyResult<RowLayout> {
    Ok(match logits {
        FloatView::F32(v) => v.logit_rows()?.layout(),
        FloatView::F64(v) => v.logit_rows()?.layout(),
        FloatView::Bf16(v) | FloatView::F16(v) => v.logit_rows()?.layout(),
    })
}

/// Runs `$body` with `$x` bound to the logits' typed rows.
macro_rules! with_logits {
    ($view:expr, |$x:ident| $body:expr) => {
        match $view {
            FloatView::F32(v) => {
                let $x = v.logit_rows()?;
                $body
            }
            FloatView::F64(v) => {
                let $x = v.logit_rows()?;
                $body
            }
            FloatView::Bf16(v) => {
                let $x = reinterpret_rows::<bf16>(v.logit_rows()?)?;
                $body
            }
            FloatView::F16(v) => {
                let $x = reinterpret_rows::<f16>(v.logit_rows()?)?;
                $body
            }
        }
    };
}

/// The logits as [`buffers_overlap`] takes a buffer: first row's address, layout, element size.
fn logits_buffer(logits: &FloatView<'_>) -> PyResult<(usize, RowLayout, usize)> {
    fn buffer<T>(rows: LogitRows<'_, T>) -> (usize, RowLayout, usize) {
        (
            rows.first() as usize,
            rows.layout(),
            std::mem::size_of::<T>(),
        )
    }
    Ok(match logits {
        FloatView::F32(v) => buffer(v.logit_rows()?),
        FloatView::F64(v) => buffer(v.logit_rows()?),
        FloatView::Bf16(v) | FloatView::F16(v) => buffer(v.logit_rows()?),
    })
}

/// uint16 rows as the half type whose bits they hold.
fn reinterpret_rows<H: FloatElem>(rows: LogitRows<'_, u16>) -> PyResult<LogitRows<'_, H>> {
    rows.map_data(|data| {
        debug_assert_eq!(std::mem::size_of::<H>(), std::mem::size_of::<u16>());
        // SAFETY: H is bf16 or f16, both `repr(transparent)` over u16 (same size and alignment),
        // and every bit pattern is a valid value of either; the borrow is carried over.
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<H>(), data.len()) }
    })
    .map_err(to_py)
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
    let logits = FloatView::logits("logits", logits, half_dtype)?;
    let targets = View::<i64>::new("targets", targets)?;
    let rows = logits_layout(&logits)?.rows;
    check_targets(&targets, rows)?;
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
    logits: LogitRows<'_, T>,
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
    py.detach(|| selective_logprobs_rows(logits, targets, &LogprobOptions::new(temperature), out))
}

/// Returns `dlogits` `(N, V)` in `out_dtype`: "float32" (default), "float64", or "bfloat16" /
/// "float16" as int16 bits (rounded to nearest even; view them as the half type). With `out`
/// (an array of that element type with the logits' rows, in any layout that keeps them apart,
/// such as the matching view of a full-size gradient), writes there instead and returns `out`.
#[pyfunction]
#[pyo3(signature = (logits, targets, grad_logp, grad_entropy, *, half_dtype, temperature, out_dtype="float32", stats=None, out=None))]
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
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let logits = FloatView::logits("logits", logits, half_dtype)?;
    let targets = View::<i64>::new("targets", targets)?;
    let layout = logits_layout(&logits)?;
    let rows = layout.rows;
    check_targets(&targets, rows)?;
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
    let args = BackwardArgs {
        vocab: layout.vocab,
        targets: targets.slice(),
        temperature,
        grad_logp: grad_logp.slice(),
        grad_entropy: grad_entropy.as_ref().map(|v| v.slice()),
        stats: stats.as_ref().map(|v| v.slice()),
    };
    let out = out.filter(|o| !o.is_none());
    match out_dtype {
        "float32" => backward_into::<f32, f32>(py, &logits, rows, &args, out, |o| o),
        "float64" => backward_into::<f64, f64>(py, &logits, rows, &args, out, |o| o),
        "bfloat16" => backward_into::<i16, bf16>(py, &logits, rows, &args, out, half_bits::<bf16>),
        "float16" => backward_into::<i16, f16>(py, &logits, rows, &args, out, half_bits::<f16>),
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

/// Lets the kernel write `dlogits` as `O` (`as_out` reinterprets the buffer of numpy elements
/// `E`) into `out`, or into a new dense `(rows, vocab)` array, and returns that array.
fn backward_into<'py, E: numpy::Element, O: GradElem>(
    py: Python<'py>,
    logits: &FloatView<'py>,
    rows: usize,
    args: &BackwardArgs<'_>,
    out: Option<&Bound<'py, PyAny>>,
    as_out: impl FnOnce(&mut [E]) -> &mut [O],
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(obj) = out {
        let untyped = obj
            .cast::<PyUntypedArray>()
            .map_err(|_| type_error("out", "a numpy array", "another object"))?;
        let array = untyped.cast::<PyArrayDyn<E>>().map_err(|_| {
            type_error(
                "out",
                &format!("dtype {}", numpy::dtype::<E>(py)),
                format!("dtype {}", untyped.dtype()),
            )
        })?;
        let mut guard = array
            .try_readwrite()
            .map_err(|_| value_error("out", "the array is borrowed elsewhere"))?;
        let (data, out_layout) = rows_of(
            "out",
            guard.as_array_mut().as_mut_ptr(),
            array.shape(),
            array.strides(),
        )?;
        let out_buffer = (data as usize, out_layout, std::mem::size_of::<E>());
        if buffers_overlap(out_buffer, logits_buffer(logits)?) {
            return Err(value_error(
                "out",
                "expected memory apart from the logits (the backward reads them while it writes)",
            ));
        }
        // SAFETY: `rows_of` checked non-negative strides of whole elements, so every element of
        // every row lies between the first element and the last row's end, in the one buffer
        // the array views; the exclusive borrow keeps it alive and unshared meanwhile. The
        // kernel writes only the rows (`rows_mut` splits them out of the span).
        let span = unsafe { std::slice::from_raw_parts_mut(data, out_layout.span().unwrap_or(0)) };
        let span = as_out(span);
        with_logits!(logits, |x| run_backward(py, x, args, span, out_layout)).map_err(to_py)?;
        drop(guard);
        return Ok(obj.clone());
    }
    // Every element is written by the kernel, so the output starts uninitialised.
    // SAFETY: the array is fully written below before Python sees it (on error it is dropped).
    let dlogits = unsafe { PyArray2::<E>::new(py, [rows, args.vocab], false) };
    {
        let mut guard = dlogits.readwrite();
        let out = guard
            .as_slice_mut()
            .map_err(|_| value_error("dlogits", "internal: output is not contiguous"))?;
        let out = as_out(out);
        let dense = RowLayout::dense(rows, args.vocab);
        with_logits!(logits, |x| run_backward(py, x, args, out, dense)).map_err(to_py)?;
    }
    Ok(dlogits.into_any())
}

fn run_backward<T: FloatElem, O: GradElem>(
    py: Python<'_>,
    logits: LogitRows<'_, T>,
    args: &BackwardArgs<'_>,
    dlogits: &mut [O],
    out_layout: RowLayout,
) -> crate::Result<()> {
    let upstream = Upstream {
        grad_logp: args.grad_logp,
        grad_entropy: args.grad_entropy,
        stats: args.stats,
    };
    py.detach(|| {
        selective_logprobs_backward_rows(
            logits,
            args.targets,
            &LogprobOptions::new(args.temperature),
            &upstream,
            dlogits,
            out_layout,
        )
    })
}

//! Binding of [`crate::logprob`]: the fused selective log-softmax and its backward.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;

use super::arrays::{FloatView, View};
use super::errors::{to_py, value_error};
use crate::elem::FloatElem;
use crate::logprob::{selective_logprobs, selective_logprobs_backward};

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

/// Returns `(logp, entropy | None)`, float32 `(N,)`.
#[pyfunction]
#[pyo3(signature = (logits, targets, *, half_dtype, temperature, entropy))]
pub(crate) fn selective_logprobs_core<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    targets: &Bound<'py, PyAny>,
    half_dtype: &str,
    temperature: f64,
    entropy: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let logits = FloatView::new("logits", logits, half_dtype)?;
    let targets = View::<i64>::new("targets", targets)?;
    let (rows, vocab) = logits_shape(&logits, &targets)?;
    let logp = PyArray1::<f32>::zeros(py, rows, false);
    let ent = entropy.then(|| PyArray1::<f32>::zeros(py, rows, false));
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
        let t = targets.slice();
        with_logits!(&logits, |x| run_forward(
            py,
            x,
            vocab,
            t,
            temperature,
            logp_slice,
            ent_slice
        ))
        .map_err(to_py)?;
    }
    (logp, ent).into_pyobject(py).map(|t| t.into_any())
}

fn run_forward<T: FloatElem>(
    py: Python<'_>,
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp: &mut [f32],
    entropy: Option<&mut [f32]>,
) -> crate::Result<()> {
    py.detach(|| selective_logprobs(logits, vocab, targets, temperature, logp, entropy))
}

/// Returns `dlogits`, float32 `(N, V)`.
#[pyfunction]
#[pyo3(signature = (logits, targets, grad_logp, grad_entropy, *, half_dtype, temperature))]
pub(crate) fn selective_logprobs_backward_core<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    targets: &Bound<'py, PyAny>,
    grad_logp: &Bound<'py, PyAny>,
    grad_entropy: Option<&Bound<'py, PyAny>>,
    half_dtype: &str,
    temperature: f64,
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
    // Every element is written by the kernel, so the output starts uninitialised.
    let dlogits = unsafe { PyArray2::<f32>::new(py, [rows, vocab], false) };
    {
        let mut guard = dlogits.readwrite();
        let out = guard
            .as_slice_mut()
            .map_err(|_| value_error("dlogits", "internal: output is not contiguous"))?;
        let t = targets.slice();
        let g = grad_logp.slice();
        let gh = grad_entropy.as_ref().map(|v| v.slice());
        with_logits!(&logits, |x| run_backward(
            py,
            x,
            vocab,
            t,
            temperature,
            g,
            gh,
            out
        ))
        .map_err(to_py)?;
    }
    Ok(dlogits.into_any())
}

#[allow(clippy::too_many_arguments)]
fn run_backward<T: FloatElem>(
    py: Python<'_>,
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    dlogits: &mut [f32],
) -> crate::Result<()> {
    py.detach(|| {
        selective_logprobs_backward(
            logits,
            vocab,
            targets,
            temperature,
            grad_logp,
            grad_entropy,
            dlogits,
        )
    })
}

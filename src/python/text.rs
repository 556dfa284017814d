//! Bindings of [`crate::text`]: step segmentation and verdict parsing. Strings in, Python lists
//! out; the scans run without the GIL, only building the result lists needs it.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyList;

use super::arrays::View;
use super::errors::to_py;
use crate::text::{self, Delimiter};

/// The steps of `text` as strings.
#[pyfunction]
#[pyo3(signature = (text, delimiter))]
pub(crate) fn split_steps<'t>(
    py: Python<'_>,
    text: &'t str,
    delimiter: &str,
) -> PyResult<Vec<&'t str>> {
    let delimiter = Delimiter::parse(delimiter).map_err(to_py)?;
    Ok(py.detach(|| {
        text::split_steps(text, &delimiter)
            .iter()
            .map(|step| step.text)
            .collect()
    }))
}

/// `(start, end)` character offsets of the steps of `text` (`text[start:end]` is the step).
#[pyfunction]
#[pyo3(signature = (text, delimiter))]
pub(crate) fn step_spans(
    py: Python<'_>,
    text: &str,
    delimiter: &str,
) -> PyResult<Vec<(usize, usize)>> {
    let delimiter = Delimiter::parse(delimiter).map_err(to_py)?;
    Ok(py.detach(|| text::char_spans(text, &text::split_steps(text, &delimiter))))
}

/// The steps of every text, as a list of lists of strings.
#[pyfunction]
#[pyo3(signature = (texts, delimiter))]
pub(crate) fn split_steps_batch<'py>(
    py: Python<'py>,
    texts: Vec<PyBackedStr>,
    delimiter: &str,
) -> PyResult<Bound<'py, PyList>> {
    let delimiter = Delimiter::parse(delimiter).map_err(to_py)?;
    let steps = py.detach(|| text::split_steps_batch(&texts, &delimiter));
    // The step strings borrow `texts`: turn them into Python strings before it is dropped.
    let lists = steps
        .iter()
        .map(|steps| PyList::new(py, steps.iter().map(|step| step.text)))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, lists)
}

/// The index in the last `\boxed{}` of `judge_text`, or `None`.
#[pyfunction]
#[pyo3(signature = (judge_text, num_steps=None))]
pub(crate) fn parse_verdict(
    py: Python<'_>,
    judge_text: &str,
    num_steps: Option<usize>,
) -> Option<i64> {
    py.detach(|| text::parse_verdict(judge_text, num_steps))
}

/// [`parse_verdict`] of every judge text; `num_steps` one count per text.
#[pyfunction]
#[pyo3(signature = (judge_texts, num_steps=None))]
pub(crate) fn parse_verdict_batch(
    py: Python<'_>,
    judge_texts: Vec<PyBackedStr>,
    num_steps: Option<Vec<i64>>,
) -> PyResult<Vec<Option<i64>>> {
    py.detach(|| text::parse_verdicts(&judge_texts, num_steps.as_deref()))
        .map_err(to_py)
}

/// First step whose PRM score is below `threshold`, or -1.
#[pyfunction]
#[pyo3(signature = (scores, threshold))]
pub(crate) fn first_error_from_scores(scores: &Bound<'_, PyAny>, threshold: f64) -> PyResult<i64> {
    let scores = View::<f64>::new("scores", scores)?.expect_ndim("scores", 1)?;
    text::first_error_from_scores(scores.slice(), threshold).map_err(to_py)
}

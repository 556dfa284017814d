//! Bindings of [`crate::outcome`] (verl's outcome advantage).

use numpy::IntoPyArray;
use pyo3::prelude::*;

use super::arrays::{groups, with_mask, MaskView, View};
use super::buffers;
use super::errors::{to_py, value_error};
use crate::advantages::{AdvantageOptions, Scale};
use crate::outcome;

/// `token_level_rewards` (float32 `(N, L)`, rows may stand apart) -> float64 `(N,)` scores.
#[pyfunction]
pub(crate) fn sequence_scores_core<'py>(
    py: Python<'py>,
    token_level_rewards: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let rewards = View::<f32>::rows("token_level_rewards", token_level_rewards)?;
    let rows = rewards.as_rows()?;
    let scores = py
        .detach(|| outcome::sequence_scores(rows))
        .map_err(to_py)?;
    Ok(scores.into_pyarray(py).into_any())
}

/// Scores `(N,)`, `response_mask` `(N, L)` (rows may stand apart), int64 group codes `(N,)` ->
/// (float32 `(N, L)` token advantages, float32 `(N,)` per-response advantages).
#[pyfunction]
#[pyo3(signature = (scores, response_mask, group_ids, norm_by_std, eps))]
pub(crate) fn outcome_advantages_core<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    response_mask: &Bound<'py, PyAny>,
    group_ids: &Bound<'py, PyAny>,
    norm_by_std: bool,
    eps: f64,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let scores = View::<f64>::new("scores", scores)?.expect_ndim("scores", 1)?;
    let mask = MaskView::rows("response_mask", response_mask)?;
    let ids = View::<i64>::new("index", group_ids)?.expect_ndim("index", 1)?;
    let shape = mask.shape().to_vec();
    let rows = scores.shape()[0];
    if shape[0] != rows {
        return Err(value_error(
            "response_mask",
            format!("expected shape ({rows}, L), one row per response, got {shape:?}"),
        ));
    }
    let groups = groups(rows, None, Some(ids.slice()))?;
    let options = AdvantageOptions {
        scale: if norm_by_std {
            Scale::Group
        } else {
            Scale::None
        },
        eps,
        ..AdvantageOptions::VERL
    };
    // A recycled buffer when the caller freed last step's output (see `buffers`).
    let len = shape[0]
        .checked_mul(shape[1])
        .ok_or_else(|| value_error("response_mask", format!("shape {shape:?} is too large")))?;
    let mut out = buffers::take(len);
    let s = scores.slice();
    let advantages = with_mask!(&mask, as_rows, |m| {
        let m = m?;
        py.detach(|| outcome::outcome_advantages(s, m, &groups, options, &mut out))
    })
    .map_err(to_py)?;
    let out = buffers::into_array(py, out, shape[0], shape[1])?;
    Ok((out.into_any(), advantages.into_pyarray(py).into_any()))
}

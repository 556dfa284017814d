//! Bindings of [`crate::advantages`].

use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;

use super::arrays::{groups, optional_view, output_2d, with_mask, MaskView, View};
use super::errors::{to_py, value_error};
use crate::advantages::{self, AdvantageOptions, Scale, Singleton};

#[pyfunction]
#[pyo3(signature = (rewards, group_size, group_ids, scale, eps, singleton))]
pub(crate) fn group_advantages_core<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    group_size: Option<i64>,
    group_ids: Option<&Bound<'py, PyAny>>,
    scale: &str,
    eps: f64,
    singleton: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let rewards = View::<f64>::new("rewards", rewards)?.expect_ndim("rewards", 1)?;
    let group_ids = optional_view::<i64>("group_ids", group_ids)?;
    let options = AdvantageOptions {
        scale: Scale::parse(scale).map_err(to_py)?,
        eps,
        singleton: Singleton::parse(singleton).map_err(to_py)?,
    };
    let groups = groups(
        rewards.slice().len(),
        group_size,
        group_ids.as_ref().map(|v| v.slice()),
    )?;
    let r = rewards.slice();
    let out = py
        .detach(|| advantages::group_advantages(r, &groups, options))
        .map_err(to_py)?;
    Ok(out.into_pyarray(py).into_any())
}

#[pyfunction]
#[pyo3(signature = (advantages, mask, out=None))]
pub(crate) fn token_advantages_core<'py>(
    py: Python<'py>,
    advantages: &Bound<'py, PyAny>,
    mask: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let advantages = View::<f32>::new("advantages", advantages)?;
    let mask = MaskView::new("mask", mask)?;
    let (rows, len) = advantages::token_shape(advantages.shape(), mask.shape()).map_err(to_py)?;
    let out = output_2d(py, out, rows, len)?;
    {
        let mut guard = out
            .try_readwrite()
            .map_err(|_| value_error("out", "expected a writeable array not borrowed elsewhere"))?;
        let out_slice = guard
            .as_slice_mut()
            .map_err(|_| value_error("out", "internal: output is not contiguous"))?;
        let a = advantages.slice();
        with_mask!(&mask, |m| py
            .detach(|| advantages::token_advantages(a, m, len, out_slice)))
        .map_err(to_py)?;
    }
    Ok(out.into_any())
}

//! Bindings of [`crate::advantages`].

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::arrays::{groups, optional_view, with_mask, MaskView, View};
use super::errors::{to_py, type_error, value_error};
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
    let advantages = View::<f32>::new("advantages", advantages)?.expect_ndim("advantages", 1)?;
    let mask = MaskView::new("mask", mask)?;
    let shape = mask.shape().to_vec();
    let rows = advantages.shape()[0];
    if shape.len() != 2 || shape[0] != rows {
        return Err(value_error(
            "mask",
            format!("expected shape ({rows}, L) matching advantages ({rows},), got {shape:?}"),
        ));
    }
    let out = match out.filter(|o| !o.is_none()) {
        Some(out) => {
            let out = out
                .cast::<PyArray2<f32>>()
                .map_err(|_| type_error("out", "a 2-D float32 numpy array", out.get_type()))?
                .clone();
            if out.shape() != [shape[0], shape[1]] || !out.is_c_contiguous() {
                return Err(value_error(
                    "out",
                    format!(
                        "expected a C-contiguous array of shape ({}, {}), got {:?}",
                        shape[0],
                        shape[1],
                        out.shape()
                    ),
                ));
            }
            out
        }
        // Every element is written by the kernel, so a fresh output starts uninitialised.
        None => unsafe { PyArray2::<f32>::new(py, [shape[0], shape[1]], false) },
    };
    {
        let mut guard = out
            .try_readwrite()
            .map_err(|_| value_error("out", "expected a writeable array not borrowed elsewhere"))?;
        let out_slice = guard
            .as_slice_mut()
            .map_err(|_| value_error("out", "internal: output is not contiguous"))?;
        let a = advantages.slice();
        with_mask!(&mask, |m| py
            .detach(|| advantages::token_advantages(a, m, shape[1], out_slice)))
        .map_err(to_py)?;
    }
    Ok(out.into_any())
}

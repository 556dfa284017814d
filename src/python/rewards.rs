//! Binding of [`crate::rewards::sgpo_rewards`].

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{groups, optional_view, View};
use super::errors::{to_py, value_error};
use crate::rewards::{sgpo_rewards, CreditRule, DiversifyMode, RewardOptions, Verdicts};

/// Returns `(rewards, credit, all_negative, diversified, stats)`.
#[pyfunction]
#[pyo3(signature = (rewards, first_error, num_steps, credit, correct, group_size, group_ids, credit_scale, mode, rule="prefix", beta=5.0, gamma=0.5))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgpo_rewards_core<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    first_error: Option<&Bound<'py, PyAny>>,
    num_steps: Option<&Bound<'py, PyAny>>,
    credit: Option<&Bound<'py, PyAny>>,
    correct: Option<&Bound<'py, PyAny>>,
    group_size: Option<i64>,
    group_ids: Option<&Bound<'py, PyAny>>,
    credit_scale: f64,
    mode: &str,
    rule: &str,
    beta: f64,
    gamma: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let rewards = View::<f64>::new("rewards", rewards)?.expect_ndim("rewards", 1)?;
    let first_error = optional_view::<i64>("first_error", first_error)?;
    let num_steps = optional_view::<i64>("num_steps", num_steps)?;
    let credit = optional_view::<f64>("credit", credit)?;
    let correct = optional_view::<bool>("correct", correct)?;
    let group_ids = optional_view::<i64>("group_ids", group_ids)?;
    let options = RewardOptions {
        credit_scale,
        mode: DiversifyMode::parse(mode).map_err(to_py)?,
        rule: CreditRule::parse(rule, beta, gamma).map_err(to_py)?,
    };
    let verdicts = match (&first_error, &num_steps, &credit) {
        (Some(k), Some(n), None) => Verdicts::Steps {
            first_error: k.slice(),
            num_steps: n.slice(),
        },
        (None, None, Some(c)) => Verdicts::Credit(c.slice()),
        (_, _, Some(_)) => {
            return Err(value_error(
                "credit",
                "give either credit or first_error and num_steps, not both",
            ))
        }
        _ => {
            return Err(value_error(
                "first_error",
                "give first_error and num_steps together (or a credit array instead)",
            ))
        }
    };
    let groups = groups(
        rewards.slice().len(),
        group_size,
        group_ids.as_ref().map(|v| v.slice()),
    )?;
    let (r, correct) = (rewards.slice(), correct.as_ref().map(|c| c.slice()));
    let out = py
        .detach(|| sgpo_rewards(r, verdicts, correct, &groups, options))
        .map_err(to_py)?;
    let stats = PyDict::new(py);
    stats.set_item("num_groups", out.stats.num_groups)?;
    stats.set_item("all_negative_groups", out.stats.all_negative_groups)?;
    stats.set_item("diversified_groups", out.stats.diversified_groups)?;
    stats.set_item("judge_missing_groups", out.stats.judge_missing_groups)?;
    stats.set_item("mean_credit", out.stats.mean_credit)?;
    (
        out.rewards.into_pyarray(py),
        out.credit.into_pyarray(py),
        out.all_negative.into_pyarray(py),
        out.diversified.into_pyarray(py),
        stats,
    )
        .into_pyobject(py)
        .map(|t| t.into_any())
}

/// `f(c)` of the credit rule for every score (float64 in, float64 out); checks the rule's
/// parameters as `sgpo_rewards_core` does (an empty array checks them alone).
#[pyfunction]
#[pyo3(signature = (scores, rule, beta, gamma))]
pub(crate) fn credit_rule_apply<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    rule: &str,
    beta: f64,
    gamma: f64,
) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
    let rule = CreditRule::parse(rule, beta, gamma).map_err(to_py)?;
    let scores = View::<f64>::new("scores", scores)?.expect_ndim("scores", 1)?;
    let out: Vec<f64> = scores.slice().iter().map(|&c| rule.apply(c)).collect();
    Ok(out.into_pyarray(py))
}

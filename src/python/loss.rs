//! Binding of [`crate::loss::policy_loss`].

use numpy::PyArrayMethods;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{output_2d, with_mask, FloatView, MaskView, View};
use super::errors::{to_py, value_error};
use crate::elem::{FloatElem, MaskElem};
use crate::loss::registry::LOSS_TYPES;
use crate::loss::{
    policy_loss, AdvantageView, Aggregation, ImportanceSamplingLevel, KlEstimator, LossInputs,
    LossOptions, LossOutput, LossShapes, LossType,
};

/// Returns `(loss, grad, metrics)`. `options` holds every keyword option of
/// `sgpo_rs.policy_loss` (a dict, checked and completed on the Python side), the same mapping
/// the CUDA binding takes; `out`, a float32 `(B, T)` array the gradient is written into.
#[pyfunction]
#[pyo3(signature = (logp, old_logp, ref_logp, advantages, mask, *, half_dtype, options, out=None))]
#[allow(clippy::too_many_arguments)] // py plus the five arrays, the dtype and the options
pub(crate) fn policy_loss_core<'py>(
    py: Python<'py>,
    logp: &Bound<'py, PyAny>,
    old_logp: Option<&Bound<'py, PyAny>>,
    ref_logp: Option<&Bound<'py, PyAny>>,
    advantages: &Bound<'py, PyAny>,
    mask: &Bound<'py, PyAny>,
    half_dtype: &str,
    options: LossOptionArgs,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let logp = FloatView::new("logp", logp, half_dtype)?;
    let companion =
        |arg: &'static str, obj: Option<&Bound<'py, PyAny>>| -> PyResult<Option<FloatView<'py>>> {
            let Some(obj) = obj.filter(|o| !o.is_none()) else {
                return Ok(None);
            };
            let view = FloatView::new(arg, obj, half_dtype)?;
            if view.dtype_name() != logp.dtype_name() {
                return Err(to_py(crate::Error::Dtype {
                    arg,
                    expected: format!("{} like logp", logp.dtype_name()).into(),
                    got: view.dtype_name().to_string(),
                }));
            }
            Ok(Some(view))
        };
    let old_logp = companion("old_logp", old_logp)?;
    let ref_logp = companion("ref_logp", ref_logp)?;
    let mask = MaskView::new("mask", mask)?;
    let advantages = View::<f32>::new("advantages", advantages)?;
    let dims = LossShapes {
        logp: logp.shape(),
        old_logp: old_logp.as_ref().map(|v| v.shape()),
        ref_logp: ref_logp.as_ref().map(|v| v.shape()),
        advantages: advantages.shape(),
        mask: mask.shape(),
    }
    .check()
    .map_err(to_py)?;
    let (batch, len) = (dims.batch, dims.len);
    let advantage_view = if dims.advantages_per_token {
        AdvantageView::PerToken(advantages.slice())
    } else {
        AdvantageView::PerRow(advantages.slice())
    };
    let options = options.resolve(len)?;

    let grad = output_2d(py, out, batch, len)?;
    let output = {
        let mut guard = grad.readwrite();
        let grad_slice = guard
            .as_slice_mut()
            .map_err(|_| value_error("grad", "internal: output is not contiguous"))?;
        macro_rules! run {
            ($get:ident) => {{
                let lp = logp.$get().unwrap_or(&[]);
                let old = old_logp.as_ref().and_then(|v| v.$get());
                let rf = ref_logp.as_ref().and_then(|v| v.$get());
                with_mask!(&mask, |m| run_loss(
                    py,
                    lp,
                    old,
                    rf,
                    advantage_view,
                    m,
                    batch,
                    len,
                    &options,
                    grad_slice
                ))
            }};
        }
        match logp {
            FloatView::F32(_) => run!(f32),
            FloatView::F64(_) => run!(f64),
            FloatView::Bf16(_) => run!(bf16),
            FloatView::F16(_) => run!(f16),
        }
        .map_err(to_py)?
    };
    let metrics = PyDict::new(py);
    for (key, value) in output.metrics.0 {
        metrics.set_item(key, value)?;
    }
    (output.loss, grad, metrics)
        .into_pyobject(py)
        .map(|t| t.into_any())
}

#[allow(clippy::too_many_arguments)]
fn run_loss<T: FloatElem, M: MaskElem>(
    py: Python<'_>,
    logp: &[T],
    old_logp: Option<&[T]>,
    ref_logp: Option<&[T]>,
    advantages: AdvantageView<'_>,
    mask: &[M],
    batch: usize,
    len: usize,
    options: &LossOptions,
    grad: &mut [f32],
) -> crate::Result<LossOutput> {
    let inputs = LossInputs {
        logp,
        old_logp,
        ref_logp,
        advantages,
        mask,
        batch,
        len,
    };
    py.detach(|| policy_loss(&inputs, options, grad))
}

/// The loss options as Python passes them to both bindings (the items of one dict), before
/// parsing.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct LossOptionArgs {
    pub beta: f64,
    pub epsilon_low: f64,
    pub epsilon_high: Option<f64>,
    pub delta: Option<f64>,
    pub loss_type: String,
    pub importance_sampling_level: String,
    pub kl_estimator: String,
    pub kl_bias_correction: bool,
    pub max_completion_length: Option<i64>,
    pub num_items: Option<f64>,
    pub grad_scale: f64,
    pub loss_agg_mode: Option<String>,
    pub loss_scale_factor: Option<f64>,
    pub clip_ratio_c: f64,
    pub sapo_temperature_pos: f64,
    pub sapo_temperature_neg: f64,
    pub vespo_k_pos: f64,
    pub vespo_lambda_pos: f64,
    pub vespo_k_neg: f64,
    pub vespo_lambda_neg: f64,
}

impl LossOptionArgs {
    /// Parses the names into [`LossOptions`] for a batch of `len` tokens per row.
    pub(crate) fn resolve(&self, len: usize) -> PyResult<LossOptions> {
        let max_completion_length = self
            .max_completion_length
            .map(|m| {
                usize::try_from(m).map_err(|_| {
                    value_error(
                        "max_completion_length",
                        format!("expected a value >= 1, got {m}"),
                    )
                })
            })
            .transpose()?;
        let aggregation = self
            .loss_agg_mode
            .as_deref()
            .map(|mode| Aggregation::parse_verl(mode, self.loss_scale_factor, len))
            .transpose()
            .map_err(to_py)?;
        Ok(LossOptions {
            loss_type: LossType::parse(&self.loss_type).map_err(to_py)?,
            importance_sampling_level: ImportanceSamplingLevel::parse(
                &self.importance_sampling_level,
            )
            .map_err(to_py)?,
            epsilon_low: self.epsilon_low,
            epsilon_high: self.epsilon_high,
            delta: self.delta,
            beta: self.beta,
            kl_estimator: KlEstimator::parse(&self.kl_estimator).map_err(to_py)?,
            kl_bias_correction: self.kl_bias_correction,
            max_completion_length,
            num_items: self.num_items,
            aggregation,
            grad_scale: self.grad_scale,
            clip_ratio_c: self.clip_ratio_c,
            sapo_temperature_pos: self.sapo_temperature_pos,
            sapo_temperature_neg: self.sapo_temperature_neg,
            vespo_k_pos: self.vespo_k_pos,
            vespo_lambda_pos: self.vespo_lambda_pos,
            vespo_k_neg: self.vespo_k_neg,
            vespo_lambda_neg: self.vespo_lambda_neg,
        })
    }
}

/// The defaults of every loss option, as `LossOptions::default()` holds them, under the Python
/// option names (`sgpo_rs.policy_loss`'s keyword defaults must equal them; a test checks).
#[pyfunction]
pub(crate) fn loss_option_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = LossOptions::default();
    let out = PyDict::new(py);
    out.set_item("loss_type", d.loss_type.name())?;
    out.set_item(
        "importance_sampling_level",
        d.importance_sampling_level.name(),
    )?;
    out.set_item("epsilon_low", d.epsilon_low)?;
    out.set_item("epsilon_high", d.epsilon_high)?;
    out.set_item("delta", d.delta)?;
    out.set_item("beta", d.beta)?;
    out.set_item("kl_estimator", d.kl_estimator.name())?;
    out.set_item("kl_bias_correction", d.kl_bias_correction)?;
    out.set_item("max_completion_length", d.max_completion_length)?;
    out.set_item("num_items", d.num_items)?;
    // No aggregation override by default: TRL's rule per loss type, no verl loss_agg_mode.
    out.set_item("loss_agg_mode", py.None())?;
    out.set_item("loss_scale_factor", py.None())?;
    out.set_item("grad_scale", d.grad_scale)?;
    out.set_item("clip_ratio_c", d.clip_ratio_c)?;
    out.set_item("sapo_temperature_pos", d.sapo_temperature_pos)?;
    out.set_item("sapo_temperature_neg", d.sapo_temperature_neg)?;
    out.set_item("vespo_k_pos", d.vespo_k_pos)?;
    out.set_item("vespo_lambda_pos", d.vespo_lambda_pos)?;
    out.set_item("vespo_k_neg", d.vespo_k_neg)?;
    out.set_item("vespo_lambda_neg", d.vespo_lambda_neg)?;
    Ok(out)
}

/// The loss-type registry (`crate::loss::registry::LOSS_TYPES`), one dict per loss type in its
/// order: `name`, `origin` ("trl"/"verl"), `trl_clipped`, `aggregation` (the default's name),
/// `divides_by_gradient_accumulation` and `metrics` (names, besides `kl`).
#[pyfunction]
pub(crate) fn loss_types(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    LOSS_TYPES
        .iter()
        .map(|spec| {
            let out = PyDict::new(py);
            out.set_item("name", spec.name)?;
            out.set_item("origin", spec.origin.name())?;
            out.set_item("trl_clipped", spec.trl_clipped)?;
            out.set_item("aggregation", spec.aggregation.name())?;
            out.set_item(
                "divides_by_gradient_accumulation",
                spec.divides_by_gradient_accumulation(),
            )?;
            let metrics: Vec<&str> = spec.metrics.iter().map(|m| m.name).collect();
            out.set_item("metrics", metrics)?;
            Ok(out)
        })
        .collect()
}

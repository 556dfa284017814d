//! Binding of [`crate::cuda`]: the CUDA kernels on torch's device memory. Python
//! (`sgpo_rs._cuda`) allocates every output with torch on the input's device and passes each
//! tensor as a description ([`TensorArg`]: pointer, dtype, shape, strides, device) with the current
//! stream's handle; the engine checks the descriptions before any launch, and Python reads the
//! status buffer afterwards. These functions only translate; launches are asynchronous and
//! release the GIL.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::to_py;
use super::loss::LossOptionArgs;
use crate::advantages::{AdvantageOptions, Scale, Singleton};
use crate::cuda::{self, groups, logprob, loss, DeviceTensor, SOURCES};
use crate::rewards::{CreditRule, DiversifyMode, RewardOptions};

/// What the CUDA path can use here: `nvrtc`, `nvrtc_version`, `driver`, `driver_version`,
/// `device_count`, `reason` (why not, or None).
#[pyfunction]
pub(crate) fn cuda_availability(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let found = py.detach(cuda::availability);
    let out = PyDict::new(py);
    out.set_item("nvrtc", found.nvrtc)?;
    out.set_item("nvrtc_version", found.nvrtc_version)?;
    out.set_item("driver", found.driver)?;
    out.set_item("driver_version", found.driver_version)?;
    out.set_item("device_count", found.device_count)?;
    out.set_item("reason", found.reason)?;
    Ok(out)
}

/// `(name, arch)` of a device.
#[pyfunction]
pub(crate) fn cuda_device(py: Python<'_>, ordinal: i32) -> PyResult<(String, u32)> {
    let summary = py.detach(|| cuda::device_summary(ordinal)).map_err(to_py)?;
    Ok((summary.name, summary.arch))
}

/// Compiles every kernel source for `sm_{arch}`: a list of `(source, cubin bytes, log)`.
#[pyfunction]
#[pyo3(signature = (arch, *, verbose=false))]
pub(crate) fn cuda_compile_all(
    py: Python<'_>,
    arch: u32,
    verbose: bool,
) -> PyResult<Vec<(String, usize, String)>> {
    py.detach(|| {
        SOURCES
            .iter()
            .map(|source| {
                cuda::compile(source, arch, verbose)
                    .map(|built| (built.source.to_string(), built.cubin.len(), built.log))
            })
            .collect::<crate::Result<Vec<_>>>()
    })
    .map_err(to_py)
}

/// A torch tensor as `sgpo_rs._cuda` describes it: `(data_ptr, dtype, shape, strides, device)`,
/// the dtype without its `torch.` prefix and the device as `str(tensor.device)`.
type TensorArg = (u64, String, Vec<usize>, Vec<i64>, String);

fn tensor((ptr, dtype, shape, strides, device): TensorArg) -> DeviceTensor {
    DeviceTensor {
        ptr,
        dtype,
        shape,
        strides,
        device,
    }
}

/// The selective log-softmax forward; every tensor is described ([`TensorArg`]) and checked by
/// [`logprob::selective_logprobs`] before the launch.
#[pyfunction]
#[pyo3(signature = (stream_handle, logits, targets, temperature, logp, entropy, status, stats=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_selective_logprobs(
    py: Python<'_>,
    stream_handle: u64,
    logits: TensorArg,
    targets: TensorArg,
    temperature: f64,
    logp: TensorArg,
    entropy: Option<TensorArg>,
    status: TensorArg,
    stats: Option<TensorArg>,
) -> PyResult<()> {
    let [logits, targets, logp, status] = [logits, targets, logp, status].map(tensor);
    let (entropy, stats) = (entropy.map(tensor), stats.map(tensor));
    let tensors = logprob::ForwardTensors {
        logits: &logits,
        targets: &targets,
        logp: &logp,
        entropy: entropy.as_ref(),
        stats: stats.as_ref(),
        status: &status,
    };
    py.detach(|| logprob::selective_logprobs(stream_handle, &tensors, temperature))
        .map_err(to_py)
}

/// The selective log-softmax backward (`dlogits`: dense, the logits tensor itself - in place - or a
/// tensor of their shape in any layout with disjoint rows).
#[pyfunction]
#[pyo3(signature = (stream_handle, logits, targets, temperature, grad_logp, grad_entropy, dlogits, status, stats=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_selective_logprobs_backward(
    py: Python<'_>,
    stream_handle: u64,
    logits: TensorArg,
    targets: TensorArg,
    temperature: f64,
    grad_logp: TensorArg,
    grad_entropy: Option<TensorArg>,
    dlogits: TensorArg,
    status: TensorArg,
    stats: Option<TensorArg>,
) -> PyResult<()> {
    let [logits, targets, grad_logp, dlogits, status] =
        [logits, targets, grad_logp, dlogits, status].map(tensor);
    let (grad_entropy, stats) = (grad_entropy.map(tensor), stats.map(tensor));
    let tensors = logprob::BackwardTensors {
        logits: &logits,
        targets: &targets,
        grad_logp: &grad_logp,
        grad_entropy: grad_entropy.as_ref(),
        stats: stats.as_ref(),
        dlogits: &dlogits,
        status: &status,
    };
    py.detach(|| logprob::selective_logprobs_backward(stream_handle, &tensors, temperature))
        .map_err(to_py)
}

/// float64 elements of the loss workspace for `(batch, len)`.
#[pyfunction]
pub(crate) fn cuda_loss_workspace_len(batch: usize, len: usize) -> usize {
    loss::workspace_len(batch, len)
}

/// Launches the fused loss; returns the metric names and their slots in `out`. Every tensor
/// comes described (see [`TensorArg`]) and is checked by [`loss::LossTensors::check`] first.
#[pyfunction]
#[pyo3(signature = (stream_handle, logp, old_logp, ref_logp, advantages, mask, options, grad, workspace, out, status))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_policy_loss(
    py: Python<'_>,
    stream_handle: u64,
    logp: TensorArg,
    old_logp: Option<TensorArg>,
    ref_logp: Option<TensorArg>,
    advantages: TensorArg,
    mask: TensorArg,
    options: LossOptionArgs,
    grad: TensorArg,
    workspace: TensorArg,
    out: TensorArg,
    status: TensorArg,
) -> PyResult<Vec<(&'static str, usize)>> {
    let [logp, advantages, mask, grad, workspace, out, status] =
        [logp, advantages, mask, grad, workspace, out, status].map(tensor);
    let (old_logp, ref_logp) = (old_logp.map(tensor), ref_logp.map(tensor));
    let tensors = loss::LossTensors {
        logp: &logp,
        old_logp: old_logp.as_ref(),
        ref_logp: ref_logp.as_ref(),
        advantages: &advantages,
        mask: &mask,
        grad: &grad,
        workspace: &workspace,
        out: &out,
        status: &status,
    };
    let len = logp.shape.get(1).copied().unwrap_or(0);
    let options = options.resolve(len)?;
    let (stream, inputs, buffers) = tensors.check(&options, stream_handle).map_err(to_py)?;
    py.detach(|| loss::policy_loss(&stream, &inputs, &options, &buffers))
        .map_err(to_py)?;
    Ok(loss::metric_slots(&options))
}

/// Groups as Python passes them: `group_size` (consecutive rows) or `(order, starts)` built
/// from the ids on the device.
type GroupArgs = (Option<usize>, Option<(TensorArg, TensorArg)>);

fn group_tensors(
    groups: GroupArgs,
    ids: &Option<(DeviceTensor, DeviceTensor)>,
) -> PyResult<groups::GroupTensors<'_>> {
    match (groups.0, ids) {
        (Some(size), None) => Ok(groups::GroupTensors::Consecutive(size)),
        (None, Some((order, starts))) => Ok(groups::GroupTensors::Ids { order, starts }),
        _ => Err(to_py(crate::Error::value(
            "group_size",
            "give group_size (consecutive rows, TRL) or group_ids (one id per row, verl)",
        ))),
    }
}

/// float64 elements of the rewards' scratch for `num_groups` groups.
#[pyfunction]
pub(crate) fn cuda_reward_scratch_len(num_groups: usize) -> usize {
    groups::reward_scratch_len(num_groups)
}

/// The SGPO reward rule; every tensor is described and checked by [`groups::sgpo_rewards`].
#[pyfunction]
#[pyo3(signature = (stream_handle, groups, rewards, first_error, num_steps, credit, correct, credit_scale, mode, out_rewards, out_credit, out_all_negative, out_diversified, out_stats, scratch, status, rule="prefix", beta=5.0, gamma=0.5))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_sgpo_rewards(
    py: Python<'_>,
    stream_handle: u64,
    groups: GroupArgs,
    rewards: TensorArg,
    first_error: Option<TensorArg>,
    num_steps: Option<TensorArg>,
    credit: Option<TensorArg>,
    correct: Option<TensorArg>,
    credit_scale: f64,
    mode: &str,
    out_rewards: TensorArg,
    out_credit: TensorArg,
    out_all_negative: TensorArg,
    out_diversified: TensorArg,
    out_stats: TensorArg,
    scratch: TensorArg,
    status: TensorArg,
    rule: &str,
    beta: f64,
    gamma: f64,
) -> PyResult<()> {
    let options = RewardOptions {
        credit_scale,
        mode: DiversifyMode::parse(mode).map_err(to_py)?,
        rule: CreditRule::parse(rule, beta, gamma).map_err(to_py)?,
    };
    let [rewards, out_rewards, out_credit, all_negative, diversified, stats, scratch, status] = [
        rewards,
        out_rewards,
        out_credit,
        out_all_negative,
        out_diversified,
        out_stats,
        scratch,
        status,
    ]
    .map(tensor);
    let [first_error, num_steps, credit, correct] =
        [first_error, num_steps, credit, correct].map(|t| t.map(tensor));
    let ids = groups.1.clone().map(|(o, s)| (tensor(o), tensor(s)));
    let groups = group_tensors(groups, &ids)?;
    let tensors = groups::RewardTensors {
        rewards: &rewards,
        first_error: first_error.as_ref(),
        num_steps: num_steps.as_ref(),
        credit: credit.as_ref(),
        correct: correct.as_ref(),
        out_rewards: &out_rewards,
        out_credit: &out_credit,
        all_negative: &all_negative,
        diversified: &diversified,
        stats: &stats,
        scratch: &scratch,
        status: &status,
    };
    py.detach(|| groups::sgpo_rewards(stream_handle, groups, &tensors, options))
        .map_err(to_py)
}

/// Group-normalised advantages; every tensor is described and checked by
/// [`groups::group_advantages`].
#[pyfunction]
#[pyo3(signature = (stream_handle, groups, rewards, scale, eps, singleton, out, scratch, status))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_group_advantages(
    py: Python<'_>,
    stream_handle: u64,
    groups: GroupArgs,
    rewards: TensorArg,
    scale: &str,
    eps: f64,
    singleton: &str,
    out: TensorArg,
    scratch: TensorArg,
    status: TensorArg,
) -> PyResult<()> {
    let options = AdvantageOptions {
        scale: Scale::parse(scale).map_err(to_py)?,
        eps,
        singleton: Singleton::parse(singleton).map_err(to_py)?,
    };
    let [rewards, out, scratch, status] = [rewards, out, scratch, status].map(tensor);
    let ids = groups.1.clone().map(|(o, s)| (tensor(o), tensor(s)));
    let groups = group_tensors(groups, &ids)?;
    py.detach(|| {
        groups::group_advantages(
            stream_handle,
            groups,
            &rewards,
            options,
            &out,
            &scratch,
            &status,
        )
    })
    .map_err(to_py)
}

/// `advantages[:, None] * mask`; every tensor is described and checked by
/// [`groups::token_advantages`].
#[pyfunction]
#[pyo3(signature = (stream_handle, advantages, mask, out, status))]
pub(crate) fn cuda_token_advantages(
    py: Python<'_>,
    stream_handle: u64,
    advantages: TensorArg,
    mask: TensorArg,
    out: TensorArg,
    status: TensorArg,
) -> PyResult<()> {
    let [advantages, mask, out, status] = [advantages, mask, out, status].map(tensor);
    py.detach(|| groups::token_advantages(stream_handle, &advantages, &mask, &out, &status))
        .map_err(to_py)
}

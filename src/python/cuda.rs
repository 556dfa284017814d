//! Binding of [`crate::cuda`]: the CUDA kernels on raw device pointers. Python (`sgpo_rs._cuda`)
//! allocates every output with torch on the input's device, passes `tensor.data_ptr()` and the
//! current stream's handle, and reads the status buffer afterwards. These functions only
//! translate; launches are asynchronous and release the GIL.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::to_py;
use super::loss::LossOptionArgs;
use crate::advantages::{AdvantageOptions, Scale, Singleton};
use crate::cuda::{self, groups, logprob, loss, FloatDtype, MaskDtype, Stream, SOURCES};
use crate::rewards::{CreditRule, DiversifyMode, RewardOptions};

/// The kernels' status bits by name (`NONFINITE_INPUT`, `OVERFLOW`, ...), from
/// [`cuda::status::BITS`]: the host code reads them from here instead of repeating them.
#[pyfunction]
pub(crate) fn cuda_status_bits(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, bit) in cuda::status::BITS {
        out.set_item(*name, *bit)?;
    }
    Ok(out)
}

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

fn stream(device: i32, handle: u64) -> Stream {
    Stream { device, handle }
}

/// A logits tensor as Python describes it: `(data_ptr, dtype, rows, vocab, row_stride,
/// group_rows, group_stride)` (see [`logprob::Logits`]).
type LogitsLayout = (u64, String, usize, usize, usize, usize, usize);

fn logits_view(layout: LogitsLayout) -> PyResult<logprob::Logits> {
    let (ptr, dtype, rows, vocab, row_stride, group_rows, group_stride) = layout;
    Ok(logprob::Logits {
        ptr,
        dtype: FloatDtype::parse("logits", &dtype).map_err(to_py)?,
        rows,
        vocab,
        row_stride,
        group_rows,
        group_stride,
    })
}

#[pyfunction]
#[pyo3(signature = (device, stream_handle, logits, targets, temperature, logp, entropy, status, stats=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_selective_logprobs(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    logits: LogitsLayout,
    targets: u64,
    temperature: f64,
    logp: u64,
    entropy: Option<u64>,
    status: u64,
    stats: Option<u64>,
) -> PyResult<()> {
    let view = logits_view(logits)?;
    let s = stream(device, stream_handle);
    py.detach(|| {
        logprob::selective_logprobs(
            &s,
            &view,
            targets,
            temperature,
            logp,
            entropy,
            stats,
            status,
        )
    })
    .map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (device, stream_handle, logits, targets, temperature, grad_logp, grad_entropy, dlogits, out_stride, status, stats=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_selective_logprobs_backward(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    logits: LogitsLayout,
    targets: u64,
    temperature: f64,
    grad_logp: u64,
    grad_entropy: Option<u64>,
    dlogits: u64,
    out_stride: usize,
    status: u64,
    stats: Option<u64>,
) -> PyResult<()> {
    let view = logits_view(logits)?;
    let s = stream(device, stream_handle);
    py.detach(|| {
        logprob::selective_logprobs_backward(
            &s,
            &view,
            targets,
            temperature,
            stats,
            grad_logp,
            grad_entropy,
            dlogits,
            out_stride,
            status,
        )
    })
    .map_err(to_py)
}

/// float64 elements of the loss workspace for `(batch, len)`.
#[pyfunction]
pub(crate) fn cuda_loss_workspace_len(batch: usize, len: usize) -> usize {
    loss::workspace_len(batch, len)
}

/// Launches the fused loss; returns the metric names and their slots in `out`.
#[pyfunction]
#[pyo3(signature = (device, stream_handle, logp, old_logp, ref_logp, advantages, advantages_per_token, mask, dtype, mask_dtype, batch, len, options, grad, workspace, out, status))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_policy_loss(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    logp: u64,
    old_logp: u64,
    ref_logp: u64,
    advantages: u64,
    advantages_per_token: bool,
    mask: u64,
    dtype: &str,
    mask_dtype: &str,
    batch: usize,
    len: usize,
    options: LossOptionArgs,
    grad: u64,
    workspace: u64,
    out: u64,
    status: u64,
) -> PyResult<Vec<(&'static str, usize)>> {
    let options = options.resolve(len)?;
    let inputs = loss::DeviceLossInputs {
        logp,
        old_logp,
        ref_logp,
        advantages,
        advantages_per_token,
        mask,
        dtype: FloatDtype::parse("logp", dtype).map_err(to_py)?,
        mask_dtype: MaskDtype::parse(mask_dtype).map_err(to_py)?,
        batch,
        len,
    };
    let buffers = loss::DeviceLossBuffers {
        grad,
        workspace,
        out,
        status,
    };
    let s = stream(device, stream_handle);
    py.detach(|| loss::policy_loss(&s, &inputs, &options, &buffers))
        .map_err(to_py)?;
    Ok(loss::metric_slots(&options))
}

fn device_groups(
    rows: usize,
    num_groups: usize,
    group_size: usize,
    order: u64,
    starts: u64,
) -> groups::DeviceGroups {
    groups::DeviceGroups {
        rows,
        num_groups,
        group_size,
        order,
        starts,
    }
}

/// float64 elements of the rewards' scratch for `num_groups` groups.
#[pyfunction]
pub(crate) fn cuda_reward_scratch_len(num_groups: usize) -> usize {
    groups::reward_scratch_len(num_groups)
}

#[pyfunction]
#[pyo3(signature = (device, stream_handle, rows, num_groups, group_size, order, starts, rewards, first_error, num_steps, credit, correct, credit_scale, mode, out_rewards, out_credit, out_all_negative, out_diversified, out_stats, scratch, status, rule="prefix", beta=5.0, gamma=0.5))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_sgpo_rewards(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    rows: usize,
    num_groups: usize,
    group_size: usize,
    order: u64,
    starts: u64,
    rewards: u64,
    first_error: u64,
    num_steps: u64,
    credit: u64,
    correct: u64,
    credit_scale: f64,
    mode: &str,
    out_rewards: u64,
    out_credit: u64,
    out_all_negative: u64,
    out_diversified: u64,
    out_stats: u64,
    scratch: u64,
    status: u64,
    rule: &str,
    beta: f64,
    gamma: f64,
) -> PyResult<()> {
    let verdicts = if credit != 0 {
        groups::DeviceVerdicts::Credit(credit)
    } else {
        groups::DeviceVerdicts::Steps {
            first_error,
            num_steps,
        }
    };
    let options = RewardOptions {
        credit_scale,
        mode: DiversifyMode::parse(mode).map_err(to_py)?,
        rule: CreditRule::parse(rule, beta, gamma).map_err(to_py)?,
    };
    let outputs = groups::DeviceRewardOutputs {
        rewards: out_rewards,
        credit: out_credit,
        all_negative: out_all_negative,
        diversified: out_diversified,
        stats: out_stats,
        scratch,
        status,
    };
    let g = device_groups(rows, num_groups, group_size, order, starts);
    let s = stream(device, stream_handle);
    py.detach(|| groups::sgpo_rewards(&s, &g, rewards, verdicts, correct, options, &outputs))
        .map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (device, stream_handle, rows, num_groups, group_size, order, starts, rewards, scale, eps, singleton, out, scratch, status))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_group_advantages(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    rows: usize,
    num_groups: usize,
    group_size: usize,
    order: u64,
    starts: u64,
    rewards: u64,
    scale: &str,
    eps: f64,
    singleton: &str,
    out: u64,
    scratch: u64,
    status: u64,
) -> PyResult<()> {
    let options = AdvantageOptions {
        scale: Scale::parse(scale).map_err(to_py)?,
        eps,
        singleton: Singleton::parse(singleton).map_err(to_py)?,
    };
    let g = device_groups(rows, num_groups, group_size, order, starts);
    let s = stream(device, stream_handle);
    py.detach(|| groups::group_advantages(&s, &g, rewards, options, out, scratch, status))
        .map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (device, stream_handle, advantages, mask, mask_dtype, rows, len, out, status))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_token_advantages(
    py: Python<'_>,
    device: i32,
    stream_handle: u64,
    advantages: u64,
    mask: u64,
    mask_dtype: &str,
    rows: usize,
    len: usize,
    out: u64,
    status: u64,
) -> PyResult<()> {
    let mask_dtype = MaskDtype::parse(mask_dtype).map_err(to_py)?;
    let s = stream(device, stream_handle);
    py.detach(|| groups::token_advantages(&s, advantages, mask, mask_dtype, rows, len, out, status))
        .map_err(to_py)
}

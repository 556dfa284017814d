//! pyo3 bindings: the `sgpo_rs._core` extension module. Array conversion, error mapping and GIL
//! release only; the math lives in the engine modules. The public, documented API is the Python
//! package `sgpo_rs`, which normalises arguments and calls these functions.

mod advantages;
mod arrays;
mod buffers;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod errors;
mod logprob;
mod loss;
mod outcome;
mod rewards;
mod text;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(rewards::sgpo_rewards_core, m)?)?;
    m.add_function(wrap_pyfunction!(rewards::credit_rule_apply, m)?)?;
    m.add_function(wrap_pyfunction!(advantages::group_advantages_core, m)?)?;
    m.add_function(wrap_pyfunction!(advantages::token_advantages_core, m)?)?;
    m.add_function(wrap_pyfunction!(outcome::sequence_scores_core, m)?)?;
    m.add_function(wrap_pyfunction!(outcome::outcome_advantages_core, m)?)?;
    m.add_function(wrap_pyfunction!(loss::policy_loss_core, m)?)?;
    m.add_function(wrap_pyfunction!(loss::loss_option_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(loss::loss_types, m)?)?;
    m.add_function(wrap_pyfunction!(logprob::selective_logprobs_core, m)?)?;
    m.add_function(wrap_pyfunction!(
        logprob::selective_logprobs_backward_core,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(text::split_steps, m)?)?;
    m.add_function(wrap_pyfunction!(text::step_spans, m)?)?;
    m.add_function(wrap_pyfunction!(text::split_steps_batch, m)?)?;
    m.add_function(wrap_pyfunction!(text::parse_verdict, m)?)?;
    m.add_function(wrap_pyfunction!(text::parse_verdict_batch, m)?)?;
    m.add_function(wrap_pyfunction!(text::first_error_from_scores, m)?)?;
    m.add_function(wrap_pyfunction!(cpu::simd_level_name, m)?)?;
    m.add_function(wrap_pyfunction!(cpu::cpu_simd_level_name, m)?)?;
    m.add_function(wrap_pyfunction!(cpu::set_simd_level, m)?)?;
    m.add("cuda_built", cfg!(feature = "cuda"))?;
    #[cfg(feature = "cuda")]
    {
        m.add_function(wrap_pyfunction!(cuda::cuda_availability, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_device, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_compile_all, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_selective_logprobs, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_selective_logprobs_backward, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_loss_workspace_len, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_policy_loss, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_reward_scratch_len, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_sgpo_rewards, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_group_advantages, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_token_advantages, m)?)?;
    }
    Ok(())
}

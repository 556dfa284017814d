//! The kernel sources, embedded in the library. Each is compiled with `kernels/common.cuh`
//! prepended (NVRTC is given no include path).

/// One `.cu` file and the kernels it defines (checked after each compile).
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub code: &'static str,
    /// Every `extern "C"` kernel of the file.
    pub kernels: &'static [&'static str],
    /// Preprocessor lines compiled ahead of the file: constants whose one definition lives in
    /// Rust (the loss-type codes of the registry).
    pub defines: fn() -> String,
}

/// No generated constants.
pub fn no_defines() -> String {
    String::new()
}

pub(crate) const COMMON: &str = include_str!("../../kernels/common.cuh");

pub const LOGPROB: KernelSource = KernelSource {
    name: "logprob.cu",
    code: include_str!("../../kernels/logprob.cu"),
    defines: no_defines,
    kernels: &[
        "logprob_forward_f32",
        "logprob_forward_bf16",
        "logprob_forward_f16",
        "logprob_backward_f32",
        "logprob_backward_bf16",
        "logprob_backward_f16",
    ],
};

pub const LOSS: KernelSource = KernelSource {
    name: "loss.cu",
    code: include_str!("../../kernels/loss.cu"),
    defines: crate::loss::registry::cuda_defines,
    kernels: &[
        "loss_rows_f32_u8",
        "loss_rows_f32_f32",
        "loss_rows_bf16_u8",
        "loss_rows_bf16_f32",
        "loss_rows_f16_u8",
        "loss_rows_f16_f32",
        "loss_batch",
        "loss_tokens_f32_u8",
        "loss_tokens32_f32_u8",
        "loss_tokens32_rest_f32_u8",
        "loss_tokens_f32_f32",
        "loss_tokens32_f32_f32",
        "loss_tokens32_rest_f32_f32",
        "loss_tokens_bf16_u8",
        "loss_tokens32_bf16_u8",
        "loss_tokens32_rest_bf16_u8",
        "loss_tokens_bf16_f32",
        "loss_tokens32_bf16_f32",
        "loss_tokens32_rest_bf16_f32",
        "loss_tokens_f16_u8",
        "loss_tokens32_f16_u8",
        "loss_tokens32_rest_f16_u8",
        "loss_tokens_f16_f32",
        "loss_tokens32_f16_f32",
        "loss_tokens32_rest_f16_f32",
        "loss_finalize_rows",
        "loss_finalize",
    ],
};

pub const GROUPS: KernelSource = KernelSource {
    name: "groups.cu",
    code: include_str!("../../kernels/groups.cu"),
    defines: no_defines,
    kernels: &[
        "sgpo_rewards_groups",
        "sgpo_rewards_stats",
        "batch_std",
        "group_advantages",
        "token_advantages_u8",
        "token_advantages_f32",
    ],
};

/// Every kernel source of the library.
pub const SOURCES: &[KernelSource] = &[LOGPROB, LOSS, GROUPS];

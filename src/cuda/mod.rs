//! The CUDA path: the kernels in `kernels/*.cu`, compiled at run time with NVRTC for the device's
//! own architecture, loaded into the primary context torch also uses, and launched on the
//! caller's stream on raw device pointers (zero copy, no synchronisation added).
//!
//! Nothing here links CUDA: cudarc opens `libcuda` and `libnvrtc` on first use, and every entry
//! point first checks that they exist, so a machine without CUDA gets [`Error::Cuda`] (a Python
//! `RuntimeError`) instead of a crash. Each kernel has a CPU twin in the engine (`crate::logprob`,
//! `crate::loss`, ...), which is its test oracle.
//!
//! Every entry point takes its tensors as [`DeviceTensor`] descriptions and checks them (shapes
//! by the CPU path's own rules, devices, layouts, buffer sizes) before it launches anything; see
//! [`tensor`]. Input errors only the values reveal (NaN at an unmasked token, a target outside
//! the vocabulary) are written into a small status buffer that the caller reads after the
//! launches; see [`status`].

mod args;
mod device;
#[cfg(feature = "emulator")]
mod emulator;
pub mod groups;
mod library;
pub mod logprob;
pub mod loss;
mod nvrtc;
mod source;
pub mod status;
pub mod tensor;

pub use device::{device_summary, DeviceSummary, Stream};
pub use library::{availability, Availability};
pub use nvrtc::{compile, CompiledKernel};
pub use source::{KernelSource, SOURCES};
pub use tensor::DeviceTensor;

use crate::error::{Error, Result};

/// Element types the kernels read for floating-point inputs (`float32`, `bfloat16`, `float16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    Bf16,
    F16,
}

impl FloatDtype {
    pub fn parse(arg: &'static str, name: &str) -> Result<Self> {
        match name {
            "float32" => Ok(FloatDtype::F32),
            "bfloat16" => Ok(FloatDtype::Bf16),
            "float16" => Ok(FloatDtype::F16),
            other => Err(Error::Dtype {
                arg,
                expected: "float32, bfloat16 or float16 on CUDA".into(),
                got: other.to_string(),
            }),
        }
    }

    /// The suffix of the kernel instantiated for this type.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            FloatDtype::F32 => "f32",
            FloatDtype::Bf16 => "bf16",
            FloatDtype::F16 => "f16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::Bf16 | FloatDtype::F16 => 2,
        }
    }
}

/// Element types the kernels read for masks: one byte (`bool`, `uint8`) or `float32` weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskDtype {
    U8,
    F32,
}

impl MaskDtype {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "bool" | "uint8" => Ok(MaskDtype::U8),
            "float32" => Ok(MaskDtype::F32),
            other => Err(Error::Dtype {
                arg: "mask",
                expected: "bool, uint8 or float32 on CUDA".into(),
                got: other.to_string(),
            }),
        }
    }

    pub(crate) fn suffix(self) -> &'static str {
        match self {
            MaskDtype::U8 => "u8",
            MaskDtype::F32 => "f32",
        }
    }
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol that could not be loaded) into
/// [`Error::Cuda`], so no panic reaches the caller.
pub(crate) fn guarded<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".to_string());
            Err(Error::Cuda(format!("the CUDA libraries failed: {message}")))
        }
    }
}

//! The status buffer the kernels report input errors into: 16 bytes on the device, `[bits: u32,
//! unused: u32, !first: u64]`, all zeros before the launches (a device-side memset, no host
//! copy). The bits are the `STATUS_*` constants of `kernels/common.cuh`; the last word holds the
//! bitwise complement of the smallest flat index (row, or `row * T + t`) that raised one, or 0
//! when none did. The caller reads it after the launches and raises the error the CPU path would
//! have raised.

pub const NONFINITE_INPUT: u32 = 1;
pub const BAD_MASK: u32 = 2;
pub const BAD_TARGET: u32 = 4;
pub const EMPTY_ROW: u32 = 8;
pub const OVERFLOW: u32 = 16;
pub const BAD_VERDICT: u32 = 32;
pub const BAD_CREDIT: u32 = 64;
pub const NONFINITE_REWARD: u32 = 128;

/// Bytes of the status buffer.
pub const BYTES: usize = 16;

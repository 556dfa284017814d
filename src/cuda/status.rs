//! The status buffer the kernels report input errors into: 16 bytes on the device, `[bits: u32,
//! unused: u32, !first: u64]`, all zeros before the launches (a device-side memset, no host
//! copy). The bits are [`BITS`] (`STATUS_*` in the kernels, defined from it); the last word holds the
//! bitwise complement of the smallest flat index (row, or `row * T + t`) that raised one, or 0
//! when none did. The caller reads it after the launches; when it is set, the CPU engine reruns
//! the call on host copies of the inputs and raises its own error.

/// Every status bit: its name (`STATUS_<NAME>` in the kernels) and value. The kernels' defines
/// are made from this table; the host only tests the word for zero (a set word reruns the call
/// on the CPU engine, which names the error).
pub const BITS: &[(&str, u32)] = &[
    ("NONFINITE_INPUT", NONFINITE_INPUT),
    ("BAD_MASK", BAD_MASK),
    ("BAD_TARGET", BAD_TARGET),
    ("EMPTY_ROW", EMPTY_ROW),
    ("OVERFLOW", OVERFLOW),
    ("BAD_VERDICT", BAD_VERDICT),
    ("BAD_CREDIT", BAD_CREDIT),
    ("NONFINITE_REWARD", NONFINITE_REWARD),
];

pub const NONFINITE_INPUT: u32 = 1;
pub const BAD_MASK: u32 = 2;
pub const BAD_TARGET: u32 = 4;
pub const EMPTY_ROW: u32 = 8;
pub const OVERFLOW: u32 = 16;
pub const BAD_VERDICT: u32 = 32;
pub const BAD_CREDIT: u32 = 64;
pub const NONFINITE_REWARD: u32 = 128;

/// The `#define STATUS_<NAME> <bit>u` lines every kernel source is compiled with.
pub fn cuda_defines() -> String {
    BITS.iter()
        .map(|(name, bit)| format!("#define STATUS_{name} {bit}u\n"))
        .collect()
}

/// Bytes of the status buffer.
pub const BYTES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_distinct_single_bits() {
        let mut seen = 0u32;
        for (name, bit) in BITS {
            assert_eq!(bit.count_ones(), 1, "{name}");
            assert_eq!(seen & bit, 0, "{name} repeats a bit");
            seen |= bit;
        }
        assert!(cuda_defines().contains("#define STATUS_OVERFLOW 16u\n"));
    }
}

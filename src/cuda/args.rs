//! Kernel arguments for `cuLaunchKernel`, which takes one pointer per parameter.

use std::ffi::c_void;

/// One kernel parameter, by value.
#[derive(Debug, Clone)]
pub enum Arg {
    /// A device pointer (0 for an absent optional input).
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    F64(f64),
    /// A `struct` passed by value, as its bytes (`#[repr(C)]` with no implicit padding).
    Struct(Vec<u8>),
}

/// The parameters in 8-byte-aligned storage that stays put while the launch reads it. A 4-byte
/// value sits in the low bytes of its slot, where a little-endian read of the parameter finds it.
pub(crate) struct ArgSlots {
    slots: Vec<Vec<u64>>,
}

impl ArgSlots {
    pub(crate) fn new(args: &[Arg]) -> Self {
        let slots = args
            .iter()
            .map(|arg| match arg {
                Arg::Ptr(p) => vec![*p],
                Arg::I64(v) => vec![*v as u64],
                Arg::I32(v) => vec![*v as u32 as u64],
                Arg::F32(v) => vec![v.to_bits() as u64],
                Arg::F64(v) => vec![v.to_bits()],
                Arg::Struct(bytes) => bytes
                    .chunks(8)
                    .map(|c| {
                        let mut word = [0u8; 8];
                        word[..c.len()].copy_from_slice(c);
                        u64::from_le_bytes(word)
                    })
                    .collect(),
            })
            .collect();
        ArgSlots { slots }
    }

    /// The pointer array `cuLaunchKernel` reads; valid while `self` is alive and unmoved.
    pub(crate) fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|slot| slot.as_mut_ptr() as *mut c_void)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sit_where_a_little_endian_read_finds_them() {
        let bytes: Vec<u8> = [3i64.to_le_bytes(), 2.5f64.to_le_bytes()].concat();
        let mut slots = ArgSlots::new(&[
            Arg::I32(-2),
            Arg::F32(1.5),
            Arg::Ptr(7),
            Arg::F64(0.25),
            Arg::Struct(bytes),
        ]);
        let ptrs = slots.pointers();
        // SAFETY: each pointer points at live, 8-byte-aligned storage of the right size.
        unsafe {
            assert_eq!(*(ptrs[0] as *const i32), -2);
            assert_eq!(*(ptrs[1] as *const f32), 1.5);
            assert_eq!(*(ptrs[2] as *const u64), 7);
            assert_eq!(*(ptrs[3] as *const f64), 0.25);
            assert_eq!(*(ptrs[4] as *const i64), 3);
            assert_eq!(*(ptrs[4] as *const f64).add(1), 2.5);
        }
    }
}

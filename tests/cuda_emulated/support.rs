//! What every entry point's tests share: host buffers placed at a chosen alignment and described
//! as CUDA tensors, the status word, element types, and the comparison rules.

use half::{bf16, f16};

use sgpo_rs::cuda::{status, DeviceTensor};
use sgpo_rs::elem::{FloatElem, MaskElem};

/// Where a buffer's first element lies: on a 16-byte boundary (the kernels may then use 16-byte
/// loads and stores, given rows of a multiple of four elements), or one element past one (every
/// row of it then starts off a boundary: the scalar paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    On16,
    Off16,
}

/// A host buffer at a chosen alignment: `data[offset..offset + len]` of a slightly larger
/// allocation, so the alignment is the test's choice, not the allocator's.
pub struct Placed<T> {
    storage: Vec<T>,
    offset: usize,
    len: usize,
}

impl<T: Copy> Placed<T> {
    pub fn new(values: &[T], align: Align) -> Self {
        assert!(
            !values.is_empty(),
            "an empty buffer has no alignment to choose"
        );
        let size = std::mem::size_of::<T>().max(1);
        let slack = 16 / size + 1;
        // The slack is never read by a kernel; it holds copies of the first value.
        let mut storage = vec![values[0]; values.len() + slack];
        let base = storage.as_ptr() as usize;
        let mut offset = (0..slack)
            .find(|k| (base + k * size).is_multiple_of(16))
            .expect("a 16-byte boundary within 16 bytes");
        if align == Align::Off16 {
            offset += 1;
        }
        storage[offset..offset + values.len()].copy_from_slice(values);
        Placed {
            storage,
            offset,
            len: values.len(),
        }
    }

    pub fn get(&self) -> &[T] {
        &self.storage[self.offset..self.offset + self.len]
    }

    pub fn get_mut(&mut self) -> &mut [T] {
        &mut self.storage[self.offset..self.offset + self.len]
    }

    /// A read-only input of `dtype`, contiguous with `shape`.
    pub fn input(&self, dtype: &str, shape: &[usize]) -> DeviceTensor {
        tensor(self.get().as_ptr() as u64, self.len, dtype, shape)
    }

    /// A buffer the kernels write, contiguous with `shape` (the pointer comes from a unique
    /// borrow).
    pub fn output(&mut self, dtype: &str, shape: &[usize]) -> DeviceTensor {
        let len = self.len;
        tensor(self.get_mut().as_mut_ptr() as u64, len, dtype, shape)
    }
}

/// A contiguous CUDA tensor of `numel` elements at `ptr`.
pub fn tensor(ptr: u64, numel: usize, dtype: &str, shape: &[usize]) -> DeviceTensor {
    assert_eq!(shape.iter().product::<usize>(), numel, "shape of {dtype}");
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1] as i64;
    }
    strided(ptr, dtype, shape, &strides)
}

/// A CUDA tensor with explicit strides (in elements), as torch describes a view.
pub fn strided(ptr: u64, dtype: &str, shape: &[usize], strides: &[i64]) -> DeviceTensor {
    DeviceTensor {
        ptr,
        dtype: dtype.to_string(),
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        device: "cuda:0".to_string(),
    }
}

/// A read-only contiguous input straight from a slice (its allocator's alignment).
pub fn input<T>(data: &[T], dtype: &str, shape: &[usize]) -> DeviceTensor {
    tensor(data.as_ptr() as u64, data.len(), dtype, shape)
}

/// A contiguous output buffer straight from a slice.
pub fn output<T>(data: &mut [T], dtype: &str, shape: &[usize]) -> DeviceTensor {
    tensor(data.as_mut_ptr() as u64, data.len(), dtype, shape)
}

/// The status buffer (two int64 words, zeros before the launches, as torch allocates it):
/// `[bits, !first offending flat index]`.
pub struct Status([u64; status::BYTES / 8]);

impl Status {
    pub fn new() -> Self {
        Status([0; status::BYTES / 8])
    }

    pub fn tensor(&mut self) -> DeviceTensor {
        output(&mut self.0, "int64", &[2])
    }

    pub fn bits(&self) -> u32 {
        self.0[0] as u32
    }

    /// The smallest flat index a kernel reported, if one did.
    pub fn first(&self) -> Option<u64> {
        (self.0[1] != 0).then_some(!self.0[1])
    }

    pub fn assert_clean(&self, what: &str) {
        assert_eq!(self.0, [0, 0], "{what}: status set on clean inputs");
    }
}

/// The floating-point element types the kernels read (`FloatElem::DTYPE` is torch's name).
pub trait Float: FloatElem + Copy + std::fmt::Debug {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Units in the last place of this format between `a` and `b`.
    fn ulps(a: Self, b: Self) -> u64;
}

impl Float for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn ulps(a: Self, b: Self) -> u64 {
        ulps_f32(a, b)
    }
}

impl Float for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn ulps(a: Self, b: Self) -> u64 {
        ulps_16(a.to_bits(), b.to_bits())
    }
}

impl Float for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn ulps(a: Self, b: Self) -> u64 {
        ulps_16(a.to_bits(), b.to_bits())
    }
}

/// `values` rounded to `T` and back: what the kernels and the CPU engine both read.
pub fn rounded<T: Float>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&x| T::from_f32(x)).collect()
}

/// The mask element types the kernels read (`MaskElem::DTYPE` is torch's name).
pub trait Mask: MaskElem + Copy {
    /// The element holding weight `w` (bool: `w != 0`; uint8: `w` truncated).
    fn from_weight(w: f32) -> Self;
}

impl Mask for bool {
    fn from_weight(w: f32) -> Self {
        w != 0.0
    }
}

impl Mask for u8 {
    fn from_weight(w: f32) -> Self {
        w as u8
    }
}

impl Mask for f32 {
    fn from_weight(w: f32) -> Self {
        w
    }
}

/// Which element type a case uses, as data (dispatched to a generic runner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskDtype {
    Bool,
    U8,
    F32,
}

impl MaskDtype {
    /// Weights a random mask of this type draws its unmasked tokens from.
    pub fn weights(self) -> &'static [f32] {
        match self {
            MaskDtype::Bool => &[1.0],
            MaskDtype::U8 => &[1.0, 2.0, 3.0],
            MaskDtype::F32 => &[1.0, 0.5, 2.0, 0.25],
        }
    }
}

/// How many float32 units in the last place apart two values are (0 for equal values, NaNs
/// compare as far apart).
pub fn ulps_f32(a: f32, b: f32) -> u64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 {
            i32::MIN as i64 - bits as i64
        } else {
            bits as i64
        }
    };
    key(a).abs_diff(key(b))
}

/// The same for a 16-bit float format given by its bits.
pub fn ulps_16(a: u16, b: u16) -> u64 {
    let key = |x: u16| {
        let bits = x as i16;
        if bits < 0 {
            i16::MIN as i64 - bits as i64
        } else {
            bits as i64
        }
    };
    key(a).abs_diff(key(b))
}

/// Asserts `|got - want| <= tol` (equal infinities and two NaNs count as equal).
#[track_caller]
pub fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    let same = got == want || (got.is_nan() && want.is_nan()) || (got - want).abs() <= tol;
    assert!(
        same,
        "{what}: got {got:e}, want {want:e} (|diff| {:e} > tol {tol:e})",
        (got - want).abs()
    );
}

/// Asserts what a bad input must cause on both sides: the CPU engine raises an error naming
/// `arg` (its message starts with the argument's name), and the kernels set `bit` in the status
/// with `first` as the smallest offending index (flat token index, or row).
#[track_caller]
pub fn assert_both_raise<T, E: std::fmt::Display>(
    what: &str,
    cpu: Result<T, E>,
    status: &Status,
    arg: &str,
    bit: u32,
    first: u64,
) {
    let err = match cpu {
        Ok(_) => panic!("{what}: the CPU engine accepted it"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!("{arg}:")),
        "{what}: the CPU error {err:?} does not name {arg}"
    );
    assert_eq!(
        status.bits() & bit,
        bit,
        "{what}: status bits {:#x}",
        status.bits()
    );
    assert_eq!(status.first(), Some(first), "{what}: first offending index");
}

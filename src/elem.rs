//! Element types the kernels read. Log-probabilities come as f32, f64, bf16 or f16 and are upcast
//! in registers; masks come as bool, integers or floats (TRL passes int64, verl float) and act as
//! token weights.

use half::{bf16, f16};

/// A slice of floating-point elements as the concrete type it holds: kernels specialised per
/// element type (SIMD code) match on it instead of casting through `TypeId`.
pub enum FloatSlice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// A floating-point input element (log-probabilities, advantages).
pub trait FloatElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    /// `s` as its concrete element type.
    fn view(s: &[Self]) -> FloatSlice<'_>;
    /// Whether every value is exactly a float32 (f32, bf16, f16): the loss may then compute in
    /// float32 lanes (f64 inputs keep the float64 path).
    const FITS_F32: bool;
    fn to_f64(self) -> f64;
    /// `src` as float32: `src` itself for f32, else converted into `buf` (same length).
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
}

impl FloatElem for f32 {
    #[inline(always)]
    fn view(s: &[Self]) -> FloatSlice<'_> {
        FloatSlice::F32(s)
    }
    const DTYPE: &'static str = "float32";
    const FITS_F32: bool = true;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn as_f32<'a>(src: &'a [Self], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl FloatElem for f64 {
    #[inline(always)]
    fn view(s: &[Self]) -> FloatSlice<'_> {
        FloatSlice::F64(s)
    }
    const DTYPE: &'static str = "float64";
    const FITS_F32: bool = false;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    /// Rounds to float32 (the loss never asks: f64 inputs keep the float64 path).
    #[inline(always)]
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        for (o, &x) in buf.iter_mut().zip(src) {
            *o = x as f32;
        }
        &buf[..src.len()]
    }
}

impl FloatElem for bf16 {
    #[inline(always)]
    fn view(s: &[Self]) -> FloatSlice<'_> {
        FloatSlice::Bf16(s)
    }
    const DTYPE: &'static str = "bfloat16";
    const FITS_F32: bool = true;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        // bf16 -> f32 is a shift; f32 -> f64 is exact.
        self.to_f32() as f64
    }
    #[inline(always)]
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        // The shift by hand (not `bf16::to_f32`, which keeps NaN quiet with a branch), so the
        // loop vectorises; every unmasked input is checked for finiteness afterwards anyway.
        for (o, &x) in buf.iter_mut().zip(src) {
            *o = f32::from_bits((x.to_bits() as u32) << 16);
        }
        &buf[..src.len()]
    }
}

impl FloatElem for f16 {
    #[inline(always)]
    fn view(s: &[Self]) -> FloatSlice<'_> {
        FloatSlice::F16(s)
    }
    const DTYPE: &'static str = "float16";
    const FITS_F32: bool = true;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
    #[inline(always)]
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        // half's slice conversion uses F16C where the CPU has it.
        let buf = &mut buf[..src.len()];
        src.convert_to_f32_slice(buf);
        buf
    }
}

/// A mask element: the weight a token carries (0 = padding).
pub trait MaskElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    /// The token's weight as f32.
    fn weight(self) -> f32;
    /// Whether any value of this type can be NaN, infinite or negative (so it must be checked).
    const NEEDS_CHECK: bool;
    /// Whether every weight is 0 or 1 (bool masks): weighted counts are then plain counts.
    const BINARY: bool = false;
    /// The mask as bytes of value 0 or 1, where the type is stored so (bool), for kernels that
    /// read it without converting each element.
    #[inline(always)]
    fn as_bytes(_mask: &[Self]) -> Option<&[u8]> {
        None
    }
}

macro_rules! int_mask {
    ($($ty:ty => $name:literal),*) => {$(
        impl MaskElem for $ty {
            const DTYPE: &'static str = $name;
            const NEEDS_CHECK: bool = true;
            #[inline(always)]
            fn weight(self) -> f32 {
                self as f32
            }
        }
    )*};
}

int_mask!(u8 => "uint8", i32 => "int32", i64 => "int64", f32 => "float32");

impl MaskElem for f64 {
    const DTYPE: &'static str = "float64";
    const NEEDS_CHECK: bool = true;
    #[inline(always)]
    fn weight(self) -> f32 {
        self as f32
    }
}

impl MaskElem for bool {
    const DTYPE: &'static str = "bool";
    const NEEDS_CHECK: bool = false;
    const BINARY: bool = true;
    #[inline(always)]
    fn as_bytes(mask: &[Self]) -> Option<&[u8]> {
        // SAFETY: a bool is one byte holding 0 or 1, so the slice reads as that many bytes.
        Some(unsafe { std::slice::from_raw_parts(mask.as_ptr().cast::<u8>(), mask.len()) })
    }
    #[inline(always)]
    fn weight(self) -> f32 {
        if self {
            1.0
        } else {
            0.0
        }
    }
}

/// Whether a mask weight is usable: finite and not negative.
#[inline(always)]
pub(crate) fn is_valid_weight(w: f32) -> bool {
    w.is_finite() && w >= 0.0
}

/// A mutable slice of output elements as the concrete type it holds (see [`FloatSlice`]).
pub enum GradSliceMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

/// A gradient element a backward writes: float32, float64, or a half type (rounded to nearest
/// even, as torch's casts).
pub trait GradElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    fn from_f64(value: f64) -> Self;
    /// `s` as its concrete element type.
    fn view_mut(s: &mut [Self]) -> GradSliceMut<'_>;
}

macro_rules! grad_elem {
    ($t:ty, $name:literal, $variant:ident, |$v:ident| $convert:expr) => {
        impl GradElem for $t {
            const DTYPE: &'static str = $name;
            #[inline(always)]
            fn from_f64($v: f64) -> Self {
                $convert
            }
            #[inline(always)]
            fn view_mut(s: &mut [Self]) -> GradSliceMut<'_> {
                GradSliceMut::$variant(s)
            }
        }
    };
}

grad_elem!(f32, "float32", F32, |value| value as f32);
grad_elem!(f64, "float64", F64, |value| value);
grad_elem!(bf16, "bfloat16", Bf16, |value| bf16::from_f64(value));
grad_elem!(f16, "float16", F16, |value| f16::from_f64(value));

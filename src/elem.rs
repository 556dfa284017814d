//! Element types the kernels read. Log-probabilities come as f32, f64, bf16 or f16 and are upcast
//! in registers; masks come as bool, integers or floats (TRL passes int64, verl float) and act as
//! token weights.

use half::{bf16, f16};

/// A floating-point input element (log-probabilities, advantages).
pub trait FloatElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    fn to_f64(self) -> f64;
}

impl FloatElem for f32 {
    const DTYPE: &'static str = "float32";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl FloatElem for f64 {
    const DTYPE: &'static str = "float64";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

impl FloatElem for bf16 {
    const DTYPE: &'static str = "bfloat16";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        // bf16 -> f32 is a shift; f32 -> f64 is exact.
        self.to_f32() as f64
    }
}

impl FloatElem for f16 {
    const DTYPE: &'static str = "float16";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

/// A mask element: the weight a token carries (0 = padding).
pub trait MaskElem: Copy + Send + Sync + 'static {
    const DTYPE: &'static str;
    /// The token's weight as f32.
    fn weight(self) -> f32;
    /// Whether any value of this type can be NaN, infinite or negative (so it must be checked).
    const NEEDS_CHECK: bool;
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

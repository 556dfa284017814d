//! numpy arrays in and out: typed read-only views with clear errors, and the dtype dispatch for
//! log-probabilities (f32, f64, bf16/f16 passed as uint16 bits) and masks.

use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::errors::{type_error, value_error};
use crate::groups::Groups;

/// A read-only, C-contiguous view of `obj` as an array of `T`.
pub(crate) struct View<'py, T: Element> {
    array: PyReadonlyArrayDyn<'py, T>,
}

impl<'py, T: Element> View<'py, T> {
    pub(crate) fn new(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
            type_error(
                arg,
                "a numpy array",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            )
        })?;
        let array = untyped.cast::<PyArrayDyn<T>>().map_err(|_| {
            type_error(
                arg,
                &format!("dtype {}", numpy::dtype::<T>(obj.py())),
                format!("dtype {}", untyped.dtype()),
            )
        })?;
        let array = array
            .try_readonly()
            .map_err(|_| value_error(arg, "the array is being written elsewhere"))?;
        if !array.is_c_contiguous() {
            return Err(value_error(
                arg,
                "expected a C-contiguous array (use numpy.ascontiguousarray)",
            ));
        }
        Ok(View { array })
    }

    pub(crate) fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    pub(crate) fn slice(&self) -> &[T] {
        // Contiguity was checked in `new`, so this cannot fail.
        self.array.as_slice().unwrap_or(&[])
    }

    /// Checks the number of dimensions.
    pub(crate) fn expect_ndim(self, arg: &'static str, ndim: usize) -> PyResult<Self> {
        if self.shape().len() != ndim {
            let what = if ndim == 1 {
                "a 1-D array"
            } else {
                "a 2-D array"
            };
            return Err(value_error(
                arg,
                format!("expected {what}, got shape {:?}", self.shape()),
            ));
        }
        Ok(self)
    }
}

/// Optional argument: `None` stays `None`.
pub(crate) fn optional_view<'py, T: Element>(
    arg: &'static str,
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<View<'py, T>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| View::new(arg, o))
        .transpose()
}

/// Log-probabilities in one of the float types the kernels read.
pub(crate) enum FloatView<'py> {
    F32(View<'py, f32>),
    F64(View<'py, f64>),
    /// bfloat16 bits (numpy has no native bf16; torch bf16 tensors are viewed as uint16).
    Bf16(View<'py, u16>),
    F16(View<'py, u16>),
}

impl<'py> FloatView<'py> {
    /// `half_dtype` says how uint16 arrays are to be read: "bfloat16" or "float16".
    pub(crate) fn new(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
        half_dtype: &str,
    ) -> PyResult<Self> {
        let dtype = obj
            .cast::<PyUntypedArray>()
            .map(|a| a.dtype().to_string())
            .map_err(|_| type_error(arg, "a numpy array", "another object"))?;
        match dtype.as_str() {
            "float32" => Ok(FloatView::F32(View::new(arg, obj)?)),
            "float64" => Ok(FloatView::F64(View::new(arg, obj)?)),
            "uint16" | "int16" if half_dtype == "bfloat16" => Ok(FloatView::Bf16(View::new(
                arg,
                &obj.call_method1("view", ("uint16",))?,
            )?)),
            "uint16" | "int16" if half_dtype == "float16" => Ok(FloatView::F16(View::new(
                arg,
                &obj.call_method1("view", ("uint16",))?,
            )?)),
            other => Err(type_error(
                arg,
                "float32, float64, or uint16 bits with half_dtype \"bfloat16\"/\"float16\"",
                format!("dtype {other}"),
            )),
        }
    }

    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            FloatView::F32(v) => v.shape(),
            FloatView::F64(v) => v.shape(),
            FloatView::Bf16(v) | FloatView::F16(v) => v.shape(),
        }
    }

    pub(crate) fn dtype_name(&self) -> &'static str {
        match self {
            FloatView::F32(_) => "float32",
            FloatView::F64(_) => "float64",
            FloatView::Bf16(_) => "bfloat16",
            FloatView::F16(_) => "float16",
        }
    }

    pub(crate) fn f32(&self) -> Option<&[f32]> {
        match self {
            FloatView::F32(v) => Some(v.slice()),
            _ => None,
        }
    }

    pub(crate) fn f64(&self) -> Option<&[f64]> {
        match self {
            FloatView::F64(v) => Some(v.slice()),
            _ => None,
        }
    }

    pub(crate) fn bf16(&self) -> Option<&[bf16]> {
        match self {
            FloatView::Bf16(v) => Some(v.slice().reinterpret_cast()),
            _ => None,
        }
    }

    pub(crate) fn f16(&self) -> Option<&[f16]> {
        match self {
            FloatView::F16(v) => Some(v.slice().reinterpret_cast()),
            _ => None,
        }
    }
}

/// A token mask (TRL int64, verl float, or bool) read as weights.
pub(crate) enum MaskView<'py> {
    Bool(View<'py, bool>),
    U8(View<'py, u8>),
    I32(View<'py, i32>),
    I64(View<'py, i64>),
    F32(View<'py, f32>),
    F64(View<'py, f64>),
}

impl<'py> MaskView<'py> {
    pub(crate) fn new(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let dtype = obj
            .cast::<PyUntypedArray>()
            .map(|a| a.dtype().to_string())
            .map_err(|_| type_error(arg, "a numpy array", "another object"))?;
        Ok(match dtype.as_str() {
            "bool" => MaskView::Bool(View::new(arg, obj)?),
            "uint8" => MaskView::U8(View::new(arg, obj)?),
            "int32" => MaskView::I32(View::new(arg, obj)?),
            "int64" => MaskView::I64(View::new(arg, obj)?),
            "float32" => MaskView::F32(View::new(arg, obj)?),
            "float64" => MaskView::F64(View::new(arg, obj)?),
            other => {
                return Err(type_error(
                    arg,
                    "dtype bool, uint8, int32, int64, float32 or float64",
                    format!("dtype {other}"),
                ))
            }
        })
    }

    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            MaskView::Bool(v) => v.shape(),
            MaskView::U8(v) => v.shape(),
            MaskView::I32(v) => v.shape(),
            MaskView::I64(v) => v.shape(),
            MaskView::F32(v) => v.shape(),
            MaskView::F64(v) => v.shape(),
        }
    }
}

/// Runs `$body` with `$mask` bound to the mask's typed slice.
macro_rules! with_mask {
    ($view:expr, |$mask:ident| $body:expr) => {
        match $view {
            $crate::python::arrays::MaskView::Bool(v) => {
                let $mask = v.slice();
                $body
            }
            $crate::python::arrays::MaskView::U8(v) => {
                let $mask = v.slice();
                $body
            }
            $crate::python::arrays::MaskView::I32(v) => {
                let $mask = v.slice();
                $body
            }
            $crate::python::arrays::MaskView::I64(v) => {
                let $mask = v.slice();
                $body
            }
            $crate::python::arrays::MaskView::F32(v) => {
                let $mask = v.slice();
                $body
            }
            $crate::python::arrays::MaskView::F64(v) => {
                let $mask = v.slice();
                $body
            }
        }
    };
}
pub(crate) use with_mask;

/// Builds the group partition from exactly one of `group_size` and `group_ids`.
pub(crate) fn groups(
    num_rows: usize,
    group_size: Option<i64>,
    group_ids: Option<&[i64]>,
) -> PyResult<Groups> {
    let groups = match (group_size, group_ids) {
        (Some(_), Some(_)) => {
            return Err(value_error(
                "group_size",
                "give group_size or group_ids, not both",
            ))
        }
        (None, None) => {
            return Err(value_error(
                "group_size",
                "give group_size (consecutive rows, TRL) or group_ids (one id per row, verl)",
            ))
        }
        (Some(size), None) => {
            let size = usize::try_from(size).map_err(|_| {
                value_error(
                    "group_size",
                    format!("expected a positive group size, got {size}"),
                )
            })?;
            Groups::contiguous(num_rows, size)
        }
        (None, Some(ids)) => {
            if ids.len() != num_rows {
                return Err(value_error(
                    "group_ids",
                    format!("expected shape ({num_rows},), got ({},)", ids.len()),
                ));
            }
            Groups::from_ids(ids)
        }
    };
    groups.map_err(super::errors::to_py)
}

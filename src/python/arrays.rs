//! numpy arrays in and out: typed read-only views with clear errors, and the dtype dispatch for
//! log-probabilities (f32, f64, bf16/f16 passed as uint16 bits) and masks.

use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{
    Element, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::errors::{type_error, value_error};
use crate::groups::Groups;
use crate::logprob::{LogitRows, RowLayout};
use crate::rows::Rows;

/// Which arrays a view accepts.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// C-contiguous, any number of dimensions ([`View::new`]).
    Contiguous,
    /// 2-D with adjacent elements in each row ([`View::rows`]).
    Rows,
    /// 2-D or 3-D rows of adjacent elements at any non-negative strides ([`View::strided`]).
    Strided,
}

/// A read-only, C-contiguous view of `obj` as an array of `T` or, from [`View::rows`], a 2-D
/// array whose rows are contiguous but may stand apart (a column slice such as verl's
/// `attention_mask[:, -L:]`, read in place).
pub(crate) struct View<'py, T: Element> {
    array: PyReadonlyArrayDyn<'py, T>,
    /// Elements between row starts of a 2-D view made by [`View::rows`]; `None` when contiguous.
    row_stride: Option<usize>,
    arg: &'static str,
}

impl<'py, T: Element> View<'py, T> {
    pub(crate) fn new(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = Self::readonly(arg, obj)?;
        if !array.is_c_contiguous() {
            return Err(value_error(
                arg,
                "expected a C-contiguous array (use numpy.ascontiguousarray)",
            ));
        }
        Ok(View {
            array,
            row_stride: None,
            arg,
        })
    }

    /// A 2-D array with unit column stride and any non-negative row stride.
    pub(crate) fn rows(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = Self::readonly(arg, obj)?;
        if array.ndim() != 2 {
            return Err(value_error(
                arg,
                format!("expected a 2-D array, got shape {:?}", array.shape()),
            ));
        }
        if array.is_c_contiguous() {
            return Ok(View {
                array,
                row_stride: None,
                arg,
            });
        }
        let size = std::mem::size_of::<T>() as isize;
        let (shape, strides) = (array.shape(), array.strides());
        let unit_columns = shape[1] <= 1 || strides[1] == size;
        if !unit_columns || strides[0] < 0 || strides[0] % size != 0 {
            return Err(value_error(
                arg,
                format!(
                    "expected rows of adjacent elements (byte strides ({}, {size})), got byte strides {strides:?} (use .contiguous() or numpy.ascontiguousarray)",
                    shape[1] as isize * size
                ),
            ));
        }
        let row_stride = (strides[0] / size) as usize;
        Ok(View {
            array,
            row_stride: Some(row_stride),
            arg,
        })
    }

    /// A 2-D `(N, V)` or 3-D `(B, T, V)` array of rows of adjacent elements at any non-negative
    /// strides (TRL's `logits[:, :-1]`), read in place through [`View::logit_rows`].
    pub(crate) fn strided(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = Self::readonly(arg, obj)?;
        Ok(View {
            array,
            row_stride: None,
            arg,
        })
    }

    /// The rows of a view from [`View::strided`] (or [`View::new`]) and where they lie.
    pub(crate) fn logit_rows(&self) -> PyResult<LogitRows<'_, T>> {
        let (data, layout) = rows_of(
            self.arg,
            self.array.data(),
            self.array.shape(),
            self.array.strides(),
        )?;
        // SAFETY: `rows_of` checked non-negative strides that are whole elements, so every
        // element of every row lies between the first element and the last row's end, in the
        // one buffer the array views; the read-only borrow keeps it alive meanwhile.
        let data = unsafe { std::slice::from_raw_parts(data, layout.span().unwrap_or(0)) };
        LogitRows::new(self.arg, data, layout).map_err(super::errors::to_py)
    }

    pub(crate) fn with_layout(
        layout: Layout,
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        match layout {
            Layout::Contiguous => Self::new(arg, obj),
            Layout::Rows => Self::rows(arg, obj),
            Layout::Strided => Self::strided(arg, obj),
        }
    }

    fn readonly(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
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
        array
            .try_readonly()
            .map_err(|_| value_error(arg, "the array is being written elsewhere"))
    }

    /// The 2-D array as [`Rows`]; a view from [`View::new`] must be 2-D.
    pub(crate) fn as_rows(&self) -> PyResult<Rows<'_, T>> {
        let shape = self.shape();
        if shape.len() != 2 {
            return Err(value_error(
                self.arg,
                format!("expected a 2-D array, got shape {shape:?}"),
            ));
        }
        let (num_rows, len) = (shape[0], shape[1]);
        let rows = match self.row_stride {
            None => Rows::contiguous(self.arg, self.slice(), num_rows, len),
            Some(stride) => {
                let span = if num_rows == 0 || len == 0 {
                    0
                } else {
                    (num_rows - 1) * stride + len
                };
                // SAFETY: `rows` checked unit column strides and a non-negative row stride, so
                // every address from the first element to the last lies in the one buffer the
                // array views; the read-only borrow keeps it alive and unwritten meanwhile.
                let data = unsafe { std::slice::from_raw_parts(self.array.data(), span) };
                Rows::strided(self.arg, data, num_rows, len, stride)
            }
        };
        rows.map_err(super::errors::to_py)
    }

    pub(crate) fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    pub(crate) fn slice(&self) -> &[T] {
        // Contiguity was checked in `new`, so this cannot fail (a strided view from `rows` is
        // read through `as_rows`).
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

/// The [`RowLayout`] of an array's shape and byte strides (which must be whole elements), and
/// its first element.
pub(crate) fn rows_of<T>(
    arg: &'static str,
    data: *mut T,
    shape: &[usize],
    byte_strides: &[isize],
) -> PyResult<(*mut T, RowLayout)> {
    if !(data as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(value_error(
            arg,
            "expected an array aligned to its element type (use numpy.ascontiguousarray)",
        ));
    }
    let size = std::mem::size_of::<T>() as isize;
    let strides: Vec<i64> = byte_strides
        .iter()
        .zip(shape)
        // A dimension of size 1 may have any stride (it is not used).
        .map(|(&b, &n)| {
            if n <= 1 {
                Some(0)
            } else {
                (b % size == 0).then_some((b / size) as i64)
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            value_error(
                arg,
                format!("expected strides of whole elements, got byte strides {byte_strides:?}"),
            )
        })?;
    let layout = RowLayout::from_strides(arg, shape, &strides).map_err(super::errors::to_py)?;
    if layout.span().is_none() {
        return Err(value_error(
            arg,
            "the array's rows span more than the address space",
        ));
    }
    Ok((data, layout))
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
        Self::with(arg, obj, half_dtype, Layout::Contiguous)
    }

    /// Logits of `(N, V)` or `(B, T, V)` rows at any non-negative strides ([`View::strided`]).
    pub(crate) fn logits(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
        half_dtype: &str,
    ) -> PyResult<Self> {
        Self::with(arg, obj, half_dtype, Layout::Strided)
    }

    fn with(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
        half_dtype: &str,
        layout: Layout,
    ) -> PyResult<Self> {
        let dtype = obj
            .cast::<PyUntypedArray>()
            .map(|a| a.dtype().to_string())
            .map_err(|_| type_error(arg, "a numpy array", "another object"))?;
        let bits = || obj.call_method1("view", ("uint16",));
        match dtype.as_str() {
            "float32" => Ok(FloatView::F32(View::with_layout(layout, arg, obj)?)),
            "float64" => Ok(FloatView::F64(View::with_layout(layout, arg, obj)?)),
            "uint16" | "int16" if half_dtype == "bfloat16" => {
                Ok(FloatView::Bf16(View::with_layout(layout, arg, &bits()?)?))
            }
            "uint16" | "int16" if half_dtype == "float16" => {
                Ok(FloatView::F16(View::with_layout(layout, arg, &bits()?)?))
            }
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
        Self::with(arg, obj, Layout::Contiguous)
    }

    /// A 2-D mask whose rows may stand apart (see [`View::rows`]).
    pub(crate) fn rows(arg: &'static str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        Self::with(arg, obj, Layout::Rows)
    }

    fn with(arg: &'static str, obj: &Bound<'py, PyAny>, layout: Layout) -> PyResult<Self> {
        let dtype = obj
            .cast::<PyUntypedArray>()
            .map(|a| a.dtype().to_string())
            .map_err(|_| type_error(arg, "a numpy array", "another object"))?;
        Ok(match dtype.as_str() {
            "bool" => MaskView::Bool(View::with_layout(layout, arg, obj)?),
            "uint8" => MaskView::U8(View::with_layout(layout, arg, obj)?),
            "int32" => MaskView::I32(View::with_layout(layout, arg, obj)?),
            "int64" => MaskView::I64(View::with_layout(layout, arg, obj)?),
            "float32" => MaskView::F32(View::with_layout(layout, arg, obj)?),
            "float64" => MaskView::F64(View::with_layout(layout, arg, obj)?),
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

/// Runs `$body` with `$mask` bound to the mask's typed slice or, given an accessor (`as_rows`),
/// to what the accessor returns.
macro_rules! with_mask {
    ($view:expr, |$mask:ident| $body:expr) => {
        $crate::python::arrays::with_mask!($view, slice, |$mask| $body)
    };
    ($view:expr, $access:ident, |$mask:ident| $body:expr) => {
        match $view {
            $crate::python::arrays::MaskView::Bool(v) => {
                let $mask = v.$access();
                $body
            }
            $crate::python::arrays::MaskView::U8(v) => {
                let $mask = v.$access();
                $body
            }
            $crate::python::arrays::MaskView::I32(v) => {
                let $mask = v.$access();
                $body
            }
            $crate::python::arrays::MaskView::I64(v) => {
                let $mask = v.$access();
                $body
            }
            $crate::python::arrays::MaskView::F32(v) => {
                let $mask = v.$access();
                $body
            }
            $crate::python::arrays::MaskView::F64(v) => {
                let $mask = v.$access();
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

/// A float32 `(rows, cols)` output array: the caller's `out` (checked: a C-contiguous 2-D float32
/// numpy array of that shape), or a fresh one left uninitialised, because every element is
/// written by the kernel. Reusing `out` spares a training loop the page faults of a fresh
/// buffer each step.
pub(crate) fn output_2d<'py>(
    py: Python<'py>,
    out: Option<&Bound<'py, PyAny>>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let Some(out) = out.filter(|o| !o.is_none()) else {
        // SAFETY: every element is written before the array is handed back.
        return Ok(unsafe { PyArray2::<f32>::new(py, [rows, cols], false) });
    };
    let out = out
        .cast::<PyArray2<f32>>()
        .map_err(|_| type_error("out", "a 2-D float32 numpy array", out.get_type()))?
        .clone();
    if out.shape() != [rows, cols] || !out.is_c_contiguous() {
        return Err(value_error(
            "out",
            format!(
                "expected a C-contiguous array of shape ({rows}, {cols}), got {:?}",
                out.shape()
            ),
        ));
    }
    Ok(out)
}

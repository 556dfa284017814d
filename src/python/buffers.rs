//! Output buffers that are recycled when Python frees them.
//!
//! A fresh 256 MB output (verl's advantages at 8192 x 8192) costs more in page faults than the
//! kernel that fills it: every 4 KiB page faults on first write (numpy's own allocator asks for huge
//! pages, whose synchronous compaction is slower still). A training loop frees last step's tensor
//! before it asks for the next of the same size, so the freed buffer is kept here and handed out
//! again already mapped. At most [`MAX_POOLED`] buffers are kept (none under [`MIN_POOLED_LEN`]):
//! the memory held is at most two outputs that the caller has already let go.

use std::sync::Mutex;

use numpy::ndarray::ArrayView2;
use numpy::PyArray2;
use pyo3::prelude::*;

/// Buffers smaller than this (1 MiB of f32) are cheap to allocate and not kept.
const MIN_POOLED_LEN: usize = 1 << 18;
const MAX_POOLED: usize = 2;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A zero-initialised-or-recycled buffer of exactly `len` floats (contents unspecified: callers
/// overwrite every element).
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED_LEN {
        if let Ok(mut pool) = POOL.lock() {
            if let Some(i) = pool
                .iter()
                .position(|v| v.capacity() >= len && v.capacity() <= 2 * len)
            {
                let mut buffer = pool.swap_remove(i);
                buffer.resize(len, 0.0);
                return buffer;
            }
        }
    }
    vec![0.0; len]
}

/// The Python owner of a buffer handed out as a numpy array; returns it to the pool when freed.
#[pyclass(module = "sgpo_rs._core")]
pub(crate) struct PooledBuffer {
    data: Vec<f32>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.data);
        if buffer.len() < MIN_POOLED_LEN {
            return;
        }
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() >= MAX_POOLED {
                pool.remove(0);
            }
            pool.push(buffer);
        }
    }
}

/// `buffer` (filled, `rows * cols` long) as a writeable float32 `(rows, cols)` numpy array.
pub(crate) fn into_array(
    py: Python<'_>,
    buffer: Vec<f32>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let owner = Bound::new(py, PooledBuffer { data: buffer })?;
    let guard = owner.borrow();
    let view = ArrayView2::from_shape((rows, cols), guard.data.as_slice()).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("out: internal shape error ({e})"))
    })?;
    // SAFETY: the array's base is `owner`, which owns the buffer and never reallocates it; the
    // buffer goes back to the pool only when `owner` is dropped, i.e. after the array is gone.
    let array = unsafe { PyArray2::borrow_from_array(&view, owner.clone().into_any()) };
    drop(guard);
    Ok(array)
}

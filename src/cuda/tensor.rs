//! Tensors as the caller describes them to the CUDA path: where the elements are, their type,
//! shape, strides and device. Every tensor a kernel reads or writes arrives this way and is
//! checked here before any launch - against the same shape rules as the CPU path
//! (`crate::loss::LossShapes`, ...) and for what only device memory needs (the device, the
//! layout the kernel addresses, the size of every output and scratch buffer) - so a size or
//! order slip raises an error naming the argument instead of corrupting device memory.

use super::device::Stream;
use crate::error::{shape_text, Error, Result};

/// One tensor: `ptr` (its first element), `dtype` (torch's name without the `torch.` prefix,
/// e.g. `"float32"`, `"bool"`), `shape` and `strides` (in elements), `device` (`"cuda:0"`,
/// `"cpu"`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTensor {
    pub ptr: u64,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub strides: Vec<i64>,
    pub device: String,
}

impl DeviceTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major with no gaps (dimensions of size 1 may have any stride, as in torch).
    pub fn is_contiguous(&self) -> bool {
        if self.strides.len() != self.shape.len() {
            return false;
        }
        if self.numel() == 0 {
            return true;
        }
        let mut expected = 1i64;
        for (&size, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected = expected.saturating_mul(size as i64);
        }
        true
    }

    /// The CUDA ordinal of `device` (`"cuda:N"`).
    fn ordinal(&self, arg: &'static str) -> Result<i32> {
        self.device
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Device {
                arg,
                expected: "a CUDA device".into(),
                got: self.device.clone(),
            })
    }

    /// The caller's stream `handle` on this tensor's CUDA device, checked last in every call, so
    /// shape errors read the same whichever device the inputs are on.
    pub fn stream(&self, arg: &'static str, handle: u64) -> Result<Stream> {
        Ok(Stream {
            device: self.ordinal(arg)?,
            handle,
        })
    }

    /// On `device` (the first input's), as every input of one call must be.
    pub fn expect_device(&self, arg: &'static str, device: &str, like: &str) -> Result<()> {
        if self.device != device {
            return Err(Error::Device {
                arg,
                expected: format!("{device} like {like}"),
                got: self.device.clone(),
            });
        }
        Ok(())
    }

    /// An input the kernels read as a dense row-major array of `dtype` on `device`.
    pub fn expect_dense(&self, arg: &'static str, device: &str, like: &str) -> Result<u64> {
        self.expect_device(arg, device, like)?;
        if !self.is_contiguous() {
            return Err(Error::value(
                arg,
                format!(
                    "expected a contiguous tensor (the kernels read it in place), got shape {} \
                     with strides {:?}",
                    shape_text(&self.shape),
                    self.strides
                ),
            ));
        }
        Ok(self.ptr)
    }

    /// A per-row input (targets, upstream gradients, rewards, verdicts): `dtype`, `rows` values in
    /// all (one per row of `of`, the input that sets the rows), dense on `device`.
    pub fn expect_rows(
        &self,
        arg: &'static str,
        dtype: &'static str,
        rows: usize,
        device: &str,
        of: &str,
    ) -> Result<u64> {
        if self.dtype != dtype {
            return Err(Error::Dtype {
                arg,
                expected: dtype.into(),
                got: self.dtype.clone(),
            });
        }
        if self.numel() != rows {
            return Err(Error::shape(
                arg,
                format!("({rows},) (one value per row of {of})"),
                shape_text(&self.shape),
            ));
        }
        self.expect_dense(arg, device, of)
    }

    /// A buffer the kernels write or use as scratch: contiguous `dtype` with exactly `shape`, on
    /// `device`.
    pub fn expect_buffer(
        &self,
        arg: &'static str,
        dtype: &str,
        shape: &[usize],
        device: &str,
    ) -> Result<u64> {
        let contiguous = self.is_contiguous();
        if self.dtype != dtype || self.shape != shape || !contiguous || self.device != device {
            let layout = if contiguous {
                "contiguous"
            } else {
                "non-contiguous"
            };
            return Err(Error::value(
                arg,
                format!(
                    "expected a contiguous {dtype} tensor of shape {} on {device}, got a {layout} \
                     {} tensor of shape {} on {}",
                    shape_text(shape),
                    self.dtype,
                    shape_text(&self.shape),
                    self.device
                ),
            ));
        }
        Ok(self.ptr)
    }

    /// `expect_dense` for an optional input: its pointer, or 0 when absent (the kernels' "none").
    pub fn optional_dense(
        tensor: Option<&DeviceTensor>,
        arg: &'static str,
        device: &str,
        like: &str,
    ) -> Result<u64> {
        tensor.map_or(Ok(0), |t| t.expect_dense(arg, device, like))
    }
}

/// The status buffer every launch sequence reports into (`super::status`): 16 bytes, as two
/// int64 words.
pub fn status_buffer(status: &DeviceTensor, device: &str) -> Result<u64> {
    status.expect_buffer("status", "int64", &[2], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: &str, shape: &[usize], strides: &[i64], device: &str) -> DeviceTensor {
        DeviceTensor {
            ptr: 256,
            dtype: dtype.into(),
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            device: device.into(),
        }
    }

    #[test]
    fn contiguity_follows_torch() {
        assert!(tensor("float32", &[3, 4], &[4, 1], "cuda:0").is_contiguous());
        assert!(tensor("float32", &[3, 1], &[1, 7], "cuda:0").is_contiguous());
        assert!(tensor("float32", &[0, 4], &[9, 2], "cuda:0").is_contiguous());
        assert!(!tensor("float32", &[3, 4], &[1, 3], "cuda:0").is_contiguous());
        assert!(!tensor("float32", &[3, 4], &[5, 1], "cuda:0").is_contiguous());
        assert!(!tensor("float32", &[3, 4], &[4], "cuda:0").is_contiguous());
    }

    #[test]
    fn devices_and_buffers_are_checked_by_name() {
        let t = tensor("float32", &[3, 4], &[4, 1], "cpu");
        assert_eq!(
            t.expect_dense("mask", "cuda:0", "logp")
                .unwrap_err()
                .to_string(),
            "mask: expected a tensor on cuda:0 like logp, got one on cpu"
        );
        assert_eq!(
            t.ordinal("logp").unwrap_err().to_string(),
            "logp: expected a tensor on a CUDA device, got one on cpu"
        );
        let t = tensor("float32", &[3, 4], &[4, 1], "cuda:1");
        assert_eq!(t.ordinal("logp").unwrap(), 1);
        assert_eq!(
            t.expect_buffer("out", "float32", &[3, 4], "cuda:1")
                .unwrap(),
            256
        );
        let err = t
            .expect_buffer("out", "float32", &[4, 3], "cuda:1")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "out: expected a contiguous float32 tensor of shape (4, 3) on cuda:1, got a \
             contiguous float32 tensor of shape (3, 4) on cuda:1"
        );
        let strided = tensor("float32", &[3, 4], &[8, 2], "cuda:1");
        assert!(strided.expect_dense("logp", "cuda:1", "logp").is_err());
        assert!(strided
            .expect_buffer("out", "float32", &[3, 4], "cuda:1")
            .is_err());
    }
}

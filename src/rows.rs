//! A read-only `(N, L)` matrix whose rows are contiguous but may stand `stride >= L` elements
//! apart: verl's `response_mask` is `attention_mask[:, -L:]`, a view whose rows are separated by
//! the prompt columns. Reading it in place avoids copying a mask that can be half a gigabyte.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, T> {
    data: &'a [T],
    num_rows: usize,
    len: usize,
    stride: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Rows of a C-contiguous `(num_rows, len)` slice.
    pub fn contiguous(
        arg: &'static str,
        data: &'a [T],
        num_rows: usize,
        len: usize,
    ) -> Result<Self> {
        Self::strided(arg, data, num_rows, len, len)
    }

    /// Row `i` is `data[i * stride .. i * stride + len]`.
    pub fn strided(
        arg: &'static str,
        data: &'a [T],
        num_rows: usize,
        len: usize,
        stride: usize,
    ) -> Result<Self> {
        let span = match num_rows {
            0 => Some(0),
            n => (n - 1).checked_mul(stride).and_then(|s| s.checked_add(len)),
        };
        let fits = matches!(span, Some(span) if span <= data.len());
        if stride < len || !fits {
            return Err(Error::shape(
                arg,
                format!("({num_rows}, {len}) with a row stride of {stride} elements"),
                format!("{} elements", data.len()),
            ));
        }
        Ok(Rows {
            data,
            num_rows,
            len,
            stride,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.num_rows == 0 || self.len == 0
    }

    /// Row `i` (`i < num_rows`, checked by the slice index).
    #[inline]
    pub fn row(&self, i: usize) -> &'a [T] {
        let start = i * self.stride;
        &self.data[start..start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_rows_skip_the_gap() {
        let data = [1, 2, 9, 3, 4, 9, 5, 6];
        let rows = Rows::strided("mask", &data, 3, 2, 3).unwrap();
        assert_eq!(rows.row(0), &[1, 2]);
        assert_eq!(rows.row(2), &[5, 6]);
        assert!(Rows::strided("mask", &data, 4, 2, 3).is_err());
        assert!(Rows::strided("mask", &data, 2, 3, 2).is_err());
        assert!(Rows::<u8>::contiguous("mask", &[], 0, 5)
            .unwrap()
            .is_empty());
    }
}

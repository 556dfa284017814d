//! Where each row of logits lies in memory: a dense `(N, V)` matrix, or the rows of a `(B, T, V)`
//! view read in place. TRL's `logits[:, :-1]` (and `[:, -T:]` of that) is such a view: its rows
//! are `V` elements apart within a sequence and the sequences `L * V` apart, so it is not one
//! matrix, and copying it to one costs a pass over the logits and their size in memory. The CPU
//! path reads rows through [`LogitRows`], and the backward can write into a buffer of the same
//! layout ([`rows_mut`]); the CUDA path derives its kernels' row addressing from the same
//! [`RowLayout`].

use crate::error::{shape_text, Error, Result};

/// Row `i` starts `(i / group_rows) * group_stride + (i % group_rows) * row_stride` elements
/// after the first; each row is `vocab` adjacent elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    pub rows: usize,
    pub vocab: usize,
    pub row_stride: usize,
    /// Rows per group (the `T` of a `(B, T, V)` view), at least 1.
    pub group_rows: usize,
    pub group_stride: usize,
}

impl RowLayout {
    /// `rows` rows of `vocab` adjacent elements, one after another.
    pub fn dense(rows: usize, vocab: usize) -> Self {
        RowLayout {
            rows,
            vocab,
            row_stride: vocab,
            group_rows: rows.max(1),
            group_stride: rows.max(1) * vocab,
        }
    }

    /// The layout of a 2-D `(N, V)` or 3-D `(B, T, V)` array with these element strides, which
    /// must be non-negative with a unit last one (adjacent logits in a row). A dimension of size
    /// 1 may have any stride (torch reports anything there): it is not used.
    pub fn from_strides(arg: &'static str, shape: &[usize], strides: &[i64]) -> Result<Self> {
        let strides: Vec<usize> = strides
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect::<Option<_>>()
            .filter(|s: &Vec<usize>| s.len() == shape.len())
            .ok_or_else(|| {
                Error::value(
                    arg,
                    format!("expected non-negative strides, got {strides:?}"),
                )
            })?;
        let vocab = shape.last().copied().unwrap_or(0);
        if vocab > 1 && strides.last() != Some(&1) {
            return Err(Error::value(
                arg,
                "expected a contiguous last (vocabulary) dimension",
            ));
        }
        match (shape, &strides[..]) {
            (&[n, _], &[s, _]) => Ok(RowLayout {
                rows: n,
                vocab,
                row_stride: if n > 1 { s } else { vocab },
                group_rows: n.max(1),
                group_stride: n.max(1) * if n > 1 { s } else { vocab },
            }),
            (&[b, len, _], &[sb, sl, _]) => {
                let row_stride = if len > 1 { sl } else { vocab };
                let group_rows = len.max(1);
                let group_stride = if b > 1 { sb } else { group_rows * row_stride };
                Ok(RowLayout {
                    rows: b * len,
                    vocab,
                    row_stride,
                    group_rows,
                    group_stride,
                })
            }
            _ => Err(Error::shape(arg, "(N, V) or (B, T, V)", shape_text(shape))),
        }
    }

    /// Where row `i` starts, in elements from the first row's start.
    #[inline]
    pub fn offset(&self, i: usize) -> usize {
        (i / self.group_rows) * self.group_stride + (i % self.group_rows) * self.row_stride
    }

    /// Elements from the first row's start to the last row's end (`None` on overflow).
    pub fn span(&self) -> Option<usize> {
        if self.rows == 0 {
            return Some(0);
        }
        let groups = (self.rows - 1) / self.group_rows;
        let within = (self.rows - 1) % self.group_rows;
        groups
            .checked_mul(self.group_stride)?
            .checked_add(within.checked_mul(self.row_stride)?)?
            .checked_add(self.vocab)
    }

    /// Whether no two rows share an element, so a buffer of this layout can be written row by
    /// row in parallel: rows in index order (each group after the previous one), or interleaved
    /// groups (a sequence-first `(T, B, V)` buffer viewed as `(B, T, V)`: the groups' rows
    /// alternate, each group's rows a whole round of groups apart).
    pub fn rows_disjoint(&self) -> bool {
        let (v, r, n, g) = (
            self.vocab,
            self.row_stride,
            self.group_rows,
            self.group_stride,
        );
        let groups = self.rows.div_ceil(n.max(1));
        // Everything from `count` items `stride` apart, each `width` long, ends `within` in.
        let reach = |count: usize, stride: usize, width: usize| {
            count
                .saturating_sub(1)
                .checked_mul(stride)
                .and_then(|s| s.checked_add(width))
        };
        let in_order =
            (n <= 1 || r >= v) && (groups <= 1 || reach(n, r, v).is_some_and(|end| g >= end));
        let interleaved =
            (groups <= 1 || g >= v) && (n <= 1 || reach(groups, g, v).is_some_and(|end| r >= end));
        in_order || interleaved
    }
}

/// Whether two buffers share a byte, each given as `(address of its first row, its layout, its
/// element size)`: the bytes from the first row's start to the last row's end (strides are
/// non-negative, so every row lies in between).
pub fn buffers_overlap(a: (usize, RowLayout, usize), b: (usize, RowLayout, usize)) -> bool {
    let bytes = |(at, layout, size): (usize, RowLayout, usize)| {
        let len = layout
            .span()
            .map_or(usize::MAX, |span| span.saturating_mul(size));
        (at, at.saturating_add(len))
    };
    let ((a0, a1), (b0, b1)) = (bytes(a), bytes(b));
    a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1
}

/// Read-only rows of logits: `data` from the first row's start, in `layout`.
#[derive(Debug, Clone, Copy)]
pub struct LogitRows<'a, T> {
    data: &'a [T],
    layout: RowLayout,
}

impl<'a, T> LogitRows<'a, T> {
    /// `data` as `(data.len() / vocab, vocab)` (which must divide).
    pub fn dense(data: &'a [T], vocab: usize, rows: usize) -> Result<Self> {
        if Some(data.len()) != rows.checked_mul(vocab) {
            return Err(Error::shape(
                "logits",
                format!("({rows}, {vocab}) (one row per target)"),
                format!("{} elements", data.len()),
            ));
        }
        Ok(LogitRows {
            data,
            layout: RowLayout::dense(rows, vocab),
        })
    }

    /// `data` in `layout`, which must fit in it.
    pub fn new(arg: &'static str, data: &'a [T], layout: RowLayout) -> Result<Self> {
        if layout.span().is_none_or(|span| span > data.len()) {
            return Err(Error::shape(
                arg,
                format!("{layout:?} within the buffer"),
                format!("{} elements", data.len()),
            ));
        }
        Ok(LogitRows { data, layout })
    }

    pub fn layout(&self) -> RowLayout {
        self.layout
    }

    /// The same rows over `f(data)`, a reinterpretation of the elements (half-precision bits
    /// as their type), checked to hold them like [`LogitRows::new`].
    pub fn map_data<U>(self, f: impl FnOnce(&'a [T]) -> &'a [U]) -> Result<LogitRows<'a, U>> {
        LogitRows::new("logits", f(self.data), self.layout)
    }

    /// Where the first row starts.
    pub fn first(&self) -> *const T {
        self.data.as_ptr()
    }

    /// Row `i` (`i < rows`).
    #[inline]
    pub fn row(&self, i: usize) -> &'a [T] {
        let start = self.layout.offset(i);
        &self.data[start..start + self.layout.vocab]
    }
}

/// The rows of `out` in `layout`, each a slice of its own, in row order (for writing them in
/// parallel). The layout's rows must not share an element ([`RowLayout::rows_disjoint`]) and
/// must fit in `out`.
pub fn rows_mut<'o, O>(
    arg: &'static str,
    out: &'o mut [O],
    layout: RowLayout,
) -> Result<Vec<&'o mut [O]>> {
    if !layout.rows_disjoint() || layout.span().is_none_or(|span| span > out.len()) {
        return Err(Error::shape(
            arg,
            format!(
                "rows of {} elements, apart, within the buffer",
                layout.vocab
            ),
            format!("{layout:?} over {} elements", out.len()),
        ));
    }
    // Split at the rows in address order, then hand them back in row order.
    let mut order: Vec<usize> = (0..layout.rows).collect();
    order.sort_unstable_by_key(|&i| layout.offset(i));
    let mut slots: Vec<Option<&'o mut [O]>> = (0..layout.rows).map(|_| None).collect();
    let (mut rest, mut at) = (out, 0);
    for i in order {
        // Disjoint rows in address order: each starts at or after the previous one's end.
        let skip = layout.offset(i) - at;
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (row, tail) = tail.split_at_mut(layout.vocab);
        slots[i] = Some(row);
        rest = tail;
        at = layout.offset(i) + layout.vocab;
    }
    Ok(slots.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trl_view_is_read_in_place() {
        // logits[:, :-1] of a (3, 11, 7) array: 30 rows in groups of 10, 77 elements apart.
        let layout = RowLayout::from_strides("logits", &[3, 10, 7], &[77, 7, 1]).unwrap();
        assert_eq!(layout.rows, 30);
        assert_eq!(
            (layout.row_stride, layout.group_rows, layout.group_stride),
            (7, 10, 77)
        );
        assert_eq!(layout.offset(10), 77);
        assert_eq!(layout.span(), Some(2 * 77 + 9 * 7 + 7));
        assert!(layout.rows_disjoint());
        let data: Vec<u32> = (0..3 * 77).collect();
        let rows = LogitRows::new("logits", &data, layout).unwrap();
        assert_eq!(rows.row(11), &data[84..91]);
        let mut out = vec![0u32; 3 * 77];
        let parts = rows_mut("out", &mut out, layout).unwrap();
        assert_eq!(parts.len(), 30);
        for (i, part) in parts.into_iter().enumerate() {
            part.fill(i as u32 + 1);
        }
        // The last position of each sequence is not a row: untouched.
        assert_eq!(&out[70..77], &[0; 7]);
        assert_eq!(out[77], 11);
    }

    #[test]
    fn a_sequence_first_buffer_is_written_row_by_row() {
        // A (4, 2, 5) buffer (T, B, V) viewed as (B, T, V): strides (5, 10, 1), the two
        // sequences' rows alternating.
        let layout = RowLayout::from_strides("out", &[2, 4, 5], &[5, 10, 1]).unwrap();
        assert!(layout.rows_disjoint());
        let mut out = vec![0u32; 40];
        let rows = rows_mut("out", &mut out, layout).unwrap();
        for (i, row) in rows.into_iter().enumerate() {
            row.fill(i as u32 + 1);
        }
        // Row (b, t) = i = b * 4 + t lies at t * 10 + b * 5.
        for b in 0..2 {
            for t in 0..4 {
                assert_eq!(out[t * 10 + b * 5], (b * 4 + t) as u32 + 1);
            }
        }
    }

    #[test]
    fn layouts_that_cannot_be_read_or_written_are_refused() {
        let err = RowLayout::from_strides("logits", &[5, 7], &[1, 5]).unwrap_err();
        assert!(err.to_string().contains("contiguous last"), "{err}");
        let err = RowLayout::from_strides("logits", &[2, 7], &[-7, 1]).unwrap_err();
        assert!(err.to_string().contains("non-negative"), "{err}");
        let err = RowLayout::from_strides("logits", &[2, 2, 2, 7], &[28, 14, 7, 1]).unwrap_err();
        assert!(err.to_string().contains("(N, V) or (B, T, V)"), "{err}");
        // Overlapping rows (a stride below the vocabulary) can be read but not written.
        let overlapping = RowLayout::from_strides("logits", &[3, 7], &[5, 1]).unwrap();
        assert!(!overlapping.rows_disjoint());
        let expanded = RowLayout::from_strides("logits", &[2, 3, 7], &[0, 7, 1]).unwrap();
        assert!(!expanded.rows_disjoint());
        let mut out = vec![0f32; 30];
        assert!(rows_mut("out", &mut out, overlapping).is_err());
        let data = vec![0f32; 10];
        assert!(LogitRows::new("logits", &data, RowLayout::dense(2, 7)).is_err());
    }
}

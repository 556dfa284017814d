//! Which rows of a batch form one prompt's group of sampled responses.
//!
//! TRL lays groups out as `num_generations` consecutive rows; verl tags each row with a prompt id
//! (`index`), so groups are unsorted and may differ in size. Both layouts hide behind [`Groups`],
//! and every kernel that reduces over a group asks it for the group's rows.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A partition of `num_rows` batch rows into groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    num_rows: usize,
    layout: Layout,
}

#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// Group `g` is rows `g * size .. (g + 1) * size`.
    Contiguous { size: usize },
    /// Group `g` is `rows[offsets[g] .. offsets[g + 1]]` (ascending); `group_of_row` inverts it.
    Indexed {
        offsets: Vec<usize>,
        rows: Vec<usize>,
        group_of_row: Vec<usize>,
    },
}

/// The rows of one group, in ascending order.
#[derive(Debug, Clone)]
pub enum Members<'a> {
    Range(std::ops::Range<usize>),
    List(std::slice::Iter<'a, usize>),
}

impl Iterator for Members<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Members::Range(range) => range.next(),
            Members::List(iter) => iter.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Members::Range(range) => range.size_hint(),
            Members::List(iter) => iter.size_hint(),
        }
    }
}

impl ExactSizeIterator for Members<'_> {}

impl Groups {
    /// TRL layout: `num_rows / group_size` groups of `group_size` consecutive rows.
    pub fn contiguous(num_rows: usize, group_size: usize) -> Result<Self> {
        if num_rows == 0 {
            return Err(Error::value(
                "rewards",
                "expected at least one row, got an empty batch",
            ));
        }
        if group_size == 0 {
            return Err(Error::value(
                "group_size",
                "expected a positive group size, got 0",
            ));
        }
        if !num_rows.is_multiple_of(group_size) {
            return Err(Error::value(
                "group_size",
                format!("expected a divisor of the number of rows ({num_rows}), got {group_size}"),
            ));
        }
        Ok(Groups {
            num_rows,
            layout: Layout::Contiguous { size: group_size },
        })
    }

    /// verl layout: rows with equal `ids[i]` form one group, wherever they stand in the batch.
    /// Groups are numbered in the order their first row appears.
    pub fn from_ids(ids: &[i64]) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::value(
                "group_ids",
                "expected at least one row, got an empty batch",
            ));
        }
        let mut number_of_id: HashMap<i64, usize> = HashMap::new();
        let mut group_of_row = Vec::with_capacity(ids.len());
        let mut sizes: Vec<usize> = Vec::new();
        for &id in ids {
            let next = number_of_id.len();
            let g = *number_of_id.entry(id).or_insert(next);
            if g == sizes.len() {
                sizes.push(0);
            }
            sizes[g] += 1;
            group_of_row.push(g);
        }
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        offsets.push(0);
        for size in &sizes {
            offsets.push(offsets[offsets.len() - 1] + size);
        }
        // Counting sort keeps each group's rows ascending.
        let mut fill = offsets[..sizes.len()].to_vec();
        let mut rows = vec![0; ids.len()];
        for (row, &g) in group_of_row.iter().enumerate() {
            rows[fill[g]] = row;
            fill[g] += 1;
        }
        Ok(Groups {
            num_rows: ids.len(),
            layout: Layout::Indexed {
                offsets,
                rows,
                group_of_row,
            },
        })
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    pub fn num_groups(&self) -> usize {
        match &self.layout {
            Layout::Contiguous { size } => self.num_rows / size,
            Layout::Indexed { offsets, .. } => offsets.len() - 1,
        }
    }

    /// The rows of group `g` (`g < num_groups()`), ascending.
    pub fn members(&self, g: usize) -> Members<'_> {
        match &self.layout {
            Layout::Contiguous { size } => Members::Range(g * size..(g + 1) * size),
            Layout::Indexed { offsets, rows, .. } => {
                Members::List(rows[offsets[g]..offsets[g + 1]].iter())
            }
        }
    }

    /// The group that row `row` (`row < num_rows()`) belongs to.
    pub fn group_of(&self, row: usize) -> usize {
        match &self.layout {
            Layout::Contiguous { size } => row / size,
            Layout::Indexed { group_of_row, .. } => group_of_row[row],
        }
    }

    /// Checks that a per-row array `arg` has one entry per row.
    pub fn check_rows(&self, arg: &'static str, len: usize) -> Result<()> {
        if len != self.num_rows {
            return Err(Error::shape(
                arg,
                format!("({},)", self.num_rows),
                format!("({len},)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_groups_are_consecutive_rows() {
        let groups = Groups::contiguous(6, 3).unwrap();
        assert_eq!(groups.num_groups(), 2);
        assert_eq!(groups.members(1).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(groups.group_of(4), 1);
    }

    #[test]
    fn contiguous_rejects_bad_sizes() {
        assert!(matches!(
            Groups::contiguous(6, 0),
            Err(Error::Value {
                arg: "group_size",
                ..
            })
        ));
        assert!(matches!(
            Groups::contiguous(6, 4),
            Err(Error::Value {
                arg: "group_size",
                ..
            })
        ));
        assert!(matches!(Groups::contiguous(0, 2), Err(Error::Value { .. })));
    }

    #[test]
    fn ids_make_unsorted_variable_size_groups() {
        let groups = Groups::from_ids(&[7, 3, 7, 9, 3, 7]).unwrap();
        assert_eq!(groups.num_groups(), 3);
        assert_eq!(groups.members(0).collect::<Vec<_>>(), vec![0, 2, 5]);
        assert_eq!(groups.members(1).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(groups.members(2).collect::<Vec<_>>(), vec![3]);
        assert_eq!(groups.group_of(4), 1);
        assert!(Groups::from_ids(&[]).is_err());
    }
}

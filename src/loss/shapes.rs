//! The shapes the policy loss accepts, checked here for every entry point: the numpy and torch
//! CPU paths and the tensors described to the CUDA path all call [`LossShapes::check`], so a
//! wrong shape gives the same message whichever device the inputs live on.

use crate::error::{shape_text, Error, Result};

/// The shapes of the loss's inputs as the caller's arrays have them (`None`: input absent).
#[derive(Debug, Clone, Copy)]
pub struct LossShapes<'a> {
    pub logp: &'a [usize],
    pub old_logp: Option<&'a [usize]>,
    pub ref_logp: Option<&'a [usize]>,
    pub advantages: &'a [usize],
    pub mask: &'a [usize],
}

/// What the shapes say: `(B, T)` and whether advantages are given per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossDims {
    pub batch: usize,
    pub len: usize,
    pub advantages_per_token: bool,
}

impl LossShapes<'_> {
    /// `logp` is `(B, T)`; `old_logp`, `ref_logp` and `mask` are `(B, T)` like it; advantages
    /// are `(B,)` or `(B, T)`. Empty batches are the engine's to refuse (they are well-shaped).
    pub fn check(&self) -> Result<LossDims> {
        let &[batch, len] = self.logp else {
            return Err(Error::shape(
                "logp",
                "(B, T) (2 dimensions)",
                shape_text(self.logp),
            ));
        };
        let like_logp = || format!("{} like logp", shape_text(self.logp));
        let companions = [
            ("old_logp", self.old_logp),
            ("ref_logp", self.ref_logp),
            ("mask", Some(self.mask)),
        ];
        for (arg, shape) in companions {
            if let Some(shape) = shape.filter(|s| *s != self.logp) {
                return Err(Error::shape(arg, like_logp(), shape_text(shape)));
            }
        }
        let advantages_per_token = match *self.advantages {
            [b] if b == batch => false,
            [b, t] if b == batch && t == len => true,
            _ => {
                return Err(Error::shape(
                    "advantages",
                    format!("({batch},) or ({batch}, {len})"),
                    shape_text(self.advantages),
                ))
            }
        };
        Ok(LossDims {
            batch,
            len,
            advantages_per_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes<'a>(logp: &'a [usize], mask: &'a [usize], adv: &'a [usize]) -> LossShapes<'a> {
        LossShapes {
            logp,
            old_logp: None,
            ref_logp: None,
            advantages: adv,
            mask,
        }
    }

    #[test]
    fn well_shaped_inputs_give_their_dims() {
        let dims = shapes(&[3, 5], &[3, 5], &[3]).check().unwrap();
        assert_eq!(
            (dims.batch, dims.len, dims.advantages_per_token),
            (3, 5, false)
        );
        let dims = shapes(&[3, 5], &[3, 5], &[3, 5]).check().unwrap();
        assert!(dims.advantages_per_token);
        assert!(shapes(&[0, 5], &[0, 5], &[0]).check().is_ok());
    }

    #[test]
    fn each_wrong_shape_names_its_argument_in_python_notation() {
        let err = shapes(&[3], &[3, 5], &[3]).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "logp: expected shape (B, T) (2 dimensions), got (3,)"
        );
        let err = shapes(&[3, 5], &[3, 4], &[3]).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "mask: expected shape (3, 5) like logp, got (3, 4)"
        );
        let mut s = shapes(&[3, 5], &[3, 5], &[3]);
        s.ref_logp = Some(&[5, 3]);
        let err = s.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "ref_logp: expected shape (3, 5) like logp, got (5, 3)"
        );
        let err = shapes(&[3, 5], &[3, 5], &[5]).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "advantages: expected shape (3,) or (3, 5), got (5,)"
        );
    }
}

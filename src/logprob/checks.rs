//! Argument checks of the selective log-softmax and the errors it reports, in one place so the
//! forward, the backward and every path report the same message for the same input.

use crate::elem::FloatElem;
use crate::error::{Error, Result};

/// Checks the vocabulary and the temperature, shared by the forward and the backward.
pub(super) fn check_common(vocab: usize, temperature: f64) -> Result<()> {
    if vocab == 0 {
        return Err(Error::value(
            "logits",
            "expected a vocabulary of at least 1 (the last dimension is 0)",
        ));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::value(
            "temperature",
            format!("expected a finite value > 0, got {temperature}"),
        ));
    }
    Ok(())
}

pub(super) fn check_len(arg: &'static str, len: usize, rows: usize) -> Result<()> {
    if len != rows {
        return Err(Error::shape(arg, format!("({rows},)"), format!("({len},)")));
    }
    Ok(())
}

/// The first non-finite upstream gradient as an error.
pub(super) fn check_finite(arg: &'static str, g: &[f32]) -> Result<()> {
    match g.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::NonFinite {
            arg,
            value: g[i] as f64,
            at: format!("row {i}"),
        }),
        None => Ok(()),
    }
}

/// The row's target index, checked against the vocabulary.
pub(super) fn target(targets: &[i64], i: usize, vocab: usize) -> Result<usize> {
    let y = targets.get(i).copied().unwrap_or(-1);
    usize::try_from(y)
        .ok()
        .filter(|&y| y < vocab)
        .ok_or_else(|| {
            Error::value(
                "targets",
                format!("expected token ids in [0, {vocab}), got {y} at row {i}"),
            )
        })
}

/// The first invalid logit (NaN or `+inf`) of a row as an error.
pub(super) fn bad_logit<T: FloatElem>(row: &[T], i: usize) -> Error {
    let (j, value) = row
        .iter()
        .map(|x| x.to_f64())
        .enumerate()
        .find(|(_, x)| x.is_nan() || *x == f64::INFINITY)
        .unwrap_or((0, f64::NAN));
    Error::NonFinite {
        arg: "logits",
        value,
        at: format!("({i}, {j}) (a logit may be -inf, never NaN or +inf)"),
    }
}

pub(super) fn all_banned(i: usize) -> Error {
    Error::value(
        "logits",
        format!("row {i} has no token of non-zero probability (every logit is -inf)"),
    )
}

pub(super) fn overflow(i: usize) -> Error {
    Error::Overflow {
        arg: "logits",
        detail: format!("row {i}: logits / temperature exceeds float64's range"),
    }
}

/// `value` as f32, or an overflow error naming `arg` when a finite value does not fit.
pub(super) fn to_f32(arg: &'static str, value: f64, i: usize) -> Result<f32> {
    let out = value as f32;
    if value.is_finite() && !out.is_finite() {
        return Err(Error::Overflow {
            arg,
            detail: format!("row {i}: {value:e}"),
        });
    }
    Ok(out)
}

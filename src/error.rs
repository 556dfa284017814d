//! The one error type of the engine. Every variant names the argument it is about, so the Python
//! binding can raise an exception that tells the caller which input to fix and what was expected.

use thiserror::Error;

/// Result alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// An array has the wrong number of elements or the wrong shape.
    #[error("{arg}: expected shape {expected}, got {got}")]
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A value is outside the domain the argument allows (`first_error = -3`, `group_size = 0`).
    #[error("{arg}: {message}")]
    Value { arg: &'static str, message: String },
    /// A NaN or infinity where a finite number is required.
    #[error("{arg}: expected finite values, found {value} at {at}")]
    NonFinite {
        arg: &'static str,
        value: f64,
        at: String,
    },
    /// A string option that is not one of the allowed choices.
    #[error("{arg}: expected one of {allowed}, got {got:?}")]
    Choice {
        arg: &'static str,
        /// The choices, quoted and comma-separated.
        allowed: std::borrow::Cow<'static, str>,
        got: String,
    },
    /// An array of an element type the function does not take.
    #[error("{arg}: expected dtype {expected}, got {got}")]
    Dtype {
        arg: &'static str,
        expected: std::borrow::Cow<'static, str>,
        got: String,
    },
    /// A result that does not fit the float32 output (the inputs were finite but extreme).
    #[error("{arg}: result overflows float32 ({detail})")]
    Overflow { arg: &'static str, detail: String },
    /// A tensor on another device than the call's inputs (the CUDA path never copies between
    /// devices).
    #[error("{arg}: expected a tensor on {expected}, got one on {got}")]
    Device {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// The CUDA path cannot run: no driver or NVRTC library, a compile or launch failure.
    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    pub(crate) fn value(arg: &'static str, message: impl Into<String>) -> Self {
        Error::Value {
            arg,
            message: message.into(),
        }
    }

    pub(crate) fn shape(
        arg: &'static str,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Error::Shape {
            arg,
            expected: expected.into(),
            got: got.into(),
        }
    }
}

/// A shape as Python prints one (`(4, 8)`, `(4,)`, `()`), so messages read like the caller's
/// own `.shape` whichever entry point raised them.
pub fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        dims => {
            let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", inner.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_print_like_python_tuples() {
        assert_eq!(shape_text(&[]), "()");
        assert_eq!(shape_text(&[4]), "(4,)");
        assert_eq!(shape_text(&[4, 8]), "(4, 8)");
    }
}

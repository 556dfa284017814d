//! Maps engine errors onto Python exceptions: wrong dtypes are `TypeError`, everything else the
//! caller can fix by passing other values is `ValueError`; a CUDA path that cannot run is
//! `RuntimeError`. Messages name the argument.

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

use crate::error::Error;

pub(crate) fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Dtype { .. } => PyTypeError::new_err(message),
        Error::Shape { .. }
        | Error::Value { .. }
        | Error::NonFinite { .. }
        | Error::Choice { .. }
        | Error::Overflow { .. } => PyValueError::new_err(message),
        // torch raises RuntimeError for tensors on the wrong device too.
        Error::Device { .. } | Error::Cuda(_) => PyRuntimeError::new_err(message),
    }
}

pub(crate) fn type_error(arg: &str, expected: &str, got: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(format!("{arg}: expected {expected}, got {got}"))
}

pub(crate) fn value_error(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{arg}: {message}"))
}

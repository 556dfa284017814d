//! Binding of the SIMD level ([`crate::numeric::simd`]), private (`_core`), so tests and benchmarks can run
//! every vectorised path the CPU has.

use pyo3::prelude::*;

use super::errors::value_error;
use crate::numeric::simd::{force_simd_level, simd_level, SimdLevel};

/// The SIMD level the kernels use now: `"avx512"`, `"avx2"` or `"portable"`.
#[pyfunction]
#[pyo3(name = "simd_level")]
pub(crate) fn simd_level_name() -> &'static str {
    simd_level().name()
}

/// The best SIMD level this CPU supports.
#[pyfunction]
#[pyo3(name = "cpu_simd_level")]
pub(crate) fn cpu_simd_level_name() -> &'static str {
    crate::numeric::simd::cpu_simd_level().name()
}

/// Makes the kernels use `level` (`None`: the CPU's best); returns the level now in use, which is
/// `level` capped at what the CPU supports.
#[pyfunction]
#[pyo3(signature = (level=None))]
pub(crate) fn set_simd_level(level: Option<&str>) -> PyResult<&'static str> {
    let level = match level {
        None => None,
        Some(name) => Some(SimdLevel::parse(name).ok_or_else(|| {
            value_error(
                "level",
                format!("expected \"avx512\", \"avx2\" or \"portable\", got {name:?}"),
            )
        })?),
    };
    Ok(force_simd_level(level).name())
}

//! Whether the CUDA libraries can be loaded, checked before any call that would make cudarc
//! panic on a missing library. A successful check is remembered for the process (cudarc keeps
//! the library it opened); a failed one is not, so a library loaded later is still found.

use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::{driver, nvrtc};

use super::guarded;
use crate::error::{Error, Result};

/// What the CUDA path can do on this machine, and why not where it cannot.
#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    /// `libnvrtc` loads: kernels can be compiled.
    pub nvrtc: bool,
    /// NVRTC's version `(major, minor)` when it loads.
    pub nvrtc_version: Option<(i32, i32)>,
    /// `libcuda` loads and `cuInit` succeeds.
    pub driver: bool,
    /// The driver's CUDA version (e.g. 13000) when it loads.
    pub driver_version: Option<i32>,
    pub device_count: i32,
    /// Why the path is unusable, if it is.
    pub reason: Option<String>,
}

/// Set once libnvrtc has been found; a failure is not remembered, because Python may load
/// libnvrtc (`ctypes.CDLL(..., RTLD_GLOBAL)`) after a first, failed probe.
static NVRTC_FOUND: AtomicBool = AtomicBool::new(false);

/// Set once libcuda has loaded and `cuInit` succeeded; a failure is probed again next time.
static DRIVER_READY: AtomicBool = AtomicBool::new(false);

pub(crate) fn require_nvrtc() -> Result<()> {
    if NVRTC_FOUND.load(Ordering::Acquire) {
        return Ok(());
    }
    probe_nvrtc()
}

#[cold]
fn probe_nvrtc() -> Result<()> {
    // SAFETY: only tries to open the library.
    if unsafe { nvrtc::sys::is_culib_present() } {
        NVRTC_FOUND.store(true, Ordering::Release);
        Ok(())
    } else {
        Err(Error::Cuda(
            "libnvrtc was not found: install the `nvidia-cuda-nvrtc` package (torch's CUDA \
             builds bring it) or put libnvrtc.so on the library path"
                .into(),
        ))
    }
}

/// Checks that the driver loads and is initialised. Called before every launch: after the first
/// success it is one atomic load (no `dlopen`, no `cuInit`).
#[inline]
pub(crate) fn require_driver() -> Result<()> {
    if DRIVER_READY.load(Ordering::Acquire) {
        return Ok(());
    }
    probe_driver()
}

#[cold]
fn probe_driver() -> Result<()> {
    // SAFETY: only tries to open the library.
    if !unsafe { driver::sys::is_culib_present() } {
        return Err(Error::Cuda(
            "libcuda (the NVIDIA driver) was not found: the CUDA path needs an NVIDIA GPU and driver"
                .into(),
        ));
    }
    // `cuInit` is idempotent and thread-safe, so threads racing here are harmless.
    guarded(|| {
        driver::result::init()
            .map_err(|e| Error::Cuda(format!("cuInit failed: {e:?} (no usable GPU?)")))
    })?;
    DRIVER_READY.store(true, Ordering::Release);
    Ok(())
}

/// Probes the libraries and the devices; never fails.
pub fn availability() -> Availability {
    let mut out = Availability {
        nvrtc: false,
        nvrtc_version: None,
        driver: false,
        driver_version: None,
        device_count: 0,
        reason: None,
    };
    match require_nvrtc().and_then(|()| guarded(nvrtc_version)) {
        Ok(version) => {
            out.nvrtc = true;
            out.nvrtc_version = Some(version);
        }
        Err(e) => out.reason = Some(e.to_string()),
    }
    match require_driver().and_then(|()| guarded(driver_facts)) {
        Ok((version, count)) => {
            out.driver = true;
            out.driver_version = Some(version);
            out.device_count = count;
            if count == 0 && out.reason.is_none() {
                out.reason = Some("the driver reports no CUDA device".into());
            }
        }
        Err(e) => {
            if out.reason.is_none() {
                out.reason = Some(e.to_string());
            }
        }
    }
    out
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded; the out-pointers are valid.
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

fn driver_facts() -> Result<(i32, i32)> {
    let mut version = 0;
    // SAFETY: the driver is initialised; the out-pointer is valid.
    unsafe { driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| Error::Cuda(format!("cuDriverGetVersion failed: {e:?}")))?;
    let count = driver::result::device::get_count()
        .map_err(|e| Error::Cuda(format!("cuDeviceGetCount failed: {e:?}")))?;
    Ok((version, count))
}

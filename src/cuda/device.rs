//! Devices, modules and launches. The kernels run in the device's primary context - the one
//! torch uses - pushed around each launch so the caller's current context is left as it was, and
//! on the caller's stream, so they are ordered with torch's work without any synchronisation.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{result, sys};

use super::args::{Arg, ArgSlots};
use super::guarded;
use super::library::require_driver;
use super::nvrtc::compiled;
use super::source::KernelSource;
use crate::error::{Error, Result};

/// Where to launch: a device ordinal and a `CUstream` handle (torch's
/// `torch.cuda.current_stream().cuda_stream`; 0 is the legacy default stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub device: i32,
    pub handle: u64,
}

/// Name and architecture of a device, for `sgpo-rs info`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    pub name: String,
    /// `major * 10 + minor`.
    pub arch: u32,
}

/// A loaded device: its primary context, architecture and the kernels fetched so far.
struct Device {
    context: sys::CUcontext,
    arch: u32,
    modules: HashMap<&'static str, sys::CUmodule>,
    kernels: HashMap<String, sys::CUfunction>,
}

// SAFETY: the handles are plain driver handles, valid in any thread; the map is behind a Mutex.
unsafe impl Send for Device {}

fn devices() -> &'static Mutex<HashMap<i32, Device>> {
    static DEVICES: OnceLock<Mutex<HashMap<i32, Device>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn driver_error(what: &str, e: result::DriverError) -> Error {
    let detail = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{e:?}"));
    Error::Cuda(format!("{what} failed: {detail}"))
}

fn open(ordinal: i32) -> Result<Device> {
    let count = result::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    if ordinal < 0 || ordinal >= count {
        return Err(Error::Cuda(format!(
            "device {ordinal} does not exist ({count} CUDA devices)"
        )));
    }
    let device = result::device::get(ordinal).map_err(|e| driver_error("cuDeviceGet", e))?;
    let attribute = |a| {
        // SAFETY: `device` comes from cuDeviceGet.
        unsafe { result::device::get_attribute(device, a) }
            .map_err(|e| driver_error("cuDeviceGetAttribute", e))
    };
    let major = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut context = std::ptr::null_mut();
    // SAFETY: valid out-pointer and device; the primary context is retained for the process.
    unsafe { sys::cuDevicePrimaryCtxRetain(&mut context, device) }
        .result()
        .map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
    Ok(Device {
        context,
        arch: (major * 10 + minor) as u32,
        modules: HashMap::new(),
        kernels: HashMap::new(),
    })
}

/// Runs `f` with the device's primary context current, restoring the caller's context after.
fn in_context<R>(context: sys::CUcontext, f: impl FnOnce() -> Result<R>) -> Result<R> {
    // SAFETY: `context` is a retained primary context.
    unsafe { sys::cuCtxPushCurrent_v2(context) }
        .result()
        .map_err(|e| driver_error("cuCtxPushCurrent", e))?;
    let out = f();
    let mut popped = std::ptr::null_mut();
    // SAFETY: pops the context pushed above.
    let pop = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }.result();
    let out = out?;
    pop.map_err(|e| driver_error("cuCtxPopCurrent", e))?;
    Ok(out)
}

impl Device {
    fn kernel(&mut self, source: &KernelSource, name: &str) -> Result<sys::CUfunction> {
        if let Some(&f) = self.kernels.get(name) {
            return Ok(f);
        }
        let module = match self.modules.get(source.name) {
            Some(&m) => m,
            None => {
                let built = compiled(source, self.arch)?;
                // SAFETY: a CUBIN NVRTC built for this device's architecture; the context is
                // current (caller).
                let m = unsafe { result::module::load_data(built.cubin.as_ptr().cast()) }
                    .map_err(|e| driver_error(&format!("loading {}", source.name), e))?;
                self.modules.insert(source.name, m);
                m
            }
        };
        let c_name =
            CString::new(name).map_err(|_| Error::Cuda(format!("bad kernel name {name:?}")))?;
        // SAFETY: `module` is loaded in the current context.
        let f = unsafe { result::module::get_function(module, c_name) }
            .map_err(|e| driver_error(&format!("finding kernel {name}"), e))?;
        self.kernels.insert(name.to_string(), f);
        Ok(f)
    }
}

/// A launch's shape: grid, block and dynamic shared memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared_bytes: u32,
}

/// Launches `kernel` of `source` on `stream`. The launch is asynchronous; only errors the driver
/// reports at launch time (bad configuration, a missing kernel) come back here.
pub(crate) fn launch(
    stream: &Stream,
    source: &KernelSource,
    kernel: &str,
    shape: Shape,
    args: &[Arg],
) -> Result<()> {
    require_driver()?;
    guarded(|| {
        let mut map = devices().lock().map_err(|_| {
            Error::Cuda("the device table was poisoned by an earlier failure".into())
        })?;
        let device = match map.entry(stream.device) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(open(stream.device)?),
        };
        let context = device.context;
        in_context(context, || {
            let f = device.kernel(source, kernel)?;
            let mut slots = ArgSlots::new(args);
            let mut pointers = slots.pointers();
            // SAFETY: the argument list matches the kernel's parameters (each kernel's host
            // wrapper builds it from the kernel signature), and every pointer is a device
            // address the caller owns for the stream's lifetime of this work.
            unsafe {
                result::launch_kernel(
                    f,
                    shape.grid,
                    (shape.block, 1, 1),
                    shape.shared_bytes,
                    stream.handle as sys::CUstream,
                    &mut pointers,
                )
            }
            .map_err(|e| driver_error(&format!("launching {kernel}"), e))
        })
    })
}

/// The device's name and architecture.
pub fn device_summary(ordinal: i32) -> Result<DeviceSummary> {
    require_driver()?;
    guarded(|| {
        let device = result::device::get(ordinal).map_err(|e| driver_error("cuDeviceGet", e))?;
        let name =
            result::device::get_name(device).map_err(|e| driver_error("cuDeviceGetName", e))?;
        let attribute = |a| {
            // SAFETY: `device` comes from cuDeviceGet.
            unsafe { result::device::get_attribute(device, a) }
                .map_err(|e| driver_error("cuDeviceGetAttribute", e))
        };
        let major =
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor =
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        Ok(DeviceSummary {
            name,
            arch: (major * 10 + minor) as u32,
        })
    })
}

//! Devices, modules and launches. The kernels run in the device's primary context - the one
//! torch uses - pushed around each launch so the caller's current context is left as it was, and
//! on the caller's stream, so they are ordered with torch's work without any synchronisation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cudarc::driver::{result, sys};

use super::args::{Arg, ArgSlots};
use super::guarded;
use super::library::require_driver;
use super::nvrtc::{compiled, CompiledKernel};
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

/// A loaded module and the kernels fetched from it so far.
struct Module {
    handle: sys::CUmodule,
    kernels: HashMap<String, sys::CUfunction>,
}

/// An open device: its retained primary context, architecture and the modules loaded so far.
/// Nothing is ever unloaded or removed, so a handle read from the table stays valid after the
/// lock is released.
struct Device {
    device: sys::CUdevice,
    context: sys::CUcontext,
    arch: u32,
    modules: HashMap<&'static str, Module>,
}

// SAFETY: the handles are plain driver handles, valid in any thread; the table is behind a lock
// and only changed under its write lock.
unsafe impl Send for Device {}
// SAFETY: as above; shared access only reads the handles.
unsafe impl Sync for Device {}

impl Device {
    /// The kernel if it was fetched before: two lookups by `&str`, no allocation.
    fn kernel(&self, source: &str, name: &str) -> Option<sys::CUfunction> {
        self.modules.get(source)?.kernels.get(name).copied()
    }
}

type Table = HashMap<i32, Device>;

fn devices() -> &'static RwLock<Table> {
    static DEVICES: OnceLock<RwLock<Table>> = OnceLock::new();
    DEVICES.get_or_init(|| RwLock::new(HashMap::new()))
}

// The table is only changed by inserting complete entries, so it is consistent even after a panic
// (caught by `guarded`) poisoned the lock.
fn read_table() -> RwLockReadGuard<'static, Table> {
    devices().read().unwrap_or_else(PoisonError::into_inner)
}

fn write_table() -> RwLockWriteGuard<'static, Table> {
    devices().write().unwrap_or_else(PoisonError::into_inner)
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
    // SAFETY: valid out-pointer and device; the primary context is retained for the process (or
    // released by `release` when another thread opened the device first).
    unsafe { sys::cuDevicePrimaryCtxRetain(&mut context, device) }
        .result()
        .map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
    Ok(Device {
        device,
        context,
        arch: (major * 10 + minor) as u32,
        modules: HashMap::new(),
    })
}

impl Device {
    /// Gives back the retain of a device that lost the race to enter the table.
    fn release(self) {
        // SAFETY: balances the cuDevicePrimaryCtxRetain of `open`; the entry in the table holds
        // its own retain of the same context.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

/// A context pushed onto this thread's context stack. Dropping it pops the context - also when a
/// panic unwinds (`guarded` catches it) - so the caller's current context is left as it was.
/// Not `Send`: the stack is per thread.
struct Current {
    popped: bool,
    _thread: PhantomData<*const ()>,
}

impl Current {
    fn push(context: sys::CUcontext) -> Result<Current> {
        // SAFETY: `context` is a retained primary context.
        unsafe { sys::cuCtxPushCurrent_v2(context) }
            .result()
            .map_err(|e| driver_error("cuCtxPushCurrent", e))?;
        Ok(Current {
            popped: false,
            _thread: PhantomData,
        })
    }

    /// Pops now, reporting a failure (which `Drop` cannot).
    fn pop(mut self) -> Result<()> {
        self.popped = true;
        let mut popped = std::ptr::null_mut();
        // SAFETY: pops the context pushed by `push` on this thread.
        unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }
            .result()
            .map_err(|e| driver_error("cuCtxPopCurrent", e))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        if !self.popped {
            let mut popped = std::ptr::null_mut();
            // SAFETY: as in `pop`.
            let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
        }
    }
}

/// The primary context of device `ordinal` and kernel `name` of `source`, opening, compiling and
/// loading whatever is missing. Once a kernel was fetched this is a shared lock and two map
/// lookups.
fn resolve(
    ordinal: i32,
    source: &KernelSource,
    name: &str,
) -> Result<(sys::CUcontext, sys::CUfunction)> {
    if let Some(device) = read_table().get(&ordinal) {
        if let Some(f) = device.kernel(source.name, name) {
            return Ok((device.context, f));
        }
    }
    resolve_missing(ordinal, source, name)
}

#[cold]
fn resolve_missing(
    ordinal: i32,
    source: &KernelSource,
    name: &str,
) -> Result<(sys::CUcontext, sys::CUfunction)> {
    let (arch, loaded) = prepare(ordinal, source.name)?;
    // NVRTC runs (or its cache answers) with no lock held: a compile takes hundreds of
    // milliseconds, and launches on other devices and threads go on meanwhile.
    let built = if loaded {
        None
    } else {
        Some(compiled(source, arch)?)
    };
    let mut table = write_table();
    let device = table
        .get_mut(&ordinal)
        .ok_or_else(|| Error::Cuda(format!("device {ordinal} left the device table")))?;
    // Another thread may have loaded the module, or fetched the kernel, since the check above.
    if let Some(f) = device.kernel(source.name, name) {
        return Ok((device.context, f));
    }
    let context = device.context;
    let current = Current::push(context)?;
    let module = match device.modules.entry(source.name) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            // Modules are never removed, so one seen loaded above is still there.
            let built = built.ok_or_else(|| {
                Error::Cuda(format!(
                    "{} was unloaded from device {ordinal}",
                    source.name
                ))
            })?;
            e.insert(load(source.name, &built)?)
        }
    };
    let c_name =
        CString::new(name).map_err(|_| Error::Cuda(format!("bad kernel name {name:?}")))?;
    // SAFETY: `module.handle` is loaded in the current context.
    let f = unsafe { result::module::get_function(module.handle, c_name) }
        .map_err(|e| driver_error(&format!("finding kernel {name}"), e))?;
    module.kernels.insert(name.to_owned(), f);
    current.pop()?;
    Ok((context, f))
}

/// Opens device `ordinal` unless it is open, and returns its architecture and whether the
/// module `source` is loaded on it. Retaining the primary context (which may create it) happens
/// outside the table lock; of two threads opening the same device, the second gives its retain
/// back.
fn prepare(ordinal: i32, source: &str) -> Result<(u32, bool)> {
    if let Some(device) = read_table().get(&ordinal) {
        return Ok((device.arch, device.modules.contains_key(source)));
    }
    let opened = open(ordinal)?;
    let mut table = write_table();
    match table.entry(ordinal) {
        Entry::Vacant(e) => Ok((e.insert(opened).arch, false)),
        Entry::Occupied(e) => {
            let device = e.get();
            let found = (device.arch, device.modules.contains_key(source));
            drop(table);
            opened.release();
            Ok(found)
        }
    }
}

/// Loads a CUBIN into the current context.
fn load(name: &str, built: &CompiledKernel) -> Result<Module> {
    // SAFETY: a CUBIN NVRTC built for this device's architecture; the device's context is
    // current (caller).
    let handle = unsafe { result::module::load_data(built.cubin.as_ptr().cast()) }
        .map_err(|e| driver_error(&format!("loading {name}"), e))?;
    Ok(Module {
        handle,
        kernels: HashMap::new(),
    })
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
///
/// Once the kernel was launched before on the device, this takes no `dlopen`, no exclusive lock
/// and no allocation beyond the argument array; the table lock is released before the launch.
pub(crate) fn launch(
    stream: &Stream,
    source: &KernelSource,
    kernel: &str,
    shape: Shape,
    args: &[Arg],
) -> Result<()> {
    if cfg!(feature = "emulator") {
        return emulated(source, kernel, shape, args);
    }
    require_driver()?;
    guarded(|| {
        let (context, f) = resolve(stream.device, source, kernel)?;
        let mut slots = ArgSlots::new(args);
        let mut pointers = slots.pointers();
        let current = Current::push(context)?;
        // SAFETY: the argument list matches the kernel's parameters (each kernel's host wrapper
        // builds it from the kernel signature), and every pointer is a device address the
        // caller owns for the stream's lifetime of this work.
        let launched = unsafe {
            result::launch_kernel(
                f,
                shape.grid,
                (shape.block, 1, 1),
                shape.shared_bytes,
                stream.handle as sys::CUstream,
                &mut pointers,
            )
        }
        .map_err(|e| driver_error(&format!("launching {kernel}"), e));
        let popped = current.pop();
        launched?;
        popped
    })
}

#[cfg(feature = "emulator")]
fn emulated(source: &KernelSource, kernel: &str, shape: Shape, args: &[Arg]) -> Result<()> {
    super::emulator::launch(source, kernel, shape, args)
}

#[cfg(not(feature = "emulator"))]
fn emulated(_: &KernelSource, _: &str, _: Shape, _: &[Arg]) -> Result<()> {
    Err(Error::Cuda("built without the emulator".into()))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::cuda::library::require_nvrtc;

    const FILL: KernelSource = KernelSource {
        name: "device_test_fill.cu",
        code:
            "extern \"C\" __global__ void fill(int* out, int value) { out[threadIdx.x] = value; }",
        kernels: &["fill"],
        defines: crate::cuda::source::no_defines,
    };

    /// Needs a GPU, its driver and libnvrtc; without them the tests say so and pass.
    fn gpu() -> bool {
        // The emulator replaces every launch: these tests are about the driver.
        if cfg!(feature = "emulator") {
            eprintln!("skipped: built with the emulator");
            return false;
        }
        let found = require_driver().is_ok()
            && require_nvrtc().is_ok()
            && guarded(|| result::device::get_count().map_err(|e| driver_error("count", e)))
                .is_ok_and(|n| n > 0);
        if !found {
            eprintln!("skipped: no CUDA device");
        }
        found
    }

    fn current() -> sys::CUcontext {
        let mut context = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { sys::cuCtxGetCurrent(&mut context) }
            .result()
            .expect("cuCtxGetCurrent");
        context
    }

    fn primary(ordinal: i32) -> sys::CUcontext {
        prepare(ordinal, FILL.name).expect("opens device 0");
        read_table()[&ordinal].context
    }

    #[test]
    fn concurrent_first_launches_share_one_module_and_restore_the_context() {
        if !gpu() {
            return;
        }
        const THREADS: usize = 8;
        const N: usize = 64;
        let context = primary(0);
        let bytes = THREADS * N * 4;
        let mut base = 0;
        {
            let pushed = Current::push(context).unwrap();
            // SAFETY: valid out-pointer; the primary context is current.
            unsafe { sys::cuMemAlloc_v2(&mut base, bytes) }
                .result()
                .unwrap();
            pushed.pop().unwrap();
        }
        let start = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let start = start.clone();
                std::thread::spawn(move || {
                    assert!(current().is_null());
                    start.wait();
                    let shape = Shape {
                        grid: (1, 1, 1),
                        block: N as u32,
                        shared_bytes: 0,
                    };
                    let out = base + (i * N * 4) as u64;
                    let stream = Stream {
                        device: 0,
                        handle: 0,
                    };
                    for _ in 0..3 {
                        launch(
                            &stream,
                            &FILL,
                            "fill",
                            shape,
                            &[Arg::Ptr(out), Arg::I32(i as i32 + 1)],
                        )
                        .expect("launches");
                        assert!(current().is_null(), "launch left a context pushed");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
        let mut host = vec![0i32; THREADS * N];
        let pushed = Current::push(context).unwrap();
        // SAFETY: the context is current; `host` has `bytes` bytes; `base` is freed once.
        unsafe {
            sys::cuCtxSynchronize().result().unwrap();
            sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), base, bytes)
                .result()
                .unwrap();
            sys::cuMemFree_v2(base).result().unwrap();
        }
        pushed.pop().unwrap();
        for (i, row) in host.chunks(N).enumerate() {
            assert!(
                row.iter().all(|&v| v == i as i32 + 1),
                "thread {i}: {row:?}"
            );
        }
        let table = read_table();
        let module = &table[&0].modules[FILL.name];
        assert_eq!(module.kernels.len(), 1);
    }

    #[test]
    fn a_panic_pops_the_context() {
        if !gpu() {
            return;
        }
        let context = primary(0);
        assert!(current().is_null());
        let caught = guarded(|| -> Result<()> {
            let _pushed = Current::push(context)?;
            assert_eq!(current(), context);
            panic!("boom");
        });
        assert!(caught.is_err());
        assert!(current().is_null(), "the context stayed pushed");
    }

    #[test]
    fn a_missing_device_is_an_error_and_leaves_no_context() {
        if !gpu() {
            return;
        }
        let stream = Stream {
            device: 1 << 20,
            handle: 0,
        };
        let shape = Shape {
            grid: (1, 1, 1),
            block: 1,
            shared_bytes: 0,
        };
        let err = launch(&stream, &FILL, "fill", shape, &[Arg::Ptr(0), Arg::I32(0)])
            .expect_err("no such device");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(current().is_null());
    }
}

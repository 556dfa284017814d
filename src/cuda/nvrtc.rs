//! Compiling a kernel source with NVRTC into a CUBIN for one architecture.
//!
//! The CUBIN is built for the device's own `sm_XY` (not PTX left to the driver's JIT): it loads
//! on drivers older than the NVRTC that built it, and the ptxas stage runs here, so its warnings
//! and register counts are visible. Results are cached per architecture for the process.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use cudarc::nvrtc::{result, sys};

use super::guarded;
use super::library::require_nvrtc;
use super::source::{KernelSource, COMMON};
use crate::error::{Error, Result};

/// A compiled source: the CUBIN and everything NVRTC and ptxas said about it.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    pub source: &'static str,
    /// Compute capability as `major * 10 + minor` (90 for sm_90).
    pub arch: u32,
    pub cubin: Vec<u8>,
    /// NVRTC's log: warnings, and with `verbose` ptxas's registers and spills per kernel.
    pub log: String,
}

type Cache = Mutex<HashMap<(u32, &'static str), Arc<CompiledKernel>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Compiles `source` for `sm_{arch}`; `verbose` asks ptxas for its resource report. A compile
/// error is [`Error::Cuda`] carrying NVRTC's log.
pub fn compile(source: &KernelSource, arch: u32, verbose: bool) -> Result<CompiledKernel> {
    require_nvrtc()?;
    guarded(|| compile_unguarded(source, arch, verbose))
}

/// The process-wide compiled copy of `source` for `arch` (compiled on first use). The cache lock
/// is not held while NVRTC runs: two threads missing together both compile, and the first result
/// stored is the one every caller gets.
pub(crate) fn compiled(source: &KernelSource, arch: u32) -> Result<Arc<CompiledKernel>> {
    let key = (arch, source.name);
    if let Some(hit) = lock_cache().get(&key) {
        return Ok(hit.clone());
    }
    let built = Arc::new(compile(source, arch, false)?);
    Ok(lock_cache().entry(key).or_insert(built).clone())
}

/// The cache, also after a panic elsewhere poisoned its lock: entries are inserted whole, so the
/// map is always consistent.
fn lock_cache() -> MutexGuard<'static, HashMap<(u32, &'static str), Arc<CompiledKernel>>> {
    cache().lock().unwrap_or_else(PoisonError::into_inner)
}

fn text(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The text NVRTC compiles: `common.cuh` and the source as embedded in the library, or, for
/// kernel development on a machine without a Rust toolchain, the files of the same names in
/// `$SGPO_RS_KERNEL_DIR` (read when the source is first compiled in the process).
pub(crate) fn source_text(source: &KernelSource) -> Result<String> {
    let (common, code) = match std::env::var_os("SGPO_RS_KERNEL_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name)).map_err(|e| {
                    Error::Cuda(format!(
                        "SGPO_RS_KERNEL_DIR: cannot read {}: {e}",
                        dir.join(name).display()
                    ))
                })
            };
            (read("common.cuh")?, read(source.name)?)
        }
        None => (COMMON.to_string(), source.code.to_string()),
    };
    // The status bits for every source, then the source's own generated constants.
    let (status, defines) = (super::status::cuda_defines(), (source.defines)());
    Ok(format!(
        "{status}#line 1 \"common.cuh\"\n{common}\n{defines}#line 1 \"{}\"\n{code}",
        source.name
    ))
}

fn compile_unguarded(source: &KernelSource, arch: u32, verbose: bool) -> Result<CompiledKernel> {
    let code = source_text(source)?;
    let code = CString::new(code)
        .map_err(|_| Error::Cuda(format!("{}: the source contains a NUL byte", source.name)))?;
    let name = CString::new(source.name).unwrap_or_default();
    let fail = |what: &str, e: result::NvrtcError| {
        Error::Cuda(format!("{}: {what} failed: {e:?}", source.name))
    };
    let program =
        result::create_program(&code, Some(&name)).map_err(|e| fail("nvrtcCreateProgram", e))?;
    let mut options = vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".to_string(),
        // Kernels are checked against f64 references: keep IEEE division and square roots.
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
        // No contraction into fused multiply-adds: the f64 formulas round as the CPU twins'
        // do, so results match them bit for bit wherever the formula is the same.
        "--fmad=false".to_string(),
    ];
    if verbose {
        options.push("--ptxas-options=-v".to_string());
    }
    // SAFETY: `program` was just created and is destroyed below on every path.
    let outcome = unsafe { result::compile_program(program, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program) }
        .map(|chars| text(&chars))
        .unwrap_or_default();
    let cubin = outcome
        .map_err(|e| {
            Error::Cuda(format!(
                "{} does not compile for sm_{arch} ({e:?}):\n{log}",
                source.name
            ))
        })
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: the program compiled; the buffers have the size NVRTC reports.
            unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }
                .result()
                .map_err(|e| fail("nvrtcGetCUBINSize", e))?;
            let mut cubin = vec![0 as c_char; size];
            unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr()) }
                .result()
                .map_err(|e| fail("nvrtcGetCUBIN", e))?;
            Ok(cubin.into_iter().map(|c| c as u8).collect::<Vec<u8>>())
        });
    // SAFETY: created above and not destroyed yet.
    let _ = unsafe { result::destroy_program(program) };
    Ok(CompiledKernel {
        source: source.name,
        arch,
        cubin: cubin?,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compile check relies on NVRTC putting warnings into the log it returns.
    #[test]
    fn warnings_reach_the_log() {
        if require_nvrtc().is_err() {
            eprintln!("skipped: no libnvrtc");
            return;
        }
        let source = KernelSource {
            name: "warn.cu",
            code: "extern \"C\" __global__ void k(int* p) { int unused = 3; p[0] = 1; }",
            kernels: &["k"],
            defines: crate::cuda::source::no_defines,
        };
        let built = compile(&source, 80, false).expect("compiles");
        assert!(built.log.contains("warning"), "log: {}", built.log);
        let broken = KernelSource {
            code: "extern \"C\" __global__ void k(int* p) { p[0] = undefined; }",
            ..source
        };
        let err = compile(&broken, 80, false).expect_err("does not compile");
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    /// Threads compiling the same source at once all get the one result the cache keeps.
    #[test]
    fn racing_compiles_keep_one_result() {
        if require_nvrtc().is_err() {
            eprintln!("skipped: no libnvrtc");
            return;
        }
        let source = KernelSource {
            name: "race.cu",
            code: "extern \"C\" __global__ void k(int* p) { p[0] = 1; }",
            kernels: &["k"],
            defines: crate::cuda::source::no_defines,
        };
        let start = std::sync::Barrier::new(4);
        let built: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        compiled(&source, 80).expect("compiles")
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let kept = compiled(&source, 80).unwrap();
        assert!(built.iter().all(|b| Arc::ptr_eq(b, &kept)));
    }
}

//! Every kernel source compiles with NVRTC, through the library's own compile path, for the
//! architectures of the GPUs the CUDA path targets, without a warning, and defines every kernel
//! the host code launches. Needs libnvrtc (no GPU); without it the test says so and passes
//! unless `SGPO_RS_REQUIRE_NVRTC=1` (set by CI, which installs NVRTC).
#![cfg(feature = "cuda")]

use sgpo_rs::cuda::{availability, compile, SOURCES};

/// A100 (sm_80) and H100/H200 (sm_90).
const ARCHES: [u32; 2] = [80, 90];

#[test]
fn every_kernel_compiles_cleanly_for_sm80_and_sm90() {
    let found = availability();
    if !found.nvrtc {
        let required = std::env::var("SGPO_RS_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(!required, "NVRTC is required here: {:?}", found.reason);
        eprintln!("skipped: {:?}", found.reason);
        return;
    }
    for arch in ARCHES {
        for source in SOURCES {
            let built = compile(source, arch, true)
                .unwrap_or_else(|e| panic!("{} for sm_{arch}: {e}", source.name));
            let lower = built.log.to_lowercase();
            assert!(
                !lower.contains("warning") && !lower.contains("error"),
                "{} for sm_{arch} has diagnostics:\n{}",
                source.name,
                built.log
            );
            // Every resource line ptxas prints (NVRTC 13.0 prints none) reports no spills.
            let spills: Vec<&str> = lower
                .lines()
                .filter(|line| line.contains("spill"))
                .filter(|line| !line.contains(" 0 bytes spill stores, 0 bytes spill loads"))
                .collect();
            assert!(
                spills.is_empty(),
                "{} for sm_{arch} spills registers: {spills:?}\n{}",
                source.name,
                built.log
            );
            for kernel in source.kernels {
                let needle = kernel.as_bytes();
                assert!(
                    built.cubin.windows(needle.len()).any(|w| w == needle),
                    "{} for sm_{arch} does not define {kernel}",
                    source.name
                );
            }
            println!(
                "{} sm_{arch}: {} bytes\n{}",
                source.name,
                built.cubin.len(),
                built.log
            );
        }
    }
}

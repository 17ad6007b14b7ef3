//! Link the binaries with packed relative relocations (`DT_RELR`) where the
//! toolchain and C library support them.
//!
//! A position-independent `wk` carries one 24-byte `R_X86_64_RELATIVE`
//! entry for every pointer in its static data (vtables, string slices in
//! statics): about 87,000 of them, a 2 MB `.rela.dyn` that the dynamic
//! loader reads at every start and whose pages then stay in each process's
//! RSS. `-z pack-relative-relocs` (binutils 2.38, glibc 2.36) encodes the
//! same relocations as bitmaps in a few KiB; the binary stays
//! position-independent, so ASLR is unchanged (docs/benchmarks.md,
//! "Packed relocations").
//!
//! The flag is only passed after a probe program linked with it runs on
//! this machine, so an older linker or C library builds as before.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // the probe must run here, so only native Linux/glibc builds
    if target != host || os != "linux" || env != "gnu" {
        return;
    }
    if probe() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    } else {
        println!(
            "cargo:warning=linker or C library without -z pack-relative-relocs: \
             binaries keep their full relocation table"
        );
    }
}

/// Whether a C program linked with `-z pack-relative-relocs` links and runs.
fn probe() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let src = out.join("relr-probe.c");
    let bin = out.join("relr-probe");
    // a pointer in static data, so the probe has a relative relocation
    let program = "const char *p = \"relr\";\nint main(void) { return p[0] != 'r'; }\n";
    if std::fs::write(&src, program).is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(cc)
        .args(["-fPIE", "-pie", "-Wl,-z,pack-relative-relocs", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success());
    linked && Command::new(&bin).status().is_ok_and(|s| s.success())
}

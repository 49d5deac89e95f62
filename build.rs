//! Link settings that keep the daemon's idle memory small (SPEC §11; docs/performance.md,
//! "Idle memory"). Both are for the `autohealer` binary only, and only where the linker is the
//! toolchain's own lld (x86_64 Linux with glibc, Rust 1.90 and later); elsewhere the binary is
//! linked as it always was. `AUTOHEALER_PLAIN_LINK=1` turns both off.
//!
//! - `--symbol-ordering-file=link/startup.order`: the functions and data the first second
//!   touches, laid out first and together. The kernel maps a binary 64 KiB at a time around
//!   each page touched, so startup code scattered over the text keeps most of it resident.
//! - `-z pack-relative-relocs` (DT_RELR, glibc 2.36 and later): the relocations the dynamic
//!   loader reads at every start, 330 KiB as a table of addresses, packed into a few KiB.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/startup.order");
    println!("cargo:rerun-if-env-changed=AUTOHEALER_PLAIN_LINK");
    if std::env::var_os("AUTOHEALER_PLAIN_LINK").is_some_and(|v| v != "0") {
        return;
    }
    if !links_with_rust_lld() {
        return;
    }
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/startup.order");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=autohealer=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names the order file holds that this build does not have (it was made from an
        // earlier one) are skipped; lld would warn about each.
        println!("cargo:rustc-link-arg-bin=autohealer=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=autohealer=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether rustc links this target with its own lld: the default for x86_64-unknown-linux-gnu
/// since Rust 1.90, unless a linker is chosen: in Cargo's configuration or environment (Cargo
/// then tells build scripts through `RUSTC_LINKER`) or in RUSTFLAGS.
fn links_with_rust_lld() -> bool {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("HOST") != var("TARGET") {
        return false;
    }
    if var("CARGO_ENCODED_RUSTFLAGS").contains("link") || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let Some(version) = first_line(&rustc, &["--version"]) else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}

/// Whether the C library the binary is linked against is glibc of at least this version
/// (`getconf GNU_LIBC_VERSION` prints "glibc 2.36").
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Some(line) = first_line("getconf", &["GNU_LIBC_VERSION"]) else {
        return false;
    };
    let mut parts = line
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(have_major), Some(have_minor)) => (have_major, have_minor) >= (major, minor),
        _ => false,
    }
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    text.lines().next().map(str::to_string)
}

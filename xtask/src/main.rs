//! `cargo xtask`: the project's own commands.
//!
//! - `cargo xtask demo`: provisions a device against the loopback test bed.
//! - `cargo xtask test`: formatting, lints and every test.
//! - `cargo xtask bench`: measures the release build and rewrites BENCHMARKS.md.
//! - `cargo xtask nostd`: proves the core builds without std and alloc.
//! - `cargo xtask fuzz`: runs the core's fuzz targets for a bounded time.
//! - `cargo xtask cross`: builds and tests the release binary for aarch64 or armv7.
#![forbid(unsafe_code)]

mod bench;
mod cross;
mod fuzz;
mod nostd;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo    start the loopback test bed and provision a device with the real binary
  test    run cargo fmt --check, clippy with -D warnings, and every test
  bench   measure the release build on the loopback test bed; rewrite BENCHMARKS.md
  nostd   build the core into a no_std static library for x86_64 and armv7
  fuzz    run each fuzz target of the core for a bounded time (--seconds N)
  cross   build a release binary for --target aarch64|armv7 [--static] [--test]";

/// Debian packages the test bed needs: the MQTT broker and its plugin
/// headers (the IoT Core emulator is a broker plugin), cmake and clang for
/// building mbedtls, and openssl for the tests' independent certificate
/// checks.
const TEST_BED_PACKAGES: &[&str] = &[
    "mosquitto",
    "mosquitto-dev",
    "cmake",
    "clang",
    "libclang-dev",
    "openssl",
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("nostd") => nostd::check_no_std(&args[1..]),
        Some("fuzz") => fuzz::run_fuzzers(&args[1..]),
        Some("cross") => cross::cross(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(workspace_root());
    command
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let status = command
        .status()
        .map_err(|error| format!("cannot run {shown}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the test bed's Debian packages when they are missing and this
/// runs as root; otherwise says what to install.
fn ensure_test_bed_packages() -> Result<(), String> {
    let missing: Vec<&str> = TEST_BED_PACKAGES
        .iter()
        .copied()
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "the test bed needs these Debian packages: {}; install them with \
             `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    apt_install(&missing, None)
}

/// Installs Debian `packages` with apt-get, first adding the dpkg
/// architecture `foreign_arch` when given. Runs only as root.
fn apt_install(packages: &[impl AsRef<str>], foreign_arch: Option<&str>) -> Result<(), String> {
    if let Some(arch) = foreign_arch {
        run(Command::new("dpkg").args(["--add-architecture", arch]))?;
    }
    // Another apt-get may hold the dpkg lock, so wait for it instead of
    // failing.
    run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update"]))?;
    run(Command::new("apt-get")
        .args([
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "-y",
            "--no-install-recommends",
        ])
        .args(packages.iter().map(AsRef::as_ref))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Returns cargo's target folder: `CARGO_TARGET_DIR`, relative to the
/// workspace (where xtask runs cargo) unless absolute, or `target` there.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Builds the binaries the test bed runs: the tool itself and the stand-ins.
fn build_binaries(release: bool) -> Result<(), String> {
    let mut command = cargo();
    command.args([
        "build",
        "-p",
        "fleet-provisioning",
        "-p",
        "fleet-provisioning-testbed",
        "--bins",
    ]);
    if release {
        command.arg("--release");
    }
    run(&mut command)
}

fn demo(args: &[String]) -> Result<(), String> {
    ensure_test_bed_packages()?;
    build_binaries(false)?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "fleet-provisioning-testbed",
            "--bin",
            "demo",
            "--",
        ])
        .args(args))
}

fn test(args: &[String]) -> Result<(), String> {
    ensure_test_bed_packages()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    build_binaries(false)?;
    run(cargo().args(["test", "--workspace"]).args(args))?;
    nostd::check_no_std(&[])?;
    cross::test_armv7()
}

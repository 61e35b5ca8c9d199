//! `cargo xtask nostd`: proves that `fleet-provisioning-core` and every
//! dependency it enables need neither `std` nor `alloc`, on x86_64 and on
//! 32-bit armv7.
//!
//! It builds `core/nostd-check`, a `#![no_std]` static library with its own
//! panic handler and no allocator, once per feature set and target. Linking
//! `std` into it fails with a duplicate `panic_impl` lang item, and linking
//! `alloc` fails for want of a global allocator. Two canary features make it
//! link each on purpose, and the check requires both builds to fail, so a
//! check that can no longer fail is noticed. When a C compiler (and, for
//! armv7, qemu) is present, the library is also linked into a small C
//! program that runs one provisioning through the state machine.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt_install, cargo, is_root, run, workspace_root};

const CHECK_DIR: &str = "core/nostd-check";
const STATIC_LIB: &str = "libfleet_provisioning_nostd_check.a";
const ARMV7_TARGET: &str = "armv7-unknown-linux-gnueabihf";
/// Debian's compiler: the `rustc-web` package of Debian 12 ships a core
/// library for armv7 through multiarch (`libstd-rust-web-dev:armhf`), where
/// rustup cannot download targets.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const ARMV7_DEBIAN_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev:armhf"];
const ARMV7_CC: &str = "arm-linux-gnueabihf-gcc";
const ARMV7_QEMU: &str = "qemu-arm-static";
const ARMV7_SYSROOT: &str = "/usr/arm-linux-gnueabihf";

/// Feature sets of the check crate that must build: the core alone and with
/// each optional logging backend.
const FEATURE_SETS: &[&str] = &["", "defmt", "log"];

/// Canary features of the check crate and the compiler message that proves
/// the build failed for the intended reason.
const CANARIES: &[(&str, &str)] = &[
    ("canary-std", "duplicate lang item"),
    ("canary-alloc", "no global memory allocator"),
];

/// One compiler and target to build the check for.
struct Platform {
    /// Name for messages: the target triple.
    name: String,
    /// `--target` triple, or `None` for the host.
    target: Option<&'static str>,
    /// Compiler to use instead of the default one.
    rustc: Option<PathBuf>,
    /// Cargo target folder, separate per compiler so that two compilers
    /// never share build artefacts.
    target_dir: PathBuf,
}

/// Runs every check of `cargo xtask nostd`.
pub fn check_no_std(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "nostd takes no arguments, got {extra:?}; run `cargo xtask nostd`"
        ));
    }
    let root = workspace_root();
    for feature in ["defmt", "log"] {
        run(cargo().args([
            "build",
            "-p",
            "fleet-provisioning-core",
            "--features",
            feature,
        ]))?;
    }
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(manifest(&root)))?;

    let target_base = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let host = Platform {
        name: host_triple(),
        target: None,
        rustc: None,
        target_dir: target_base.join("nostd-check"),
    };
    run(check_cargo(&root, &host, "clippy").args(["--release", "--", "-D", "warnings"]))?;
    let armv7 = armv7_platform(&target_base)?;

    let feature_list: Vec<&str> = FEATURE_SETS
        .iter()
        .map(|features| match *features {
            "" => "no features",
            named => named,
        })
        .collect();
    let feature_list = feature_list.join(", ");
    let mut summary = Vec::new();
    for platform in [&host, &armv7] {
        check_platform(&root, platform)?;
        let selftest = run_selftest(&root, platform)?;
        summary.push(format!(
            "{}: builds without std and alloc ({feature_list}); {selftest}",
            platform.name
        ));
    }
    for line in summary {
        eprintln!("xtask: nostd: {line}");
    }
    Ok(())
}

fn manifest(root: &Path) -> PathBuf {
    root.join(CHECK_DIR).join("Cargo.toml")
}

/// Returns a cargo `subcommand` for the check crate on `platform`.
fn check_cargo(root: &Path, platform: &Platform, subcommand: &str) -> Command {
    let mut command = cargo();
    command.env_remove("RUSTC");
    if let Some(rustc) = &platform.rustc {
        command.env("RUSTC", rustc);
    }
    command
        .arg(subcommand)
        .arg("--manifest-path")
        .arg(manifest(root))
        .arg("--target-dir")
        .arg(&platform.target_dir);
    command
}

/// Builds the check crate for every feature set, and each canary, which
/// must fail.
fn check_platform(root: &Path, platform: &Platform) -> Result<(), String> {
    for features in FEATURE_SETS {
        let mut command = check_cargo(root, platform, "build");
        command.arg("--release");
        if let Some(target) = platform.target {
            command.args(["--target", target]);
        }
        if !features.is_empty() {
            command.args(["--features", features]);
        }
        run(&mut command)?;
    }
    for (feature, expected) in CANARIES {
        let mut command = check_cargo(root, platform, "build");
        command.args(["--features", feature]);
        if let Some(target) = platform.target {
            command.args(["--target", target]);
        }
        let shown = format!("{command:?}");
        eprintln!("xtask: running {shown} (must fail)");
        let output = command
            .output()
            .map_err(|error| format!("cannot run {shown}: {error}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return Err(format!(
                "the no_std check on {} built with `{feature}`, which links std or alloc on \
                 purpose, so it would not catch a dependency that does; check that \
                 {CHECK_DIR} is still #![no_std] with its own panic handler and no allocator",
                platform.name
            ));
        }
        if !stderr.contains(expected) {
            return Err(format!(
                "the no_std check on {} with `{feature}` failed, but not with \"{expected}\"; \
                 fix the build error first:\n{stderr}",
                platform.name
            ));
        }
    }
    Ok(())
}

/// Returns the platform for armv7, installing its core library when it is
/// missing and this runs as root.
fn armv7_platform(target_base: &Path) -> Result<Platform, String> {
    let default_rustc = env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rustc"));
    if has_core_library(&default_rustc) {
        return Ok(Platform {
            name: ARMV7_TARGET.to_owned(),
            target: Some(ARMV7_TARGET),
            rustc: None,
            target_dir: target_base.join("nostd-check"),
        });
    }
    let debian_rustc = PathBuf::from(DEBIAN_RUSTC);
    if !has_core_library(&debian_rustc) {
        install_armv7_core_library()?;
        if !has_core_library(&debian_rustc) {
            return Err(format!(
                "{DEBIAN_RUSTC} still has no core library for {ARMV7_TARGET} after \
                 installing {}; check `{DEBIAN_RUSTC} --print target-libdir --target \
                 {ARMV7_TARGET}`",
                ARMV7_DEBIAN_PACKAGES.join(" ")
            ));
        }
    }
    Ok(Platform {
        name: ARMV7_TARGET.to_owned(),
        target: Some(ARMV7_TARGET),
        rustc: Some(debian_rustc),
        target_dir: target_base.join("nostd-check-debian-rustc"),
    })
}

/// Returns the target triple of the default compiler's host, for messages.
fn host_triple() -> String {
    Command::new("rustc")
        .arg("-vV")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        })
        .unwrap_or_else(|| "host".to_owned())
}

/// Returns whether `rustc` has a precompiled core library for armv7.
fn has_core_library(rustc: &Path) -> bool {
    let Ok(output) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", ARMV7_TARGET])
        .output()
    else {
        return false;
    };
    if !output.status.success() {
        return false;
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    fs::read_dir(libdir)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

fn install_armv7_core_library() -> Result<(), String> {
    if !is_root() {
        return Err(format!(
            "no Rust core library for {ARMV7_TARGET} was found; install it with \
             `rustup target add {ARMV7_TARGET}`, or on Debian 12 with \
             `sudo dpkg --add-architecture armhf && sudo apt-get update && \
             sudo apt-get install -y {}`",
            ARMV7_DEBIAN_PACKAGES.join(" ")
        ));
    }
    eprintln!(
        "xtask: installing {} for the {ARMV7_TARGET} core library",
        ARMV7_DEBIAN_PACKAGES.join(" ")
    );
    apt_install(ARMV7_DEBIAN_PACKAGES, Some("armhf"))
}

fn command_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// Links the release library into `selftest.c` and runs it, when the
/// platform's C compiler (and, for armv7, qemu) is installed. Returns a
/// description of what happened.
fn run_selftest(root: &Path, platform: &Platform) -> Result<String, String> {
    let (compiler, runner): (&str, Option<Vec<&str>>) = match platform.target {
        None => ("cc", None),
        Some(_) => (ARMV7_CC, Some(vec![ARMV7_QEMU, "-L", ARMV7_SYSROOT])),
    };
    let missing: Vec<&str> = std::iter::once(compiler)
        .chain(runner.iter().flat_map(|runner| runner.first().copied()))
        .filter(|tool| !command_exists(tool))
        .collect();
    if !missing.is_empty() {
        return Ok(format!(
            "self-test not run: {} not installed",
            missing.join(" and ")
        ));
    }
    let mut release_dir = platform.target_dir.clone();
    if let Some(target) = platform.target {
        release_dir.push(target);
    }
    release_dir.push("release");
    let program = release_dir.join("fpc-selftest");
    run(Command::new(compiler)
        .arg(root.join(CHECK_DIR).join("selftest.c"))
        .arg(release_dir.join(STATIC_LIB))
        .arg("-o")
        .arg(&program))?;
    let mut command = match &runner {
        Some(runner) => {
            let mut command = Command::new(runner[0]);
            command.args(&runner[1..]).arg(&program);
            command
        }
        None => Command::new(&program),
    };
    run(&mut command)?;
    Ok("self-test provisioning run passed".to_owned())
}

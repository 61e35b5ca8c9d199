//! `cargo xtask cross`: release builds of `fleet-provisioning` for ARM
//! gateways, and their tests under qemu-user.
//!
//! rustup's standard library here is x86_64 only, so the ARM builds use
//! Debian 12's `rustc-web` (`/usr/bin/rustc`), which ships the standard
//! library of each architecture through multiarch
//! (`libstd-rust-web-dev:arm64`, `:armhf`). Each architecture and linking
//! mode gets its own cargo target folder, so that this compiler and rustup's
//! never share build artefacts.
//!
//! Emulated programs run with `qemu-*-static -L /`: they load the multiarch
//! `libc6:armhf` / `libc6:arm64` that the standard library packages depend
//! on. With `-L /usr/<triple>`, qemu takes the dynamic loader of the cross
//! sysroot (`libc6-*-cross`, another glibc build) but still finds the
//! multiarch `libc.so.6` under `/lib/<triple>`, and the mix crashes in
//! `pthread_create` (seen with Debian 12's qemu 7.2 and glibc 2.36).
//!
//! The static binary (`--static`) links glibc 2.36 with `+crt-static`. Its
//! user and group lookups (`getpwnam_r`, `getgrnam_r`) read `/etc/passwd`
//! and `/etc/group` without loading any NSS library, so `--owner` works
//! with names and numeric ids when those files exist. Other NSS sources
//! (LDAP, systemd) work only where the device has glibc's shared NSS
//! modules of the same glibc version. Without
//! `/etc/passwd`, glibc returns ENOENT, which the tool reports as a failed
//! owner lookup, even for a numeric owner.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt_install, cargo, ensure_test_bed_packages, is_root, package_installed, run};

const USAGE: &str = "usage: cargo xtask cross --target aarch64|armv7 [--static] [--test]

Builds a release fleet-provisioning for the target with Debian's rustc-web
and checks that it starts under qemu-user.

  --target NAME  aarch64 (aarch64-unknown-linux-gnu) or armv7
                 (armv7-unknown-linux-gnueabihf)
  --static       also build a statically linked binary (glibc, +crt-static)
                 and check that it runs in an empty root file system
  --test         also run the unit tests of fleet-provisioning-core and
                 fleet-provisioning under qemu, and the end-to-end tests
                 (tests/tests/e2e.rs) on the host test bed with the ARM binary";

/// Debian's Rust compiler and documentation tool (`rustc-web`).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUSTDOC: &str = "/usr/bin/rustdoc";
const PACKAGE: &str = "fleet-provisioning";

/// End-to-end tests that assume host speed, skipped when the tool runs
/// under qemu.
// NOTE: this test's proxy cuts the first tunnel 500 ms after opening it,
// to drop an MQTT connection that is already up. Under qemu the TLS
// handshake alone takes longer, so the cut lands in the handshake and the
// test fails although the tool reconnects correctly.
const SLOW_UNDER_EMULATION: &[&str] = &["direct_reconnects_and_resubscribes_after_drop"];
const BINARY: &str = "fleet-provisioning";

/// One ARM target and the Debian names that go with it.
#[derive(Clone, Copy, Debug)]
pub struct Arch {
    /// Short name used on the command line and in folder names.
    name: &'static str,
    /// Rust target triple.
    triple: &'static str,
    /// GNU triple: prefix of the cross tools and name of their sysroot
    /// under /usr.
    gnu_triple: &'static str,
    /// Debian architecture.
    debian_arch: &'static str,
    /// qemu-user emulator.
    qemu: &'static str,
}

/// 64-bit ARM (Cortex-A53 and later gateways).
pub const AARCH64: Arch = Arch {
    name: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    gnu_triple: "aarch64-linux-gnu",
    debian_arch: "arm64",
    qemu: "qemu-aarch64-static",
};

/// 32-bit ARMv7 with hardware floating point (Raspberry Pi 2 and similar).
pub const ARMV7: Arch = Arch {
    name: "armv7",
    triple: "armv7-unknown-linux-gnueabihf",
    gnu_triple: "arm-linux-gnueabihf",
    debian_arch: "armhf",
    qemu: "qemu-arm-static",
};

impl Arch {
    fn from_name(name: &str) -> Option<Arch> {
        [AARCH64, ARMV7]
            .into_iter()
            .find(|arch| arch.name == name || arch.triple == name)
    }

    /// Returns the target triple as cargo spells it in environment variable names.
    fn env_triple(&self) -> String {
        self.triple.to_uppercase().replace('-', "_")
    }

    /// Returns the target triple as the cc and bindgen crates spell it in
    /// environment variable names.
    fn cc_triple(&self) -> String {
        self.triple.replace('-', "_")
    }

    fn gcc(&self) -> String {
        format!("{}-gcc", self.gnu_triple)
    }

    fn readelf(&self) -> String {
        format!("{}-readelf", self.gnu_triple)
    }

    /// Debian packages that build and run this target.
    fn debian_packages(&self) -> Vec<String> {
        vec![
            "rustc-web".to_owned(),
            format!("libstd-rust-web-dev:{}", self.debian_arch),
            format!("gcc-{}", self.gnu_triple),
            format!("libc6-dev-{}-cross", self.debian_arch),
            "qemu-user-static".to_owned(),
            "cmake".to_owned(),
            "clang".to_owned(),
            "libclang-dev".to_owned(),
        ]
    }

    /// Returns the qemu command line prefix that runs this target's
    /// dynamically linked programs with the multiarch libraries.
    fn qemu_command(&self) -> Vec<String> {
        vec![self.qemu.to_owned(), "-L".to_owned(), "/".to_owned()]
    }
}

/// Linking mode of the release binary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Linking {
    /// Against the target's shared glibc.
    Dynamic,
    /// Statically, glibc included (`-C target-feature=+crt-static`).
    Static,
}

#[derive(Debug)]
struct Options {
    arch: Arch,
    build_static: bool,
    test: bool,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut arch = None;
    let mut build_static = false;
    let mut test = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--target" => {
                let value = iter
                    .next()
                    .ok_or_else(|| format!("--target needs a value\n\n{USAGE}"))?;
                arch = Some(Arch::from_name(value).ok_or_else(|| {
                    format!("unknown target {value:?}: use aarch64 or armv7\n\n{USAGE}")
                })?);
            }
            "--static" => build_static = true,
            "--test" => test = true,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    let arch = arch.ok_or_else(|| format!("--target is missing\n\n{USAGE}"))?;
    Ok(Options {
        arch,
        build_static,
        test,
    })
}

/// Runs `cargo xtask cross`.
pub fn cross(args: &[String]) -> Result<(), String> {
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let options = parse_options(args)?;
    let arch = options.arch;
    ensure_packages(arch)?;

    if options.test {
        run_unit_tests(arch)?;
    }

    let mut built = Vec::new();
    let dynamic = build_release(arch, Linking::Dynamic)?;
    check_starts_under_qemu(arch, &dynamic)?;
    built.push(("dynamic", dynamic.clone()));

    if options.build_static {
        let static_binary = build_release(arch, Linking::Static)?;
        check_static(arch, &static_binary, &dynamic)?;
        built.push(("static", static_binary));
    }

    if options.test {
        for (_, binary) in &built {
            run_end_to_end_tests(arch, binary)?;
        }
    }

    for (linking, binary) in &built {
        let size = fs::metadata(binary)
            .map(|metadata| metadata.len().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        println!(
            "{} {linking}: {} ({size} bytes, stripped)",
            arch.triple,
            binary.display()
        );
    }
    Ok(())
}

/// Runs the armv7 leg of `cargo xtask test`: the unit tests under qemu,
/// then the end-to-end tests with the release armv7 binary.
pub fn test_armv7() -> Result<(), String> {
    ensure_packages(ARMV7)?;
    run_unit_tests(ARMV7)?;
    let binary = build_release(ARMV7, Linking::Dynamic)?;
    check_starts_under_qemu(ARMV7, &binary)?;
    run_end_to_end_tests(ARMV7, &binary)
}

/// Installs the Debian packages `arch` needs when some are missing and this
/// runs as root; otherwise returns the commands that install them.
fn ensure_packages(arch: Arch) -> Result<(), String> {
    let foreign_arch_missing = !foreign_architectures().contains(&arch.debian_arch.to_owned());
    let missing: Vec<String> = arch
        .debian_packages()
        .into_iter()
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        let add_arch = if foreign_arch_missing {
            format!("sudo dpkg --add-architecture {} && ", arch.debian_arch)
        } else {
            String::new()
        };
        return Err(format!(
            "building for {} needs these Debian 12 packages: {}; install them with \
             `{add_arch}sudo apt-get update && sudo apt-get install -y {}`",
            arch.triple,
            missing.join(" "),
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    apt_install(&missing, foreign_arch_missing.then_some(arch.debian_arch))
}

fn foreign_architectures() -> Vec<String> {
    Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the cargo target folder of Debian's compiler for `arch` and
/// `linking`. Static builds get their own folder because their RUSTFLAGS
/// differ, which would otherwise rebuild everything on each switch.
fn target_dir(arch: Arch, linking: Linking) -> PathBuf {
    let name = match linking {
        Linking::Dynamic => format!("cross-{}", arch.name),
        Linking::Static => format!("cross-{}-static", arch.name),
    };
    crate::target_dir().join(name)
}

/// Returns a cargo command set up to build for `arch` with Debian's
/// compiler, the GNU cross tools and qemu as the test runner.
fn cross_cargo(arch: Arch, linking: Linking) -> Command {
    let env_triple = arch.env_triple();
    let cc_triple = arch.cc_triple();
    let mut command = cargo();
    command
        .env("CARGO_TARGET_DIR", target_dir(arch, linking))
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", DEBIAN_RUSTDOC)
        // A wrapper (sccache, clippy-driver) would mix compilers.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // These would take precedence over the target's RUSTFLAGS below.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(format!("CARGO_TARGET_{env_triple}_LINKER"), arch.gcc())
        .env(
            format!("CARGO_TARGET_{env_triple}_RUNNER"),
            arch.qemu_command().join(" "),
        )
        .env(format!("CC_{cc_triple}"), arch.gcc())
        .env(format!("AR_{cc_triple}"), format!("{}-ar", arch.gnu_triple))
        // bindgen parses the Mbed TLS headers with libclang, which must see
        // the target's types (32-bit size_t and pthread_mutex_t on armv7)
        // and the target's glibc headers.
        .env(
            format!("BINDGEN_EXTRA_CLANG_ARGS_{cc_triple}"),
            format!(
                "--target={} --sysroot=/usr/{}",
                arch.triple, arch.gnu_triple
            ),
        );
    if linking == Linking::Static {
        command.env(
            format!("CARGO_TARGET_{env_triple}_RUSTFLAGS"),
            "-C target-feature=+crt-static",
        );
    }
    command
}

/// Builds the release binary and returns its path.
fn build_release(arch: Arch, linking: Linking) -> Result<PathBuf, String> {
    run(cross_cargo(arch, linking).args([
        "build",
        "--release",
        "-p",
        PACKAGE,
        "--target",
        arch.triple,
    ]))?;
    let binary = target_dir(arch, linking)
        .join(arch.triple)
        .join("release")
        .join(BINARY);
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "cargo built for {} but {} is missing",
            arch.triple,
            binary.display()
        ))
    }
}

/// Runs the unit and integration tests of the core and of the binary
/// package under qemu.
fn run_unit_tests(arch: Arch) -> Result<(), String> {
    run(cross_cargo(arch, Linking::Dynamic).args([
        "test",
        "--target",
        arch.triple,
        "-p",
        "fleet-provisioning-core",
        "-p",
        PACKAGE,
    ]))
}

/// Runs `binary --version` under qemu and checks what it prints.
fn check_starts_under_qemu(arch: Arch, binary: &Path) -> Result<(), String> {
    let qemu = arch.qemu_command();
    let output = output_of(
        Command::new(&qemu[0])
            .args(&qemu[1..])
            .arg(binary)
            .arg("--version"),
    )?;
    expect_version(&output, &format!("{binary:?} under {}", arch.qemu))
}

fn output_of(command: &mut Command) -> Result<std::process::Output, String> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    command
        .output()
        .map_err(|error| format!("cannot run {shown}: {error}"))
}

fn expect_version(output: &std::process::Output, description: &str) -> Result<(), String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!("{BINARY} {}", env!("CARGO_PKG_VERSION"));
    if output.status.success() && stdout.trim() == expected {
        eprintln!("xtask: {description} printed {expected:?}");
        Ok(())
    } else {
        Err(format!(
            "{description} --version exited with {} and printed {:?} (expected {expected:?}); \
             standard error: {}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Checks that `binary` needs no shared library: its ELF headers name no
/// dynamic loader and no library, and it prints its version in a root file
/// system that holds only qemu and itself. The dynamically linked
/// `control` binary must fail in the same root, which proves that the
/// check can fail.
fn check_static(arch: Arch, binary: &Path, control: &Path) -> Result<(), String> {
    let headers = output_of(
        Command::new(arch.readelf())
            .args(["--program-headers", "--dynamic"])
            .arg(binary),
    )?;
    if !headers.status.success() {
        return Err(format!(
            "{} could not read {}: {}",
            arch.readelf(),
            binary.display(),
            String::from_utf8_lossy(&headers.stderr).trim()
        ));
    }
    let headers = String::from_utf8_lossy(&headers.stdout);
    if let Some(line) = headers
        .lines()
        .find(|line| line.contains("INTERP") || line.contains("(NEEDED)"))
    {
        return Err(format!(
            "{} is not statically linked: its headers contain {:?}",
            binary.display(),
            line.trim()
        ));
    }

    let root = target_dir(arch, Linking::Static).join("empty-root");
    let static_run = run_in_empty_root(arch, binary, &root)?;
    expect_version(
        &static_run,
        &format!("{} in an empty root file system", binary.display()),
    )?;

    let control_run = run_in_empty_root(arch, control, &root)?;
    if control_run.status.success() {
        return Err(format!(
            "the dynamically linked {} also ran in the empty root {}, so that root \
             does not prove the static binary needs no shared library",
            control.display(),
            root.display()
        ));
    }
    eprintln!(
        "xtask: the dynamically linked binary failed there as expected ({})",
        control_run.status
    );
    Ok(())
}

/// Runs `binary --version` under qemu inside a fresh root folder that holds
/// only the emulator and the binary. chroot needs root, so other users get
/// a user namespace through `unshare --map-root-user`.
fn run_in_empty_root(
    arch: Arch,
    binary: &Path,
    root: &Path,
) -> Result<std::process::Output, String> {
    if root.exists() {
        fs::remove_dir_all(root)
            .map_err(|error| format!("cannot remove {}: {error}", root.display()))?;
    }
    fs::create_dir_all(root)
        .map_err(|error| format!("cannot create {}: {error}", root.display()))?;
    let qemu_path = find_on_path(arch.qemu)?;
    let copy = |from: &Path, name: &str| {
        fs::copy(from, root.join(name)).map_err(|error| {
            format!(
                "cannot copy {} into {}: {error}",
                from.display(),
                root.display()
            )
        })
    };
    copy(&qemu_path, arch.qemu)?;
    copy(binary, BINARY)?;

    let qemu_inside = format!("/{}", arch.qemu);
    let binary_inside = format!("/{BINARY}");
    let mut command = if is_root() {
        Command::new("chroot")
    } else {
        let mut unshare = Command::new("unshare");
        unshare.args(["--map-root-user", "chroot"]);
        unshare
    };
    // `-L /` inside the root: qemu looks for the dynamic loader there and
    // finds nothing, as on a bare device.
    command.arg(root).args([
        qemu_inside.as_str(),
        "-L",
        "/",
        binary_inside.as_str(),
        "--version",
    ]);
    output_of(&mut command)
}

fn find_on_path(name: &str) -> Result<PathBuf, String> {
    env::var_os("PATH")
        .and_then(|paths| {
            env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| format!("{name} is not on PATH; install qemu-user-static"))
}

/// Runs tests/tests/e2e.rs on the host test bed with `binary` as the tool.
/// The test bed executes the tool directly, and binfmt_misc may not be set
/// up for ARM, so it runs a wrapper script that starts qemu.
fn run_end_to_end_tests(arch: Arch, binary: &Path) -> Result<(), String> {
    ensure_test_bed_packages()?;
    let wrapper = write_qemu_wrapper(arch, binary)?;
    run(cargo()
        .args(["test", "-p", "fleet-provisioning-testbed", "--test", "e2e"])
        .arg("--")
        .args(
            SLOW_UNDER_EMULATION
                .iter()
                .flat_map(|name| ["--skip", name]),
        )
        .env("FLEET_PROVISIONING_BIN", &wrapper))
}

/// Writes an executable script beside `binary` that runs it under qemu with
/// the arguments it gets, and returns the script's path.
fn write_qemu_wrapper(arch: Arch, binary: &Path) -> Result<PathBuf, String> {
    let binary_text = binary
        .to_str()
        .filter(|text| !text.contains('\''))
        .ok_or_else(|| {
            format!(
                "{} cannot be quoted in a shell script; use a target folder \
                 path without ' or non-UTF-8 bytes",
                binary.display()
            )
        })?;
    let wrapper = binary.with_file_name(format!("{BINARY}-qemu"));
    let script = format!(
        "#!/bin/sh\n# Runs the {} build of {BINARY} under qemu-user.\nexec {} '{binary_text}' \"$@\"\n",
        arch.triple,
        arch.qemu_command().join(" ")
    );
    fs::write(&wrapper, script)
        .map_err(|error| format!("cannot write {}: {error}", wrapper.display()))?;
    make_executable(&wrapper)?;
    Ok(wrapper)
}

fn make_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|error| format!("cannot make {} executable: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn options_accept_short_and_full_target_names() {
        for name in ["armv7", "armv7-unknown-linux-gnueabihf"] {
            let options = parse_options(&strings(&["--target", name])).unwrap();
            assert_eq!(options.arch.triple, "armv7-unknown-linux-gnueabihf");
            assert!(!options.build_static);
            assert!(!options.test);
        }
        let options =
            parse_options(&strings(&["--static", "--target", "aarch64", "--test"])).unwrap();
        assert_eq!(options.arch.triple, "aarch64-unknown-linux-gnu");
        assert!(options.build_static);
        assert!(options.test);
    }

    #[test]
    fn options_reject_missing_or_unknown_target() {
        let missing = parse_options(&strings(&["--static"])).unwrap_err();
        assert!(missing.contains("--target is missing"), "{missing}");
        let unknown = parse_options(&strings(&["--target", "mips"])).unwrap_err();
        assert!(unknown.contains("unknown target \"mips\""), "{unknown}");
        let no_value = parse_options(&strings(&["--target"])).unwrap_err();
        assert!(no_value.contains("--target needs a value"), "{no_value}");
    }

    #[test]
    fn environment_names_follow_cargo_and_cc() {
        assert_eq!(ARMV7.env_triple(), "ARMV7_UNKNOWN_LINUX_GNUEABIHF");
        assert_eq!(ARMV7.cc_triple(), "armv7_unknown_linux_gnueabihf");
        assert_eq!(AARCH64.gcc(), "aarch64-linux-gnu-gcc");
        assert!(ARMV7
            .debian_packages()
            .contains(&"libstd-rust-web-dev:armhf".to_owned()));
    }
}

//! `cargo xtask bench`: measures the release build on the loopback test bed
//! and rewrites the benchmark section of BENCHMARKS.md.
//!
//! It builds the release binaries (and a second `fleet-provisioning` with
//! the `count-allocations` feature), runs `fleet-provisioning-bench`, which
//! times full provisioning runs and reads peak RSS and heap allocations,
//! runs the key generation benchmark, and measures the stripped binary. It
//! rewrites only the text between [`BEGIN_MARKER`] and [`END_MARKER`] and
//! keeps the rest of BENCHMARKS.md, which other commands write.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{cargo, ensure_test_bed_packages, run, target_dir, workspace_root};

/// Start of the section this command owns in BENCHMARKS.md.
const BEGIN_MARKER: &str = "<!-- bench:begin -->";
/// End of the section this command owns in BENCHMARKS.md.
const END_MARKER: &str = "<!-- bench:end -->";

/// Targets that the numbers are checked against.
const TARGET_IOTCORED_MS: f64 = 1000.0;
const TARGET_DIRECT_MS: f64 = 150.0;
const TARGET_RSS_MIB: f64 = 4.0;
const TARGET_AARCH64_MIB: f64 = 2.0;

const BENCH_USAGE: &str = "usage: cargo xtask bench [--runs N] [--memory-runs N] \
[--keygen-seconds S] [--no-valgrind] [--no-cross]

  --runs N            timed runs per transport (default 15)
  --memory-runs N     ptrace runs per transport for peak RSS (default 3)
  --keygen-seconds S  time per key generation benchmark (default 2)
  --no-valgrind       skip the valgrind count of every malloc call
  --no-cross          skip the armv7 and aarch64 builds (cargo xtask cross)";

/// Runs `cargo xtask bench`; [`BENCH_USAGE`] lists the options.
pub fn bench(args: &[String]) -> Result<(), String> {
    let mut bench_args: Vec<String> = Vec::new();
    let mut keygen_seconds = "2".to_owned();
    let mut cross = true;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--runs" | "--memory-runs" => {
                let value = rest
                    .next()
                    .ok_or(format!("{arg} needs a count\n{BENCH_USAGE}"))?;
                bench_args.push(arg.clone());
                bench_args.push(value.clone());
            }
            "--keygen-seconds" => {
                keygen_seconds = rest
                    .next()
                    .ok_or(format!("{arg} needs seconds\n{BENCH_USAGE}"))?
                    .clone();
            }
            "--no-valgrind" => bench_args.push(arg.clone()),
            "--no-cross" => cross = false,
            "-h" | "--help" => {
                println!("{BENCH_USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{BENCH_USAGE}")),
        }
    }
    ensure_test_bed_packages()?;
    if !has_valgrind() && !bench_args.iter().any(|arg| arg == "--no-valgrind") {
        eprintln!("xtask: valgrind is not installed; counting Rust allocations only");
        bench_args.push("--no-valgrind".to_owned());
    }

    let release = target_dir().join("release");
    let counting = build_release_binaries(&release)?;
    let machine = describe_machine()?;

    let mut provisioning = Command::new(release.join("fleet-provisioning-bench"));
    provisioning
        .arg("run")
        .arg("--fleet-provisioning")
        .arg(release.join("fleet-provisioning"))
        .arg("--iotcored")
        .arg(release.join("iotcored"))
        .arg("--counting")
        .arg(&counting)
        .args(&bench_args);
    let provisioning = capture(&mut provisioning)?;

    let keygen = capture(
        cargo()
            .args(["bench", "--quiet"])
            .args(BENCH_PACKAGES)
            .args(["--bench", "keygen", "--", "--seconds"])
            .arg(&keygen_seconds),
    )?;
    if cross {
        build_cross_binaries();
    }
    let sizes = binary_sizes(&release)?;

    let mut section = String::new();
    let command = if args.is_empty() {
        "cargo xtask bench".to_owned()
    } else {
        format!("cargo xtask bench {}", args.join(" "))
    };
    let _ = writeln!(section, "## Provisioning benchmark\n");
    let _ = writeln!(
        section,
        "Written by `{command}` on {}. Machine: {}.\n",
        machine.date, machine.description
    );
    let _ = writeln!(
        section,
        "Release build (`opt-level = \"z\"`, LTO, `panic = \"abort\"`, stripped) against the \
         loopback test bed: mosquitto with mutual TLS and the IoT Core emulator plugin, the \
         `gg_config` stand-in, and for `--transport iotcored` the test bed's iotcored \
         stand-in. The machine is shared with other builds, so compare numbers within one \
         run of this command and mind the spread.\n"
    );
    section.push_str(&provisioning);
    let _ = writeln!(section, "### Key generation\n");
    let _ = writeln!(
        section,
        "`cargo bench -p fleet-provisioning --bench keygen`: Mbed TLS 2.28 from \
         `mbedtls-sys-auto`, built by its own CMake build. RSA-2048 is not used by the \
         tool; it is here for comparison. Each operation runs for about \
         {keygen_seconds} s (at least 5 times).\n"
    );
    section.push_str(&keygen);
    let _ = writeln!(section);
    write_sizes(&mut section, &sizes);
    write_targets(&mut section, &provisioning, &sizes);
    section.push_str(BOUNDS);

    write_section(&workspace_root().join("BENCHMARKS.md"), &section)?;
    eprintln!("xtask: wrote the benchmark section of BENCHMARKS.md");
    Ok(())
}

/// Analysis of the limits behind the numbers, from profiling with strace
/// and `/proc/PID/smaps` on the machine and date it names.
const BOUNDS: &str = "### What bounds these numbers

Found by profiling on 2026-12-04 (strace timings, `/proc/PID/smaps` at exit, \
valgrind) on the machine above; the figures in this list are from that day, not \
from the run above.

- Round trips on the bed: mosquitto runs with `set_tcp_nodelay true`. With \
  Nagle's algorithm on (mosquitto's default), a reply PUBLISH written right after \
  a PUBACK waited for the client's delayed ACK, so the CreateCertificateFromCsr \
  and RegisterThing round trips took about 44 ms each instead of about 1 ms, and \
  the iotcored run's median was 199 ms instead of 110 ms (both at a load \
  average of 6 to 10). The iotcored \
  stand-in keeps rumqttc's default (Nagle on), so a SUBSCRIBE that follows a \
  PUBACK can still wait for the broker's delayed ACK, inside the step \
  \"Certificate check, checkpoint, RegisterThing subscription\".
- Durability: a run calls fsync about 14 times. Each file goes to a temporary \
  file that is synced, renamed and followed by a sync of its folder, and the \
  checkpoint is saved the same way after each step. One fsync took 0.2 to 11 ms \
  here (under strace, on a loaded machine), so the key step (about 2 ms of it is Mbed TLS, see the key generation \
  table) and the file writes are bounded by the storage, not the CPU.
- Stopping iotcored: the tool sends SIGTERM and polls for the exit. With a \
  10 ms interval this step took 10.4 ms of a 32.4 ms median run on a quiet \
  machine; the interval is now 1 ms.
- Peak RSS of the tool: the file-backed part dominates, and \
  `fleet-provisioning --version` alone reaches about 2.5 MiB (the row \
  \"none\" above). The kernel maps page-cache pages around each fault \
  (fault-around), so most of the executable (1.2 MiB resident of 1.3 MiB) and of \
  glibc (1.5 to 1.7 MiB) count, although every process that maps them shares \
  those pages. The anonymous part of a run is 0.5 to 0.6 MiB. In one run, \
  0.28 MiB of it was the main thread's stack (0.1 MiB with `--version`). Large \
  stack frames, which Rust's stack probes touch page by page, would explain it, \
  for example frames that hold the core's fixed-capacity values (a \
  `Provisioner` is about 50 KB); this was not traced further. \
  With a numeric `--owner`, glibc first looks the id up as a name \
  in every NSS source and loads libnss_systemd with libm and libcap, about \
  0.5 MiB more; this benchmark passes user and group names, as a device does.
- Heap: valgrind counts more than ten times as many `malloc` calls as the Rust \
  counter, because Mbed TLS is C and allocates through `calloc`; the direct \
  transport's TLS handshake runs in the tool's own process and adds the rest.
";

/// Packages of every build and `cargo bench` call here. Cargo unifies the
/// features of shared dependencies over the packages of one call, so the
/// same list keeps those dependencies (Mbed TLS among them) from being
/// rebuilt between calls.
const BENCH_PACKAGES: [&str; 6] = [
    "-p",
    "fleet-provisioning",
    "-p",
    "fleet-provisioning-testbed",
    "-p",
    "fleet-provisioning-bench",
];

/// Builds the `count-allocations` variant first and copies it aside, then
/// the normal release binaries, so that `release/fleet-provisioning` ends
/// up as the normal build. Returns the path of the copy.
fn build_release_binaries(release: &Path) -> Result<PathBuf, String> {
    run(cargo()
        .args(["build", "--release", "--bins"])
        .args(BENCH_PACKAGES)
        .args(["--features", "fleet-provisioning/count-allocations"]))?;
    let aside = release.join("bench");
    fs::create_dir_all(&aside)
        .map_err(|error| format!("creating {} failed: {error}", aside.display()))?;
    let counting = aside.join("fleet-provisioning-count-allocations");
    fs::copy(release.join("fleet-provisioning"), &counting)
        .map_err(|error| format!("copying to {} failed: {error}", counting.display()))?;
    run(cargo()
        .args(["build", "--release", "--bins"])
        .args(BENCH_PACKAGES))?;
    Ok(counting)
}

/// Builds the armv7 and aarch64 release binaries with `cargo xtask cross`.
/// A failed build leaves its size out of the table instead of failing the
/// benchmark, because it needs Debian cross packages and qemu.
fn build_cross_binaries() {
    for arch in ["armv7", "aarch64"] {
        if let Err(message) = crate::cross::cross(&["--target".to_owned(), arch.to_owned()]) {
            eprintln!(
                "xtask: the {arch} build failed, so BENCHMARKS.md gets no {arch} size: {message}"
            );
        }
    }
}

/// Runs `command`, passing its standard error through, and returns its
/// standard output.
fn capture(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot run {shown}: {error}"))?;
    if !output.status.success() {
        return Err(format!("{shown} failed with {}", output.status));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{shown} printed invalid UTF-8"))
}

fn has_valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

struct Machine {
    description: String,
    date: String,
}

/// CPU model, cores, kernel and compiler of this machine, and the date.
fn describe_machine() -> Result<Machine, String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = command_line_output(
        Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned())).arg("--version"),
    )?;
    let date = command_line_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    Ok(Machine {
        description: format!(
            "{cpu}, {cores} cores available, Linux {kernel}, {rustc}; load average {load} \
             at the start"
        ),
        date,
    })
}

fn command_line_output(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|error| format!("cannot run {shown}: {error}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Size in bytes of the release `fleet-provisioning` per target triple.
fn binary_sizes(release: &Path) -> Result<Vec<(String, Option<u64>)>, String> {
    let host = release.join("fleet-provisioning");
    let host_size = fs::metadata(&host)
        .map_err(|error| format!("reading {} failed: {error}", host.display()))?
        .len();
    let mut sizes = vec![("x86_64-unknown-linux-gnu".to_owned(), Some(host_size))];
    // `cargo xtask cross --target ARCH` builds into `cross-ARCH/TRIPLE`,
    // a plain `cargo build --target TRIPLE` into `TRIPLE`.
    for (arch, triple) in [
        ("armv7", "armv7-unknown-linux-gnueabihf"),
        ("aarch64", "aarch64-unknown-linux-gnu"),
    ] {
        let size = [
            target_dir().join(format!("cross-{arch}")).join(triple),
            target_dir().join(triple),
        ]
        .iter()
        .find_map(|dir| fs::metadata(dir.join("release/fleet-provisioning")).ok())
        .map(|metadata| metadata.len());
        sizes.push((triple.to_owned(), size));
    }
    Ok(sizes)
}

fn write_sizes(out: &mut String, sizes: &[(String, Option<u64>)]) {
    let _ = writeln!(out, "### Stripped binary size\n");
    let _ = writeln!(
        out,
        "`fleet-provisioning` from the release profile, which strips symbols. A target \
         without a size has no release build in this target folder.\n"
    );
    let _ = writeln!(out, "| Target | Size |\n|---|---|");
    for (triple, size) in sizes {
        let shown = match size {
            Some(bytes) => format!("{bytes} bytes ({:.2} MiB)", *bytes as f64 / 1024.0 / 1024.0),
            None => "not built".to_owned(),
        };
        let _ = writeln!(out, "| `{triple}` | {shown} |");
    }
    let _ = writeln!(out);
}

/// Reads the median of `--transport NAME` from the wall time table.
fn wall_median_ms(provisioning: &str, transport: &str) -> Option<f64> {
    let prefix = format!("| `--transport {transport}` | ");
    let line = provisioning
        .lines()
        .find(|line| line.starts_with(&prefix))?;
    let median = line.strip_prefix(&prefix)?.split(" ms").next()?;
    median.trim().parse().ok()
}

/// Reads the tool's `VmHWM` medians in MiB from the peak RSS table.
fn tool_rss_mib(provisioning: &str) -> Vec<(String, f64)> {
    provisioning
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            match cells.as_slice() {
                // Transport rows only, not the `--version` row.
                ["", transport, "fleet-provisioning", peak, ..] if transport.starts_with('`') => {
                    let mib = peak.split(" MiB").next()?.parse().ok()?;
                    Some(((*transport).to_owned(), mib))
                }
                _ => None,
            }
        })
        .collect()
}

fn write_targets(out: &mut String, provisioning: &str, sizes: &[(String, Option<u64>)]) {
    let _ = writeln!(out, "### Targets\n");
    let _ = writeln!(out, "| Target | Measured | Met |\n|---|---|---|");
    let verdict = |met: bool| if met { "yes" } else { "no" };
    for (transport, limit) in [
        ("iotcored", TARGET_IOTCORED_MS),
        ("direct", TARGET_DIRECT_MS),
    ] {
        let measured = wall_median_ms(provisioning, transport);
        let _ = writeln!(
            out,
            "| Run with `--transport {transport}` under {limit:.0} ms | {} | {} |",
            measured.map_or("not measured".to_owned(), |ms| format!("{ms} ms median")),
            measured.map_or("not measured", |ms| verdict(ms < limit))
        );
    }
    for (transport, mib) in tool_rss_mib(provisioning) {
        let _ = writeln!(
            out,
            "| Peak RSS of the tool with {transport} under {TARGET_RSS_MIB} MiB | {mib:.2} MiB \
             | {} |",
            verdict(mib < TARGET_RSS_MIB)
        );
    }
    let aarch64 = sizes
        .iter()
        .find(|(triple, _)| triple.starts_with("aarch64"))
        .and_then(|(_, size)| *size);
    let _ = writeln!(
        out,
        "| Stripped aarch64 binary under {TARGET_AARCH64_MIB} MiB | {} | {} |",
        aarch64.map_or("not built".to_owned(), |bytes| format!(
            "{:.2} MiB",
            bytes as f64 / 1024.0 / 1024.0
        )),
        aarch64.map_or("not measured", |bytes| verdict(
            (bytes as f64) < TARGET_AARCH64_MIB * 1024.0 * 1024.0
        ))
    );
    let _ = writeln!(out);
}

/// Replaces the text between the markers in `path`, or appends the
/// section with its markers when the file has none, keeping the rest.
fn write_section(path: &Path, section: &str) -> Result<(), String> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(error) => return Err(format!("reading {} failed: {error}", path.display())),
    };
    let updated = splice_section(&existing, section)?;
    fs::write(path, updated).map_err(|error| format!("writing {} failed: {error}", path.display()))
}

/// Returns `document` with the text between the markers replaced by
/// `section`, or with the marked section appended.
fn splice_section(document: &str, section: &str) -> Result<String, String> {
    let marked = format!("{BEGIN_MARKER}\n{}\n{END_MARKER}", section.trim_end());
    match (document.find(BEGIN_MARKER), document.find(END_MARKER)) {
        (Some(begin), Some(end)) if begin < end => Ok(format!(
            "{}{marked}{}",
            &document[..begin],
            &document[end + END_MARKER.len()..]
        )),
        (None, None) => Ok(format!("{}\n\n{marked}\n", document.trim_end())),
        _ => Err(format!(
            "BENCHMARKS.md has a broken {BEGIN_MARKER} ... {END_MARKER} pair; fix or remove \
             the markers"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let document = "# Benchmarks\n\n## Core RAM\nkept\n\n<!-- bench:begin -->\nold\n\
                        <!-- bench:end -->\n\n## Binary size\nalso kept\n";
        let updated = splice_section(document, "new\n").unwrap();
        assert!(updated.contains("## Core RAM\nkept"));
        assert!(updated.contains("<!-- bench:begin -->\nnew\n<!-- bench:end -->"));
        assert!(updated.contains("## Binary size\nalso kept"));
        assert!(!updated.contains("old"));
    }

    #[test]
    fn splice_appends_without_markers() {
        let updated = splice_section("# Benchmarks\n\n## Core RAM\nkept\n", "new").unwrap();
        assert!(updated.starts_with("# Benchmarks\n\n## Core RAM\nkept\n\n"));
        assert!(updated.ends_with("<!-- bench:begin -->\nnew\n<!-- bench:end -->\n"));
    }

    #[test]
    fn splice_rejects_a_lone_marker() {
        assert!(splice_section("<!-- bench:end -->\n", "new").is_err());
    }

    #[test]
    fn wall_median_is_read_from_the_table() {
        let table = "| `--transport iotcored` | 123.4 ms | 100 ms | 150 ms | 160 ms | 15 |\n";
        assert_eq!(wall_median_ms(table, "iotcored"), Some(123.4));
        assert_eq!(wall_median_ms(table, "direct"), None);
    }

    #[test]
    fn tool_rss_is_read_from_the_table() {
        let table = "| `iotcored` | fleet-provisioning | 2.50 MiB (2.40–2.60) | 9.00 MiB |\n\
                     | `iotcored` | iotcored | 9.00 MiB (8.00–9.00) |  |\n\
                     | none (`--version`) | fleet-provisioning | 2.00 MiB |  |\n";
        assert_eq!(tool_rss_mib(table), vec![("`iotcored`".to_owned(), 2.5)]);
    }
}

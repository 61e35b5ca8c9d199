//! Full provisioning runs of the release binary on the loopback test bed:
//! wall time split into steps, peak RSS and heap allocations, printed as
//! Markdown.
//!
//! Every run starts from a factory configuration (a fresh `gg_config`
//! stand-in) and an empty output folder, against the same broker and IoT
//! Core emulator. The transports take turns, run by run, so that a noisy
//! moment on a shared machine hits both.

use crate::stats::{summarize, Summary};
use fleet_provisioning_testbed::bed::{initial_config, TestBed};
use fleet_provisioning_testbed::config_standin::ConfigServer;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that makes the tool stamp its log lines with
/// `CLOCK_MONOTONIC`.
const LOG_TIMES_ENV: &str = "FLEET_PROVISIONING_LOG_TIMES";

/// Greengrass Lite 2.6.0's C tool on a loopback bed with the real daemons:
/// seconds per run, of which a fixed sleep, and peak RSS in MB of the tool
/// and of its iotcored.
const C_TOOL_RUN_S: f64 = 5.16;
const C_TOOL_SLEEP_S: f64 = 5.05;
const C_TOOL_RSS_MB: f64 = 6.3;
const C_IOTCORED_RSS_MB: f64 = 7.5;

/// Benchmark settings: binaries, run counts and measurements.
pub struct Options {
    /// Measured runs per transport, after one warm-up run each.
    pub runs: usize,
    /// Traced runs per transport for the per-process peak RSS.
    pub memory_runs: usize,
    /// Release build of `fleet-provisioning`.
    pub fleet_provisioning: PathBuf,
    /// Build with the `count-allocations` feature, if any.
    pub counting: Option<PathBuf>,
    /// The iotcored stand-in.
    pub iotcored: PathBuf,
    /// Whether to count every `malloc` once per transport under valgrind.
    pub valgrind: bool,
}

/// MQTT transport of the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Iotcored,
    Direct,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Iotcored => "iotcored",
            Transport::Direct => "direct",
        }
    }

    /// Steps of a run: each ends at the first log line, after the previous
    /// step's, that contains the marker. `None` marks the process exit.
    fn steps(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            Transport::Iotcored => &[
                (
                    "Start-up and configuration read",
                    Some("provisioning with template"),
                ),
                ("iotcored spawn", Some("started iotcored")),
                (
                    "EC P-256 key and CSR generation, key written (iotcored connects meanwhile)",
                    Some("generated an EC P-256 key"),
                ),
                (
                    "Rest of the wait for iotcored's MQTT connection",
                    Some("MQTT connection through iotcored is up"),
                ),
                (
                    "Subscription to the CreateCertificateFromCsr replies",
                    Some("sending CreateCertificateFromCsr request"),
                ),
                (
                    "CreateCertificateFromCsr round trip",
                    Some("AWS IoT issued certificate"),
                ),
                (
                    "Certificate check, checkpoint, RegisterThing subscription",
                    Some("sending RegisterThing request"),
                ),
                ("RegisterThing round trip", Some("AWS IoT registered thing")),
                (
                    "File writes and first five configuration writes",
                    Some("writing configuration system/certificateFilePath"),
                ),
                (
                    "Last configuration write and iotcored stop",
                    Some("iotcored stopped"),
                ),
                ("Exit", None),
            ],
            Transport::Direct => &[
                (
                    "Start-up and configuration read",
                    Some("provisioning with template"),
                ),
                ("Credentials read, MQTT thread start", Some("connecting to")),
                (
                    "EC P-256 key and CSR generation, key written (TLS connects meanwhile)",
                    Some("generated an EC P-256 key"),
                ),
                (
                    "Rest of the wait for the TLS session",
                    Some("TLS 1.2 session with"),
                ),
                (
                    "MQTT CONNECT and subscription to the CreateCertificateFromCsr replies",
                    Some("sending CreateCertificateFromCsr request"),
                ),
                (
                    "CreateCertificateFromCsr round trip",
                    Some("AWS IoT issued certificate"),
                ),
                (
                    "Certificate check, checkpoint, RegisterThing subscription",
                    Some("sending RegisterThing request"),
                ),
                ("RegisterThing round trip", Some("AWS IoT registered thing")),
                (
                    "File writes and first five configuration writes",
                    Some("writing configuration system/certificateFilePath"),
                ),
                ("Last configuration write, disconnect, exit", None),
            ],
        }
    }
}

/// One measured run.
struct RunRecord {
    wall_ms: f64,
    max_rss_kib: f64,
    /// Peak RSS per process, from the traced mode.
    peaks: Vec<PeakRecord>,
    /// Duration of each step in milliseconds, when both ends were found.
    steps_ms: Vec<Option<f64>>,
    /// Time from the connection attempt's start to the connection.
    connect_ms: Option<f64>,
    log: String,
}

/// Memory of one process at its exit, in KiB.
struct PeakRecord {
    name: String,
    vm_hwm_kib: f64,
    rss_anon_kib: f64,
    rss_file_kib: f64,
}

/// How to run the tool for one measurement.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Release binary, timed.
    Timed,
    /// Release binary under ptrace, for each process's peak RSS.
    Traced,
    /// The given binary, for its allocation report.
    Counting(&'a Path),
    /// The release binary under valgrind's memcheck.
    Valgrind,
}

/// Runs everything and returns the Markdown.
pub fn run(options: &Options) -> Result<String, String> {
    let mut transports = vec![Transport::Iotcored];
    if accepts_transport_flag(&options.fleet_provisioning)? {
        transports.push(Transport::Direct);
    } else {
        eprintln!(
            "bench: this fleet-provisioning has no --transport flag; measuring iotcored only"
        );
    }
    let mut bed = TestBed::start("BENCH-0000", &options.iotcored)?;
    bed.fleet_provisioning
        .clone_from(&options.fleet_provisioning);
    let work = bed.dir().join("bench");
    std::fs::create_dir_all(&work)
        .map_err(|error| format!("creating {} failed: {error}", work.display()))?;
    let mut bench = Bench {
        bed,
        work,
        serial: 0,
        owner: owner_by_name()?,
    };

    for &transport in &transports {
        eprintln!("bench: warm-up run, --transport {}", transport.name());
        bench.run_once(transport, Mode::Timed)?;
    }
    let mut timed: Vec<Vec<RunRecord>> = transports.iter().map(|_| Vec::new()).collect();
    for round in 0..options.runs {
        eprintln!("bench: round {} of {}", round + 1, options.runs);
        for (index, &transport) in transports.iter().enumerate() {
            let record = bench.run_once(transport, Mode::Timed)?;
            if let Some(records) = timed.get_mut(index) {
                records.push(record);
            }
        }
    }
    let mut traced: Vec<Vec<RunRecord>> = transports.iter().map(|_| Vec::new()).collect();
    'memory: for _ in 0..options.memory_runs {
        for (index, &transport) in transports.iter().enumerate() {
            // ptrace may be forbidden (seccomp, Yama); the other numbers
            // stand without the per-process peaks.
            let record = match bench.run_once(transport, Mode::Traced) {
                Ok(record) => record,
                Err(message) => {
                    eprintln!("bench: the traced run failed, so VmHWM is not measured: {message}");
                    break 'memory;
                }
            };
            if let Some(records) = traced.get_mut(index) {
                records.push(record);
            }
        }
    }
    let mut allocations = Vec::new();
    for &transport in &transports {
        let counted = match &options.counting {
            Some(binary) => Some(parse_allocation_report(
                &bench.run_once(transport, Mode::Counting(binary))?.log,
            )?),
            None => None,
        };
        let valgrind = if options.valgrind {
            let record = bench.run_once(transport, Mode::Valgrind)?;
            Some(parse_valgrind_heap(&record.log)?)
        } else {
            None
        };
        allocations.push((transport, counted, valgrind));
    }

    let mut markdown = String::new();
    write_wall_times(&mut markdown, options, &transports, &timed);
    write_steps(&mut markdown, &transports, &timed);
    let floor = if traced.iter().any(|records| !records.is_empty()) {
        Some(start_up_floor(&bench.work, &options.fleet_provisioning)?)
    } else {
        None
    };
    write_memory(&mut markdown, &transports, &timed, &traced, floor.as_ref());
    write_allocations(&mut markdown, &allocations);
    Ok(markdown)
}

/// Measures `fleet-provisioning --version` in the traced mode: the memory
/// that start-up alone takes.
fn start_up_floor(work: &Path, binary: &Path) -> Result<PeakRecord, String> {
    let runner = std::env::current_exe()
        .map_err(|error| format!("finding this executable failed: {error}"))?;
    let output = Command::new(runner)
        .args(["measure-one", "--log"])
        .arg(work.join("version.log"))
        .args(["--traced", "--"])
        .arg(binary)
        .arg("--version")
        .output()
        .map_err(|error| format!("starting the runner failed: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "the runner failed on --version ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let report: Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("the runner's report is not JSON: {error}"))?;
    peaks_of(&report)
        .into_iter()
        .next()
        .ok_or_else(|| "the runner recorded no process for --version".to_owned())
}

/// Returns whether `--help` lists `--transport`.
fn accepts_transport_flag(binary: &Path) -> Result<bool, String> {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .map_err(|error| format!("running {} --help failed: {error}", binary.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).contains("--transport"))
}

struct Bench {
    bed: TestBed,
    work: PathBuf,
    serial: u32,
    /// `--owner` as `user:group` names.
    owner: String,
}

/// Returns `user:group` of this process by name. The test bed passes
/// numeric ids, which glibc first looks up as names through every NSS
/// source. A name in /etc/passwd, as on a device, stops at `files`, so the
/// run loads no further NSS modules (libnss_systemd with its libm and
/// libcap added about 0.5 MiB of RSS on Debian 12).
fn owner_by_name() -> Result<String, String> {
    let id = |flag: &str| -> Result<String, String> {
        let output = Command::new("id")
            .arg(flag)
            .output()
            .map_err(|error| format!("running id {flag} failed: {error}"))?;
        let name = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if name.is_empty() {
            Err(format!("id {flag} printed no name"))
        } else {
            Ok(name)
        }
    };
    Ok(format!("{}:{}", id("-un")?, id("-gn")?))
}

impl Bench {
    /// Resets the device to its factory state, runs the tool once through
    /// the runner and checks that it provisioned the device.
    fn run_once(&mut self, transport: Transport, mode: Mode<'_>) -> Result<RunRecord, String> {
        self.serial += 1;
        let serial = format!("BENCH-{:04}", self.serial);
        self.reset(&serial)?;

        let tool = self.bed.command();
        let log_path = self.work.join(format!("run-{:04}.log", self.serial));
        let runner = std::env::current_exe()
            .map_err(|error| format!("finding this executable failed: {error}"))?;
        let mut command = Command::new(runner);
        command.arg("measure-one").arg("--log").arg(&log_path);
        if matches!(mode, Mode::Traced) {
            command.arg("--traced");
        }
        command.arg("--");
        match mode {
            Mode::Valgrind => {
                command.args(["valgrind", "--tool=memcheck", "--trace-children=no"]);
                command.arg(tool.get_program());
            }
            Mode::Counting(binary) => {
                command.arg(binary);
            }
            Mode::Timed | Mode::Traced => {
                command.arg(tool.get_program());
            }
        }
        command.args(tool.get_args());
        // The last --owner wins.
        command.arg("--owner").arg(&self.owner);
        if transport == Transport::Direct {
            command
                .args(["--transport", "direct", "--port"])
                .arg(self.bed.broker.port().to_string());
        }
        command.arg("-v");
        for (key, value) in tool.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command.env(LOG_TIMES_ENV, "1");

        let output = command
            .output()
            .map_err(|error| format!("starting the runner failed: {error}"))?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !output.status.success() {
            return Err(format!(
                "the runner failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let report: Value = serde_json::from_slice(&output.stdout)
            .map_err(|error| format!("the runner's report is not JSON: {error}"))?;
        let exit_code = report["exit_code"].as_i64().unwrap_or(-1);
        let provisioned = self
            .bed
            .config_value("system/certificateFilePath")
            .is_some();
        if exit_code != 0 || !provisioned {
            return Err(format!(
                "run {serial} with --transport {} did not provision the device (exit code \
                 {exit_code}); its log:\n{log}",
                transport.name()
            ));
        }
        let record = record_of(transport, &report, log);
        eprintln!(
            "bench: run {serial}, --transport {}: {:.1} ms",
            transport.name(),
            record.wall_ms
        );
        Ok(record)
    }

    /// Puts back the factory configuration and removes the output folder.
    fn reset(&mut self, serial: &str) -> Result<(), String> {
        self.bed.config.stop();
        self.bed.config =
            ConfigServer::start(&self.bed.socket_dir, initial_config(&self.bed.pki, serial))
                .map_err(|error| format!("restarting the gg_config stand-in failed: {error}"))?;
        match std::fs::remove_dir_all(&self.bed.output_dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(format!(
                "removing {} failed: {error}",
                self.bed.output_dir.display()
            )),
        }
    }
}

/// Builds the record of one run from the runner's report and the log.
fn record_of(transport: Transport, report: &Value, log: String) -> RunRecord {
    let start_ns = report["start_ns"].as_u64().unwrap_or(0);
    let end_ns = report["end_ns"].as_u64().unwrap_or(start_ns);
    let lines = stamped_lines(&log);

    // Times of the step boundaries: the start, each marker, the exit.
    let mut boundaries = vec![Some(start_ns)];
    let mut next_line = 0;
    for (_, marker) in transport.steps() {
        let time = match marker {
            None => Some(end_ns),
            Some(marker) => {
                let found = lines
                    .iter()
                    .enumerate()
                    .skip(next_line)
                    .find(|(_, (_, message))| message.contains(marker));
                found.map(|(index, (time, _))| {
                    next_line = index + 1;
                    *time
                })
            }
        };
        boundaries.push(time);
    }
    let steps_ms = boundaries
        .windows(2)
        .map(|pair| match pair {
            [Some(from), Some(to)] => Some(to.saturating_sub(*from) as f64 / 1e6),
            _ => None,
        })
        .collect();

    let first = |marker: &str| {
        lines
            .iter()
            .find(|(_, message)| message.contains(marker))
            .map(|(time, _)| *time)
    };
    let (from, to) = match transport {
        Transport::Iotcored => (
            first("started iotcored"),
            first("MQTT connection through iotcored is up"),
        ),
        Transport::Direct => (first("connecting to"), first("TLS 1.2 session with")),
    };
    let connect_ms = match (from, to) {
        (Some(from), Some(to)) => Some(to.saturating_sub(from) as f64 / 1e6),
        _ => None,
    };

    let peaks = peaks_of(report);
    RunRecord {
        wall_ms: end_ns.saturating_sub(start_ns) as f64 / 1e6,
        max_rss_kib: report["max_rss_kib"].as_f64().unwrap_or(0.0),
        peaks,
        steps_ms,
        connect_ms,
        log,
    }
}

/// Reads the per-process peaks of a runner report.
fn peaks_of(report: &Value) -> Vec<PeakRecord> {
    report["processes"]
        .as_array()
        .map(|processes| {
            processes
                .iter()
                .map(|process| PeakRecord {
                    name: process["name"].as_str().unwrap_or("?").to_owned(),
                    vm_hwm_kib: process["vm_hwm_kib"].as_f64().unwrap_or(0.0),
                    rss_anon_kib: process["rss_anon_kib"].as_f64().unwrap_or(0.0),
                    rss_file_kib: process["rss_file_kib"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses the tool's stamped log lines, `[  812.004215] message`, into
/// nanoseconds of `CLOCK_MONOTONIC` and the rest of the line.
fn stamped_lines(log: &str) -> Vec<(u64, &str)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('[')?;
            let (stamp, message) = rest.split_once("] ")?;
            let (seconds, micros) = stamp.trim().split_once('.')?;
            let seconds: u64 = seconds.parse().ok()?;
            let micros: u64 = micros.parse().ok()?;
            Some((seconds * 1_000_000_000 + micros * 1000, message))
        })
        .collect()
}

/// Counters printed by the `count-allocations` build.
struct AllocationReport {
    allocations: u64,
    bytes: u64,
    peak_bytes: u64,
}

fn parse_allocation_report(log: &str) -> Result<AllocationReport, String> {
    let line = log
        .lines()
        .find_map(|line| line.strip_prefix("count-allocations: "))
        .ok_or("the count-allocations build printed no report")?;
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or(format!("the allocation report {line:?} has no {key}"))
    };
    Ok(AllocationReport {
        allocations: value("allocations")?,
        bytes: value("bytes")?,
        peak_bytes: value("peak_bytes")?,
    })
}

/// `malloc`-family calls and bytes from memcheck's heap summary:
/// `total heap usage: 1,234 allocs, 1,234 frees, 56,789 bytes allocated`.
fn parse_valgrind_heap(log: &str) -> Result<(u64, u64), String> {
    let summary = log
        .lines()
        .find_map(|line| line.split_once("total heap usage: ").map(|(_, rest)| rest))
        .ok_or("valgrind printed no heap summary")?;
    let numbers: Vec<u64> = summary
        .split(", ")
        .filter_map(|part| part.split_whitespace().next())
        .filter_map(|number| number.replace(',', "").parse().ok())
        .collect();
    match numbers.as_slice() {
        [allocs, _frees, bytes] => Ok((*allocs, *bytes)),
        _ => Err(format!("cannot read the heap summary {summary:?}")),
    }
}

fn milliseconds(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn mebibytes(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

fn write_wall_times(
    out: &mut String,
    options: &Options,
    transports: &[Transport],
    timed: &[Vec<RunRecord>],
) {
    let _ = writeln!(out, "### Wall time of one provisioning run\n");
    let _ = writeln!(
        out,
        "From the runner's `fork` to its `waitpid`, {} runs per transport after one \
         warm-up run each, the transports taking turns. Each run starts from the factory \
         configuration and an empty output folder; `-v` is on because the step markers \
         below are debug lines.\n",
        options.runs
    );
    let _ = writeln!(
        out,
        "| Transport | Median | Min | p90 | Max | Runs |\n|---|---|---|---|---|---|"
    );
    let mut medians = Vec::new();
    for (transport, records) in transports.iter().zip(timed) {
        let walls: Vec<f64> = records.iter().map(|record| record.wall_ms).collect();
        if let Some(summary) = summarize(&walls) {
            medians.push((*transport, summary.median));
            let _ = writeln!(
                out,
                "| `--transport {}` | {} ms | {} ms | {} ms | {} ms | {} |",
                transport.name(),
                milliseconds(summary.median),
                milliseconds(summary.min),
                milliseconds(summary.p90),
                milliseconds(summary.max),
                summary.count
            );
        }
    }
    let _ = writeln!(out);
    for (transport, median) in &medians {
        let _ = writeln!(
            out,
            "- `--transport {}`: the C tool's {C_TOOL_RUN_S} s per run (of which \
             {C_TOOL_SLEEP_S} s is a fixed sleep) is {:.0} times this median; without its \
             sleep, {:.1} times.",
            transport.name(),
            C_TOOL_RUN_S * 1000.0 / median,
            (C_TOOL_RUN_S - C_TOOL_SLEEP_S) * 1000.0 / median
        );
    }
    if let [(_, iotcored), (_, direct)] = medians.as_slice() {
        let _ = writeln!(
            out,
            "- The direct transport's median is {:.2} of the iotcored transport's.",
            direct / iotcored
        );
    }
    let _ = writeln!(out);
}

fn write_steps(out: &mut String, transports: &[Transport], timed: &[Vec<RunRecord>]) {
    let _ = writeln!(out, "### Steps of a run\n");
    let _ = writeln!(
        out,
        "Each step ends at a log line of the tool, stamped with `CLOCK_MONOTONIC` when \
         `FLEET_PROVISIONING_LOG_TIMES=1` is set, and the first starts at the runner's \
         `fork`, read from the same clock. Median and p90 in milliseconds; the steps of a \
         run add up to its wall time.\n"
    );
    for (transport, records) in transports.iter().zip(timed) {
        let _ = writeln!(
            out,
            "`--transport {}`:\n\n| Step | Median | p90 |\n|---|---|---|",
            transport.name()
        );
        for (index, (name, _)) in transport.steps().iter().enumerate() {
            let values: Vec<f64> = records
                .iter()
                .filter_map(|record| record.steps_ms.get(index).copied().flatten())
                .collect();
            match summarize(&values) {
                Some(summary) => {
                    let _ = writeln!(
                        out,
                        "| {name} | {} | {} |",
                        milliseconds(summary.median),
                        milliseconds(summary.p90)
                    );
                }
                None => {
                    let _ = writeln!(out, "| {name} | marker not logged | |");
                }
            }
        }
        let connects: Vec<f64> = records
            .iter()
            .filter_map(|record| record.connect_ms)
            .collect();
        if let Some(summary) = summarize(&connects) {
            let what = match transport {
                Transport::Iotcored => "iotcored spawn to its MQTT connection",
                Transport::Direct => "TCP connect and TLS handshake",
            };
            let _ = writeln!(
                out,
                "\nOverlapping the key generation: {what}, median {} ms, p90 {} ms.",
                milliseconds(summary.median),
                milliseconds(summary.p90)
            );
        }
        let _ = writeln!(out);
    }
}

fn write_memory(
    out: &mut String,
    transports: &[Transport],
    timed: &[Vec<RunRecord>],
    traced: &[Vec<RunRecord>],
    floor: Option<&PeakRecord>,
) {
    let _ = writeln!(out, "### Peak RSS\n");
    let _ = writeln!(
        out,
        "`VmHWM` of each process, read from `/proc/PID/status` when ptrace stops it at \
         its exit (`PTRACE_EVENT_EXIT`), with the anonymous (heap, stacks) and file-backed \
         (executable, shared libraries) parts of its RSS at that moment; and `ru_maxrss` of \
         `getrusage(RUSAGE_CHILDREN)` in a runner process whose only child is the tool. A \
         process that waits for its child takes the child's peak into its own `ru_maxrss`, \
         so with `--transport iotcored` that column is the larger of the tool and iotcored. \
         The iotcored here is the test bed's Rust stand-in (tokio, rumqttc, rustls), not \
         Greengrass Lite's C iotcored. Median over the runs, with the range of `VmHWM`.\n"
    );
    let _ = writeln!(
        out,
        "| Transport | Process | `VmHWM` at exit | `RssAnon` / `RssFile` at exit | \
         `ru_maxrss` of the runner's child |\n|---|---|---|---|---|"
    );
    for ((transport, timed_records), traced_records) in transports.iter().zip(timed).zip(traced) {
        let max_rss: Vec<f64> = timed_records
            .iter()
            .map(|record| record.max_rss_kib)
            .collect();
        let mut names: Vec<&str> = traced_records
            .iter()
            .flat_map(|record| record.peaks.iter().map(|peak| peak.name.as_str()))
            .collect();
        // The kernel cuts the tool's name to 15 bytes. Its row stays, with
        // `ru_maxrss`, when no traced run recorded it.
        if !names.iter().any(|name| is_tool_name(name)) {
            names.push(TOOL_COMM);
        }
        names.sort_unstable();
        names.dedup();
        // The tool first.
        names.sort_by_key(|name| !is_tool_name(name));
        for name in names {
            let peaks: Vec<&PeakRecord> = traced_records
                .iter()
                .flat_map(|record| record.peaks.iter().filter(|peak| peak.name == name))
                .collect();
            let median = |field: fn(&PeakRecord) -> f64| {
                let values: Vec<f64> = peaks.iter().map(|peak| field(peak)).collect();
                summarize(&values).map_or("not measured".to_owned(), |summary| {
                    mebibytes(summary.median)
                })
            };
            let is_tool = is_tool_name(name);
            let shown_name = if is_tool { "fleet-provisioning" } else { name };
            let rusage = if is_tool {
                range_text(summarize(&max_rss))
            } else {
                String::new()
            };
            let hwm: Vec<f64> = peaks.iter().map(|peak| peak.vm_hwm_kib).collect();
            let _ = writeln!(
                out,
                "| `{}` | {shown_name} | {} | {} / {} | {rusage} |",
                transport.name(),
                range_text(summarize(&hwm)),
                median(|peak| peak.rss_anon_kib),
                median(|peak| peak.rss_file_kib),
            );
        }
    }
    if let Some(floor) = floor {
        let _ = writeln!(
            out,
            "| none (`--version`) | fleet-provisioning | {} | {} / {} |  |",
            mebibytes(floor.vm_hwm_kib),
            mebibytes(floor.rss_anon_kib),
            mebibytes(floor.rss_file_kib)
        );
    }
    let _ = writeln!(
        out,
        "\nGreengrass Lite 2.6.0's C tool peaked at {C_TOOL_RSS_MB} MB and its iotcored at \
         {C_IOTCORED_RSS_MB} MB on the same kind of bed.\n"
    );
}

/// The tool's name in `/proc/PID/comm`: the kernel keeps 15 bytes.
const TOOL_COMM: &str = "fleet-provision";

fn is_tool_name(name: &str) -> bool {
    name == TOOL_COMM
}

fn range_text(summary: Option<Summary>) -> String {
    match summary {
        Some(summary) => format!(
            "{} ({:.2}–{:.2})",
            mebibytes(summary.median),
            summary.min / 1024.0,
            summary.max / 1024.0
        ),
        None => "not measured".to_owned(),
    }
}

type AllocationRow = (Transport, Option<AllocationReport>, Option<(u64, u64)>);

fn write_allocations(out: &mut String, rows: &[AllocationRow]) {
    let _ = writeln!(out, "### Heap allocations per run\n");
    let _ = writeln!(
        out,
        "Rust allocations from a build with the `count-allocations` feature, which wraps \
         the system allocator with counters (a `realloc` counts as one allocation of its \
         new size). Mbed TLS is C and calls `calloc` directly, so only valgrind's memcheck \
         (`--trace-children=no`, the tool's process alone) sees every `malloc`-family call. \
         One run each, `-v` on.\n"
    );
    let _ = writeln!(
        out,
        "| Transport | Rust allocations | Rust bytes allocated | Rust peak live bytes | \
         All allocations (valgrind) | All bytes allocated (valgrind) |\n\
         |---|---|---|---|---|---|"
    );
    for (transport, counted, valgrind) in rows {
        let (allocations, bytes, peak) = match counted {
            Some(report) => (
                report.allocations.to_string(),
                report.bytes.to_string(),
                report.peak_bytes.to_string(),
            ),
            None => ("not measured".into(), String::new(), String::new()),
        };
        let (all_allocations, all_bytes) = match valgrind {
            Some((allocations, bytes)) => (allocations.to_string(), bytes.to_string()),
            None => ("not measured".into(), String::new()),
        };
        let _ = writeln!(
            out,
            "| `{}` | {allocations} | {bytes} | {peak} | {all_allocations} | {all_bytes} |",
            transport.name()
        );
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_lines_parse() {
        let log = "[  812.004215] fleet-provisioning INFO: started\nplain line\n";
        let lines = stamped_lines(log);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, 812_004_215_000);
        assert_eq!(lines[0].1, "fleet-provisioning INFO: started");
    }

    #[test]
    fn valgrind_summary_parses() {
        let log = "==1==   total heap usage: 1,234 allocs, 1,200 frees, 56,789 bytes allocated\n";
        assert_eq!(parse_valgrind_heap(log).unwrap(), (1234, 56789));
    }

    #[test]
    fn allocation_report_parses() {
        let report = parse_allocation_report(
            "x\ncount-allocations: allocations=12 bytes=3456 peak_bytes=789\n",
        )
        .unwrap();
        assert_eq!(report.allocations, 12);
        assert_eq!(report.bytes, 3456);
        assert_eq!(report.peak_bytes, 789);
    }
}

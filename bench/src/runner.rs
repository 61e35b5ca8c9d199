//! The measuring side of one run, in a process of its own: it starts one
//! program, waits for it, and prints what the kernel reports as one JSON
//! line on standard output.
//!
//! Running in its own process keeps the test bed's children (mosquitto)
//! out of `getrusage(RUSAGE_CHILDREN)`. The tool's own children are not
//! kept out: a process that waits for its child adds the child's peak RSS
//! to its own `ru_maxrss`, so with `--transport iotcored` that number is
//! the larger of the tool and iotcored. The traced mode reads each
//! process's `VmHWM` from `/proc/PID/status` at its exit instead, which
//! keeps the two apart.

use nix::sys::ptrace::{self, Event, Options};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{kill, raise, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Command-line mode that stops itself and then executes its arguments,
/// so that the runner can attach before the program starts.
pub const EXEC_STOPPED: &str = "exec-stopped";

/// Environment variable naming a folder: the traced mode copies each
/// task's `/proc/PID/smaps` there when it exits, for a per-mapping view of
/// the RSS.
pub const SMAPS_DIR_ENV: &str = "FLEET_PROVISIONING_BENCH_SMAPS_DIR";

/// Arguments of `measure-one`.
struct MeasureArgs {
    log: PathBuf,
    traced: bool,
    program: String,
    args: Vec<String>,
}

/// Peak RSS of one process, read at its exit.
struct ProcessPeak {
    name: String,
    vm_hwm_kib: u64,
    /// Anonymous (heap, stacks) and file-backed (executable, libraries)
    /// resident memory at the exit that showed the peak.
    rss_anon_kib: u64,
    rss_file_kib: u64,
}

/// Runs `measure-one --log FILE [--traced] -- PROGRAM ARGS...`.
pub fn measure_one(args: &[String]) -> Result<(), String> {
    let args = parse_measure_args(args)?;
    let log = File::create(&args.log)
        .map_err(|error| format!("creating {} failed: {error}", args.log.display()))?;
    let log_copy = log
        .try_clone()
        .map_err(|error| format!("duplicating the log file handle failed: {error}"))?;
    let mut command = if args.traced {
        let runner = std::env::current_exe()
            .map_err(|error| format!("finding this executable failed: {error}"))?;
        let mut command = Command::new(runner);
        command.arg(EXEC_STOPPED).arg(&args.program);
        command
    } else {
        Command::new(&args.program)
    };
    command
        .args(&args.args)
        .stdin(Stdio::null())
        .stdout(log_copy)
        .stderr(log);

    let start_ns = monotonic_ns()?;
    let child = command
        .spawn()
        .map_err(|error| format!("starting {} failed: {error}", args.program))?;
    let pid = Pid::from_raw(
        i32::try_from(child.id()).map_err(|_| "the child's pid is out of range".to_owned())?,
    );
    let (exit_code, peaks) = if args.traced {
        wait_traced(pid)?
    } else {
        (wait_plain(pid)?, BTreeMap::new())
    };
    let end_ns = monotonic_ns()?;
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)
        .map_err(|error| format!("getrusage(RUSAGE_CHILDREN) failed: {error}"))?;

    let processes: Vec<serde_json::Value> = peaks
        .iter()
        .map(|(pid, peak)| {
            serde_json::json!({
                "pid": pid,
                "name": peak.name,
                "vm_hwm_kib": peak.vm_hwm_kib,
                "rss_anon_kib": peak.rss_anon_kib,
                "rss_file_kib": peak.rss_file_kib,
            })
        })
        .collect();
    let report = serde_json::json!({
        "start_ns": start_ns,
        "end_ns": end_ns,
        "exit_code": exit_code,
        // Linux reports ru_maxrss in KiB.
        "max_rss_kib": usage.max_rss(),
        "processes": processes,
    });
    println!("{report}");
    Ok(())
}

fn parse_measure_args(args: &[String]) -> Result<MeasureArgs, String> {
    let mut log = None;
    let mut traced = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--log" => log = rest.next().map(PathBuf::from),
            "--traced" => traced = true,
            "--" => break,
            other => return Err(format!("measure-one: unknown argument {other:?}")),
        }
    }
    let log = log.ok_or("measure-one: --log FILE is missing")?;
    let program = rest
        .next()
        .ok_or("measure-one: the program to run is missing after --")?
        .clone();
    Ok(MeasureArgs {
        log,
        traced,
        program,
        args: rest.cloned().collect(),
    })
}

/// Reads `CLOCK_MONOTONIC`, the clock of the tool's log time stamps.
pub fn monotonic_ns() -> Result<u64, String> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_err(|error| format!("clock_gettime(CLOCK_MONOTONIC) failed: {error}"))?;
    let seconds = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanoseconds = u64::try_from(now.tv_nsec()).unwrap_or(0);
    Ok(seconds * 1_000_000_000 + nanoseconds)
}

/// Waits for `pid` and returns its exit code, or 128 + the signal number.
fn wait_plain(pid: Pid) -> Result<i32, String> {
    loop {
        match waitpid(pid, None).map_err(|error| format!("waitpid failed: {error}"))? {
            WaitStatus::Exited(_, code) => return Ok(code),
            WaitStatus::Signaled(_, signal, _) => return Ok(128 + signal as i32),
            _ => {}
        }
    }
}

/// Attaches to `pid`, which stopped itself before executing the program,
/// follows it and every process and thread it starts, and records each
/// process's `VmHWM` when it exits. Returns the exit code of `pid` and the
/// peaks by process id.
fn wait_traced(pid: Pid) -> Result<(i32, BTreeMap<i32, ProcessPeak>), String> {
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED))
        .map_err(|error| format!("waitpid failed: {error}"))?
    {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => return Err(format!("the traced child did not stop first: {other:?}")),
    }
    let options = Options::PTRACE_O_TRACEEXIT
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_EXITKILL;
    ptrace::seize(pid, options).map_err(|error| {
        format!("ptrace(PTRACE_SEIZE) failed: {error}; the traced mode needs ptrace permission")
    })?;
    kill(pid, Signal::SIGCONT).map_err(|error| format!("sending SIGCONT failed: {error}"))?;

    let mut peaks = BTreeMap::new();
    loop {
        let status = waitpid(None, Some(WaitPidFlag::__WALL))
            .map_err(|error| format!("waitpid failed: {error}"))?;
        match status {
            WaitStatus::PtraceEvent(task, _, event) => {
                if event == Event::PTRACE_EVENT_EXIT as i32 {
                    record_peak(task, &mut peaks);
                }
                // Fork, clone, exit and group-stop events: let it go on.
                let _ = ptrace::cont(task, None);
            }
            // A signal on its way to a tracee: deliver it.
            WaitStatus::Stopped(task, signal) => {
                let _ = ptrace::cont(task, Some(signal));
            }
            WaitStatus::Exited(task, code) if task == pid => return Ok((code, peaks)),
            WaitStatus::Signaled(task, signal, _) if task == pid => {
                return Ok((128 + signal as i32, peaks))
            }
            _ => {}
        }
    }
}

/// Reads the memory fields of a task that is about to exit and keeps, per
/// process, those of the exit with the largest `VmHWM`.
fn record_peak(task: Pid, peaks: &mut BTreeMap<i32, ProcessPeak>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{task}/status")) else {
        return;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let kib = |name: &str| {
        field(name)
            .and_then(|value| value.strip_suffix("kB"))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let (Some(tgid), Some(vm_hwm_kib)) = (
        field("Tgid:").and_then(|t| t.parse::<i32>().ok()),
        kib("VmHWM:"),
    ) else {
        return;
    };
    // The thread group leader's name is the program's; a thread may have
    // renamed itself.
    let name = std::fs::read_to_string(format!("/proc/{tgid}/comm"))
        .map(|comm| comm.trim().to_owned())
        .or_else(|_| field("Name:").map(str::to_owned).ok_or(()))
        .unwrap_or_default();
    let current = ProcessPeak {
        name,
        vm_hwm_kib,
        rss_anon_kib: kib("RssAnon:").unwrap_or(0),
        rss_file_kib: kib("RssFile:").unwrap_or(0),
    };
    if let Some(dir) = std::env::var_os(SMAPS_DIR_ENV) {
        // Best effort: the copy only helps to explain the numbers.
        let _ = std::fs::copy(
            format!("/proc/{task}/smaps"),
            PathBuf::from(dir).join(format!("{}-{task}.smaps", current.name)),
        );
    }
    match peaks.get(&tgid) {
        Some(known) if known.vm_hwm_kib >= current.vm_hwm_kib => {}
        _ => {
            peaks.insert(tgid, current);
        }
    }
}

/// Runs `exec-stopped PROGRAM ARGS...`: stops with SIGSTOP until the
/// runner has attached, then replaces this process with the program.
pub fn exec_stopped(args: &[String]) -> Result<(), String> {
    let (program, program_args) = args
        .split_first()
        .ok_or("exec-stopped: the program to run is missing")?;
    raise(Signal::SIGSTOP).map_err(|error| format!("raising SIGSTOP failed: {error}"))?;
    let error = Command::new(program).args(program_args).exec();
    Err(format!("executing {program} failed: {error}"))
}

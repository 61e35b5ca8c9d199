//! `fleet-provisioning-bench`: measures the release `fleet-provisioning`
//! on the loopback test bed and prints the results as Markdown.
//! `cargo xtask bench` builds the binaries, runs this and writes
//! BENCHMARKS.md.
//!
//! Commands:
//! - `run --fleet-provisioning PATH --iotcored PATH [--counting PATH]
//!   [--runs N] [--memory-runs N] [--no-valgrind]`: the whole benchmark.
//! - `measure-one --log FILE [--traced] -- PROGRAM ARGS...`: one measured
//!   run, in a process of its own; `run` calls it.
//! - `exec-stopped PROGRAM ARGS...`: the traced mode's first step.
//!
//! With `FLEET_PROVISIONING_BENCH_SMAPS_DIR=DIR`, the traced runs copy each
//! process's `/proc/PID/smaps` into DIR at its exit.
#![forbid(unsafe_code)]

mod provisioning;
mod runner;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: fleet-provisioning-bench run --fleet-provisioning PATH \
--iotcored PATH [--counting PATH] [--runs N] [--memory-runs N] [--no-valgrind]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "run" => run(rest),
        Some((command, rest)) if command == "measure-one" => runner::measure_one(rest),
        Some((command, rest)) if command == runner::EXEC_STOPPED => runner::exec_stopped(rest),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fleet-provisioning-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut fleet_provisioning = None;
    let mut iotcored = None;
    let mut counting = None;
    let mut runs = 15;
    let mut memory_runs = 3;
    let mut valgrind = true;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || {
            rest.next()
                .cloned()
                .ok_or(format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--fleet-provisioning" => fleet_provisioning = Some(PathBuf::from(value()?)),
            "--iotcored" => iotcored = Some(PathBuf::from(value()?)),
            "--counting" => counting = Some(PathBuf::from(value()?)),
            "--runs" => runs = parse_count(arg, &value()?)?,
            "--memory-runs" => {
                memory_runs = value()?
                    .parse()
                    .map_err(|_| format!("{arg} needs a whole number\n{USAGE}"))?
            }
            "--no-valgrind" => valgrind = false,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let options = provisioning::Options {
        runs,
        memory_runs,
        fleet_provisioning: fleet_provisioning
            .ok_or(format!("--fleet-provisioning is missing\n{USAGE}"))?,
        counting,
        iotcored: iotcored.ok_or(format!("--iotcored is missing\n{USAGE}"))?,
        valgrind,
    };
    let markdown = provisioning::run(&options)?;
    print!("{markdown}");
    Ok(())
}

fn parse_count(flag: &str, text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!(
            "{flag} needs a positive whole number, not {text:?}"
        )),
    }
}

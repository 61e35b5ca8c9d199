//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets
//! of `core/fuzz` one after another, each for a bounded time.
//!
//! Fuzzing needs the nightly toolchain and cargo-fuzz, and its runs are not
//! reproducible, so `cargo xtask test` and CI do not run it.

use std::path::Path;
use std::process::Command;

use crate::{run, workspace_root};

/// Every fuzz target, in the order they run.
const TARGETS: &[&str] = &[
    "eventstream_frame",
    "object_decode",
    "fleet_replies",
    "template_parameters",
    "machine",
    "checkpoint_decode",
];

/// Default time per target: short enough for a quick check after a change.
/// Longer campaigns pass `--seconds`.
const DEFAULT_SECONDS: u64 = 30;

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [TARGET...]

Runs each fuzz target (default: all) for N seconds (default: 30).
targets: eventstream_frame, object_decode, fleet_replies, template_parameters, machine,
         checkpoint_decode";

/// Runs the fuzz targets named in `args`, or all of them.
pub fn run_fuzzers(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut selected: Vec<&str> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = rest
                    .next()
                    .ok_or_else(|| format!("--seconds needs a value\n\n{USAGE}"))?;
                seconds = value
                    .parse()
                    .ok()
                    .filter(|&seconds| seconds > 0)
                    .ok_or_else(|| {
                        format!("invalid --seconds {value:?}: expected a whole number above 0")
                    })?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            name => match TARGETS.iter().find(|target| **target == name) {
                Some(target) => selected.push(target),
                None => return Err(format!("unknown fuzz target {name:?}\n\n{USAGE}")),
            },
        }
    }
    if selected.is_empty() {
        selected = TARGETS.to_vec();
    }
    check_cargo_fuzz()?;

    let root = workspace_root();
    let fuzz_dir = root.join("core/fuzz");
    let mut failed = Vec::new();
    for target in &selected {
        if let Err(error) = run_target(&root, &fuzz_dir, target, seconds) {
            eprintln!("xtask: fuzz target {target} failed: {error}");
            failed.push(*target);
        }
    }
    if failed.is_empty() {
        eprintln!(
            "xtask: fuzz: {} targets ran {seconds} s each without a failure",
            selected.len()
        );
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed: {}. The failing inputs are under core/fuzz/artifacts/<target>/; \
             reproduce one with `cargo +nightly fuzz run --fuzz-dir core/fuzz <target> <file>` \
             and add it as a regression test in core/tests/",
            failed.join(", ")
        ))
    }
}

/// Returns a cargo command for the nightly toolchain. It goes through the
/// rustup proxy, which understands `+nightly`, because the `CARGO` variable
/// of `cargo xtask` names the stable toolchain's own binary.
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly");
    command
}

fn check_cargo_fuzz() -> Result<(), String> {
    let available = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if available {
        Ok(())
    } else {
        Err(
            "fuzzing needs the nightly toolchain and cargo-fuzz; install them with \
             `rustup toolchain install nightly` and `cargo install cargo-fuzz`"
                .to_owned(),
        )
    }
}

fn run_target(root: &Path, fuzz_dir: &Path, target: &str, seconds: u64) -> Result<(), String> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .map_err(|error| format!("cannot create {}: {error}", corpus.display()))?;
    // Read-only seed inputs: the recorded core-bus frames for the frame
    // decoder, and the files under core/fuzz/seeds/ for the others.
    let seeds = if target == "eventstream_frame" {
        root.join("core/tests/vectors")
    } else {
        fuzz_dir.join("seeds").join(target)
    };
    let mut command = nightly_cargo();
    command
        .current_dir(root)
        .args(["fuzz", "run", "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg(target)
        .arg(&corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command.args(["--", &format!("-max_total_time={seconds}")]);
    run(&mut command)
}

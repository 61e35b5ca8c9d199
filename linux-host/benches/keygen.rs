//! Times key generation with Mbed TLS: the tool's own step (EC P-256 key,
//! PEM encoding and a signed CSR, from `src/keys.rs`), a bare EC P-256 key
//! pair, and an RSA-2048 key pair for comparison.
//!
//! `cargo bench -p fleet-provisioning --bench keygen` prints one Markdown
//! table row per operation: the median, minimum and 90th percentile time
//! per operation over a run of iterations bounded by count and by time.
//! `--seconds S` sets the time bound of each operation (default 3).

// The tool's key module, compiled in as it is, so that this measures the
// code that runs. Cargo compiles bench targets with `cfg(test)`, so the
// module's unit tests come along, unused without a test harness.
#[allow(dead_code, unused_imports)]
#[path = "../src/keys.rs"]
mod keys;

use mbedtls::pk::{EcGroupId, Pk};
use mbedtls::rng::{CtrDrbg, OsEntropy};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fewest iterations per operation, even past the time bound.
const MIN_ITERATIONS: usize = 5;
/// Most iterations per operation.
const MAX_ITERATIONS: usize = 1000;
/// RSA public exponent F4, the usual choice.
const RSA_EXPONENT: u32 = 0x10001;

fn main() -> ExitCode {
    let mut seconds = 3.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            "--seconds" => match args.next().and_then(|text| text.parse::<f64>().ok()) {
                Some(value) if value > 0.0 => seconds = value,
                _ => {
                    eprintln!("keygen: --seconds needs a positive number of seconds");
                    return ExitCode::FAILURE;
                }
            },
            other => {
                eprintln!("keygen: unknown argument {other:?}; the only option is --seconds S");
                return ExitCode::FAILURE;
            }
        }
    }
    let budget = Duration::from_secs_f64(seconds);
    match run(budget) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keygen: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(budget: Duration) -> Result<(), String> {
    let entropy = Arc::new(OsEntropy::new());
    let mut rng = CtrDrbg::new(entropy, Some(b"fleet-provisioning keygen benchmark"))
        .map_err(|error| format!("seeding CTR_DRBG failed: {error}"))?;

    println!("| Operation (Mbed TLS) | Median | Min | p90 | Iterations |");
    println!("|---|---|---|---|---|");
    let tool_step = measure(budget, || {
        keys::generate_key_and_csr("aws-greengrass-nucleus-lite")
            .map(drop)
            .map_err(|error| error.to_string())
    })?;
    print_row(
        "EC P-256 key + PEM + CSR (the tool's step, new DRBG each time)",
        &tool_step,
    );
    let ec = measure(budget, || {
        Pk::generate_ec(&mut rng, EcGroupId::SecP256R1)
            .map(drop)
            .map_err(|error| error.to_string())
    })?;
    print_row("EC P-256 key pair", &ec);
    let rsa = measure(budget, || {
        Pk::generate_rsa(&mut rng, 2048, RSA_EXPONENT)
            .map(drop)
            .map_err(|error| error.to_string())
    })?;
    print_row("RSA-2048 key pair", &rsa);
    Ok(())
}

/// Runs `operation` until `budget` has passed (at least [`MIN_ITERATIONS`]
/// and at most [`MAX_ITERATIONS`] times) and returns the sorted times.
fn measure(
    budget: Duration,
    mut operation: impl FnMut() -> Result<(), String>,
) -> Result<Vec<Duration>, String> {
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < MAX_ITERATIONS
        && (times.len() < MIN_ITERATIONS || started.elapsed() < budget)
    {
        let before = Instant::now();
        operation()?;
        times.push(before.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Returns the `percent` percentile of sorted `times` (nearest rank).
fn percentile(times: &[Duration], percent: usize) -> Duration {
    let rank = (times.len() * percent).div_ceil(100).max(1);
    times.get(rank - 1).copied().unwrap_or_default()
}

fn print_row(name: &str, times: &[Duration]) {
    let milliseconds = |time: Duration| format!("{:.2} ms", time.as_secs_f64() * 1000.0);
    println!(
        "| {name} | {} | {} | {} | {} |",
        milliseconds(percentile(times, 50)),
        milliseconds(times.first().copied().unwrap_or_default()),
        milliseconds(percentile(times, 90)),
        times.len()
    );
}

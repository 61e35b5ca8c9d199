//! `iotcored` stand-in: the test bed's replacement for Greengrass Lite's
//! MQTT daemon, with the same command line.
//!
//! Exit status: 0 after SIGTERM or SIGINT, 1 on a fatal error such as an
//! authentication failure, 2 on invalid arguments.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use fleet_provisioning_testbed::iotcored_standin::{self, Args, Environment};

fn main() -> ExitCode {
    let args = Args::parse();
    let result = Environment::from_env().and_then(|env| iotcored_standin::run(args, env));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("iotcored stand-in: {error}");
            ExitCode::FAILURE
        }
    }
}

//! `ggconfigd` stand-in: serves a JSON file as the `gg_config` core-bus
//! interface until SIGTERM or SIGINT.
//!
//! Usage: `ggconfigd --socket-dir DIR --config FILE.json`. Changes stay in
//! memory; the file is not rewritten.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_provisioning_testbed::config_standin::ConfigServer;

/// Command line of the ggconfigd stand-in.
#[derive(Debug, Parser)]
#[command(
    name = "ggconfigd",
    about = "Stand-in for Greengrass Lite's ggconfigd: serves a JSON configuration tree on the gg_config core-bus socket"
)]
struct Args {
    /// Folder in which to create the `gg_config` socket.
    #[arg(long, default_value = "/run/greengrass")]
    socket_dir: PathBuf,
    /// JSON file with the initial configuration (an object at the root).
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ggconfigd stand-in: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|error| format!("cannot read {}: {error}", args.config.display()))?;
    let initial: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| format!("{} is not valid JSON: {error}", args.config.display()))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the signal handler: {error}"))?;
    // Handlers go in before the socket appears, because a client may send
    // SIGTERM as soon as the socket exists.
    let (mut terminate, mut interrupt) = runtime
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|error| format!("cannot install the SIGTERM handler: {error}"))?;

    let mut server = ConfigServer::start(&args.socket_dir, initial).map_err(|error| {
        format!(
            "cannot serve gg_config in {}: {error}",
            args.socket_dir.display()
        )
    })?;
    eprintln!(
        "ggconfigd stand-in: serving {} on {}",
        args.config.display(),
        server.socket_path().display()
    );

    runtime.block_on(async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    });
    server.stop();
    eprintln!("ggconfigd stand-in: stopped");
    Ok(())
}

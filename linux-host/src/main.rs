//! `fleet-provisioning`: turns a Greengrass Lite device's shared claim
//! certificate into its own AWS IoT identity, through AWS IoT fleet
//! provisioning over MQTT.
#![deny(unsafe_code)]

// Implementing `GlobalAlloc` needs `unsafe`; benchmark builds only.
#[cfg(feature = "count-allocations")]
#[allow(unsafe_code)]
mod alloc_counter;
mod corebus_client;
#[cfg(feature = "direct")]
mod direct;
mod iotcored;
mod keys;
mod logger;
mod output;
mod progress;
mod provision;
mod settings;
mod signals;

use clap::Parser;
use corebus_client::CoreBus;
use provision::RunError;
use settings::{Cli, Plan, SettingsError};
use std::process::ExitCode;

/// Exit statuses, one per class of failure. The README lists them.
mod exit {
    /// Provisioned, or nothing to do.
    pub const SUCCESS: u8 = 0;
    /// A flag or configuration value is missing or invalid.
    pub const CONFIGURATION: u8 = 2;
    /// iotcored did not start, exited, or could not connect with the claim
    /// certificate.
    pub const CLAIM_CONNECTION: u8 = 3;
    /// AWS IoT rejected CreateCertificateFromCsr or RegisterThing.
    pub const REJECTED: u8 = 4;
    /// AWS IoT sent no reply in time.
    pub const TIMEOUT: u8 = 5;
    /// A local file, key or daemon operation failed.
    pub const LOCAL_IO: u8 = 6;
    /// AWS IoT sent a reply that cannot be used.
    pub const INVALID_REPLY: u8 = 7;
    /// Stopped by SIGINT or SIGTERM (128 + signal number is added).
    pub const SIGNAL_BASE: u8 = 128;
}

fn signal_status(signal: i32) -> u8 {
    exit::SIGNAL_BASE.saturating_add(u8::try_from(signal).unwrap_or(0))
}

fn main() -> ExitCode {
    #[cfg(feature = "count-allocations")]
    let _allocation_report = alloc_counter::ReportOnDrop;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let is_help = matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            let _ = error.print();
            return ExitCode::from(if is_help {
                exit::SUCCESS
            } else {
                exit::CONFIGURATION
            });
        }
    };
    logger::init(cli.verbose);
    if let Err(error) = signals::install() {
        log::error!("installing the SIGINT and SIGTERM handlers failed: {error}");
        return ExitCode::from(exit::LOCAL_IO);
    }

    let bus = CoreBus::new(&cli.socket_dir);
    let settings = match settings::load(&cli, &bus) {
        Ok(Plan::NotConfigured) => {
            log::info!(
                "fleet provisioning is not configured (claimCertPath is absent or empty); \
                 nothing to do"
            );
            return ExitCode::from(exit::SUCCESS);
        }
        Ok(Plan::AlreadyProvisioned { certificate_path }) => {
            log::info!(
                "already provisioned (system/certificateFilePath is {certificate_path}); \
                 skipping provisioning"
            );
            return ExitCode::from(exit::SUCCESS);
        }
        Ok(Plan::Provision(settings)) => settings,
        Err(error @ SettingsError::Invalid { .. }) => {
            log::error!("{error}");
            return ExitCode::from(exit::CONFIGURATION);
        }
        Err(error @ SettingsError::ConfigDaemon { .. }) => {
            if let Some(signal) = signals::received() {
                log::error!("stopped by signal {signal} while reading the configuration");
                return ExitCode::from(signal_status(signal));
            }
            log::error!("{error}");
            return ExitCode::from(exit::LOCAL_IO);
        }
    };

    log::info!(
        "provisioning with template {} at endpoint {}",
        settings.template_name,
        settings.endpoint
    );
    match provision::run(&settings, &bus) {
        Ok(provisioned) => {
            log::info!(
                "thing {} provisioned with certificate {}; files in {}",
                provisioned.thing_name,
                provisioned.certificate_id,
                settings.output_dir.display()
            );
            log::info!("Process Complete, Your device is now provisioned");
            ExitCode::from(exit::SUCCESS)
        }
        Err(error) => {
            // A signal can also surface as the failure of the call it cut
            // short; the signal is the cause worth reporting.
            let error = match (signals::received(), error) {
                (Some(signal), error) if !matches!(error, RunError::Interrupted(_)) => {
                    log::debug!("the signal cut short: {error}");
                    RunError::Interrupted(signal)
                }
                (_, error) => error,
            };
            log::error!("provisioning failed: {error}");
            ExitCode::from(match error {
                RunError::ClaimConnection { .. } => exit::CLAIM_CONNECTION,
                RunError::Rejected(_) => exit::REJECTED,
                RunError::Timeout(_) => exit::TIMEOUT,
                RunError::InvalidReply(_) => exit::INVALID_REPLY,
                RunError::LocalIo(_) => exit::LOCAL_IO,
                RunError::Interrupted(signal) => signal_status(signal),
            })
        }
    }
}

//! A minimal `log` backend: one line per record on standard error, which
//! systemd's journal and init scripts capture as they are.
//!
//! With `FLEET_PROVISIONING_LOG_TIMES=1` in the environment, each line
//! starts with the `CLOCK_MONOTONIC` time in seconds, as `dmesg` prints it
//! (`[  812.004215] `), so that a benchmark can time each step of a run
//! against clock readings taken outside the process.

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::time::{clock_gettime, ClockId};
use std::fmt::Write as _;
use std::io::Write;

/// Environment variable that turns the monotonic time stamps on.
pub const LOG_TIMES_ENV: &str = "FLEET_PROVISIONING_LOG_TIMES";

struct StderrLogger {
    level: LevelFilter,
    monotonic_times: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // Formatting the line first makes it one write(2) instead of one
        // per fragment (stderr is unbuffered), and keeps lines whole when
        // iotcored writes to the same stderr.
        let mut line = String::new();
        if self.monotonic_times {
            if let Ok(now) = clock_gettime(ClockId::CLOCK_MONOTONIC) {
                let _ = write!(line, "[{:5}.{:06}] ", now.tv_sec(), now.tv_nsec() / 1000);
            }
        }
        let _ = writeln!(line, "fleet-provisioning {level}: {}", record.args());
        // A failed write to stderr has nowhere to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger: info by default, debug with `-v`, trace with `-vv`.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let monotonic_times = std::env::var_os(LOG_TIMES_ENV).is_some_and(|value| value == "1");
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger {
        level,
        monotonic_times,
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

//! SIGINT and SIGTERM: the handlers only record the signal, and every wait
//! of the run checks the record, so that a stop request ends the run
//! promptly and through its normal cleanup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Returns the number of the signal that stopped the run, or 0.
pub fn stop_signal() -> &'static Arc<AtomicUsize> {
    static STOP_SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    STOP_SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Returns the signal that stopped the run, if one arrived.
pub fn received() -> Option<i32> {
    match stop_signal().load(Ordering::Relaxed) {
        0 => None,
        signal => Some(i32::try_from(signal).unwrap_or(i32::MAX)),
    }
}

/// Installs the SIGINT and SIGTERM handlers.
pub fn install() -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let number = usize::try_from(signal).unwrap_or(usize::MAX);
        signal_hook::flag::register_usize(signal, Arc::clone(stop_signal()), number)?;
    }
    Ok(())
}

//! The progress checkpoint on disk, and the crash points the fault tests
//! use.

use crate::output::{self, OutputError};
use fleet_provisioning_core::checkpoint::{self, Checkpoint, MAX_CHECKPOINT_LEN};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the checkpoint file in the output folder. It contains the
/// certificate and ownership token while a run is unfinished, so it is
/// written with mode 0600 like the key, and removed when the run completes.
pub const CHECKPOINT_FILE: &str = ".fleet-provisioning.checkpoint";

/// Environment variable naming a crash point: when the run reaches that
/// point it kills itself with SIGKILL, as a power cut would stop it. Only
/// the fault tests set it.
pub const FAILPOINT_ENV: &str = "FLEET_PROVISIONING_FAILPOINT";

/// Returns the checkpoint path for `output_dir`.
pub fn checkpoint_path(output_dir: &Path) -> PathBuf {
    output_dir.join(CHECKPOINT_FILE)
}

/// What [`load`] found.
pub enum Loaded {
    /// No checkpoint: no unfinished run.
    Absent,
    /// A valid checkpoint.
    Valid(Box<Checkpoint>),
    /// A checkpoint that cannot be read: damaged, or of another format
    /// version. It was logged and removed; it still shows that an earlier
    /// run of this tool was unfinished.
    Damaged,
}

/// Reads the checkpoint at `path`. A damaged one or one of another format
/// version is logged and removed, because starting over is always safe.
pub fn load(path: &Path) -> Result<Loaded, OutputError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Absent),
        Err(source) => {
            return Err(OutputError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    match checkpoint::decode(&bytes) {
        Ok(record) => Ok(Loaded::Valid(Box::new(record))),
        Err(error) => {
            log::warn!(
                "ignoring the checkpoint {}: {error}; starting over from a fresh CSR",
                path.display()
            );
            output::remove_file_if_exists(path)?;
            Ok(Loaded::Damaged)
        }
    }
}

/// Writes `record` to `path` atomically with mode 0600.
pub fn save(path: &Path, record: &Checkpoint) -> Result<(), OutputError> {
    let mut buffer = vec![0u8; MAX_CHECKPOINT_LEN];
    let len = checkpoint::encode(record, &mut buffer).map_err(|error| OutputError::Encode {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    output::write_file_atomic(path, &buffer[..len], 0o600)
}

/// Returns the current Unix time in seconds; a clock before 1970 gives 0,
/// which makes every recorded token count as expired.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Kills the process with SIGKILL when [`FAILPOINT_ENV`] names `point`.
pub fn failpoint(point: &str) {
    if std::env::var_os(FAILPOINT_ENV).is_some_and(|value| value == point) {
        log::warn!("crash point {point} reached; killing this process as a power cut would");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

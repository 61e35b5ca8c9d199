//! File output for the credentials folder: atomic writes with a fixed mode,
//! folder creation, ownership changes and removal.
//!
//! Every change goes through system calls; no external program (`cp`,
//! `chown`) is run.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use zeroize::Zeroizing;

/// Mode of folders that [`create_output_dir`] creates, before the umask.
/// The Greengrass Lite C tool creates its output folders with 0o755 too
/// (`gg_dir_openat` in aws-greengrass-sdk-lite).
pub const OUTPUT_DIR_MODE: u32 = 0o755;

/// Number of temporary file names [`write_file_atomic`] tries before it
/// gives up, when names are taken by other writers or by stale files.
const MAX_TEMP_ATTEMPTS: u32 = 100;

/// Errors from writing, copying, removing and changing the owner of files.
#[derive(Debug)]
pub enum OutputError {
    /// Creating the output folder failed.
    CreateDir {
        /// Folder that could not be created.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// The output folder path exists but is not a folder.
    NotADirectory {
        /// Path that is not a folder.
        path: PathBuf,
        /// An error of kind [`ErrorKind::NotADirectory`].
        source: io::Error,
    },
    /// The path has no file name, for example `/` or `..`.
    InvalidPath {
        /// The rejected path.
        path: PathBuf,
        /// An error of kind [`ErrorKind::InvalidInput`].
        source: io::Error,
    },
    /// Creating the temporary file for an atomic write failed.
    CreateTemp {
        /// Temporary file path of the last attempt.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Writing, setting the mode of or syncing the temporary file failed.
    Write {
        /// Temporary file path.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Renaming the temporary file over the target failed.
    Rename {
        /// Target path.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Syncing the folder after the rename failed, so the new file may not
    /// survive a power loss.
    SyncDir {
        /// Folder path.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Reading a source file failed.
    Read {
        /// Source file path.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Changing the owner of a file failed.
    Chown {
        /// Path whose owner could not be changed.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// Removing a file failed.
    Remove {
        /// Path that could not be removed.
        path: PathBuf,
        /// Error from the system call.
        source: io::Error,
    },
    /// A record could not be encoded for writing.
    Encode {
        /// File it was meant for.
        path: PathBuf,
        /// Why encoding failed.
        reason: String,
    },
    /// The file exists and this run did not write it, so it is left alone.
    NotOurs {
        /// The existing file.
        path: PathBuf,
        /// What the file would have held, such as "private key".
        what: &'static str,
    },
    /// The `--owner` value is not of the form `USER`, `USER:` or `USER:GROUP`.
    InvalidOwner {
        /// The rejected value.
        spec: String,
        /// Reason for the rejection.
        reason: &'static str,
    },
    /// No user has this name or id.
    UnknownUser {
        /// The user name from the `--owner` value.
        name: String,
    },
    /// No group has this name or id.
    UnknownGroup {
        /// The group name from the `--owner` value.
        name: String,
    },
    /// Looking up a user or group in the system database failed.
    OwnerLookup {
        /// The user or group name that was looked up.
        name: String,
        /// Error from `getpwnam_r`, `getgrnam_r`, `getpwuid_r` or `getgrgid_r`.
        source: io::Error,
    },
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateDir { path, source } => write!(
                f,
                "failed to create folder {}: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::NotADirectory { path, .. } => write!(
                f,
                "{} exists but is not a folder; remove it or choose another --output-dir",
                path.display()
            ),
            Self::InvalidPath { path, .. } => write!(
                f,
                "invalid output file path {}: it has no file name",
                path.display()
            ),
            Self::CreateTemp { path, source } => write!(
                f,
                "failed to create temporary file {}: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::Write { path, source } => write!(
                f,
                "failed to write temporary file {}: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::Rename { path, source } => write!(
                f,
                "failed to replace {} with the new file: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::SyncDir { path, source } => write!(
                f,
                "failed to sync folder {} after writing a file in it: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::Read { path, source } => write!(
                f,
                "failed to read {}: {source}; check that the file exists and is readable",
                path.display()
            ),
            Self::Chown { path, source } => write!(
                f,
                "failed to change the owner of {}: {source}{}",
                path.display(),
                chown_fix_for(source)
            ),
            Self::Remove { path, source } => write!(
                f,
                "failed to remove {}: {source}{}",
                path.display(),
                fix_for(source)
            ),
            Self::InvalidOwner { spec, reason } => write!(
                f,
                "invalid --owner value {spec:?}: {reason}; use USER:GROUP, \
                 for example ggcore:ggcore"
            ),
            Self::UnknownUser { name } => write!(
                f,
                "user {name:?} not found; create it or pass another --owner value"
            ),
            Self::UnknownGroup { name } => write!(
                f,
                "group {name:?} not found; create it or pass another --owner value"
            ),
            Self::OwnerLookup { name, source } => write!(
                f,
                "failed to look up user or group {name:?}: {source}; check /etc/nsswitch.conf \
                 and the user database, or pass another --owner value"
            ),
            Self::Encode { path, reason } => {
                write!(f, "failed to encode {}: {reason}", path.display())
            }
            Self::NotOurs { path, what } => write!(
                f,
                "{} already exists and no unfinished run of fleet-provisioning wrote it, so \
                 this run will not overwrite it with a new {what}; if it is not in use, move \
                 it away and run again",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OutputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::CreateDir { source, .. }
            | Self::NotADirectory { source, .. }
            | Self::InvalidPath { source, .. }
            | Self::CreateTemp { source, .. }
            | Self::Write { source, .. }
            | Self::Rename { source, .. }
            | Self::SyncDir { source, .. }
            | Self::Read { source, .. }
            | Self::Chown { source, .. }
            | Self::Remove { source, .. }
            | Self::OwnerLookup { source, .. } => Some(source),
            Self::InvalidOwner { .. }
            | Self::UnknownUser { .. }
            | Self::UnknownGroup { .. }
            | Self::Encode { .. }
            | Self::NotOurs { .. } => None,
        }
    }
}

/// Returns advice, starting with "; ", for the common causes of a failed
/// file operation in the output folder.
fn fix_for(error: &io::Error) -> &'static str {
    match error.kind() {
        ErrorKind::PermissionDenied => "; run as root or choose another --output-dir",
        ErrorKind::StorageFull => "; free disk space",
        ErrorKind::ReadOnlyFilesystem => {
            "; remount the file system read-write or choose another --output-dir"
        }
        ErrorKind::NotADirectory => {
            "; a part of the path is not a folder, so choose another --output-dir"
        }
        _ if error.raw_os_error() == Some(nix::libc::EDQUOT) => {
            "; free disk space or raise the disk quota"
        }
        _ => "",
    }
}

/// Returns advice, starting with "; ", for a failed ownership change.
fn chown_fix_for(error: &io::Error) -> &'static str {
    match error.kind() {
        ErrorKind::PermissionDenied => "; run as root to change file owners",
        ErrorKind::NotFound => "; the file was removed while provisioning ran",
        _ => fix_for(error),
    }
}

/// Writes `contents` to `path` atomically, so readers, and the file left
/// after a crash, have the old contents or the whole new contents, never a mix.
///
/// A temporary file in the same folder is created with `O_CREAT | O_EXCL`
/// and `mode` (narrowed further by the umask until the explicit `fchmod`), so
/// it never has a broader mode than `mode`. The data is written, the file is
/// synced and renamed over `path`, and the folder is synced. On any error
/// before the rename, the temporary file is removed.
///
/// A symbolic link at `path` is replaced by the new file, not followed.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), OutputError> {
    let (dir, file_name) = split_path(path)?;
    let (mut file, temp_path) = create_temp_file(&dir, &file_name, mode)?;

    let written = write_and_sync(&mut file, contents, mode);
    drop(file);
    if let Err(source) = written {
        remove_temp_file(&temp_path);
        return Err(OutputError::Write {
            path: temp_path,
            source,
        });
    }

    if let Err(source) = fs::rename(&temp_path, path) {
        remove_temp_file(&temp_path);
        return Err(OutputError::Rename {
            path: path.to_path_buf(),
            source,
        });
    }

    sync_dir(&dir)
}

/// Copies the file at `from` to `to` with [`write_file_atomic`], so `to`
/// gets `mode` whatever the mode of `from` is.
pub fn copy_file_atomic(from: &Path, to: &Path, mode: u32) -> Result<(), OutputError> {
    // The source can be a private key, so the copy in memory is zeroed.
    let contents = Zeroizing::new(fs::read(from).map_err(|source| OutputError::Read {
        path: from.to_path_buf(),
        source,
    })?);
    write_file_atomic(to, &contents, mode)
}

/// Creates the folder `path` and its missing parents with mode
/// [`OUTPUT_DIR_MODE`] (before the umask). An existing folder, or a symbolic
/// link to one, is kept as it is, and an existing path of another type is
/// an error.
pub fn create_output_dir(path: &Path) -> Result<(), OutputError> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(OutputError::NotADirectory {
                path: path.to_path_buf(),
                source: io::Error::from(ErrorKind::NotADirectory),
            })
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(OutputError::CreateDir {
                path: path.to_path_buf(),
                source,
            })
        }
    }

    DirBuilder::new()
        .recursive(true)
        .mode(OUTPUT_DIR_MODE)
        .create(path)
        .map_err(|source| OutputError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Owner (user and group) to give the output files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name, or the decimal id when no user has that id.
    pub user: String,
    /// Group name, or the decimal id when no group has that id.
    pub group: String,
}

/// Parses an owner value and resolves it against the user and group
/// databases (`getpwnam_r`, `getgrnam_r`).
///
/// Accepted forms, as in `chown(1)`: `USER:GROUP`, and `USER:` for the
/// user's login group. `USER` alone also means the user's login group,
/// unlike `chown(1)`, which keeps the group then, because [`Owner`] always
/// carries both ids. `:GROUP` is rejected because it leaves the user unset.
/// Each name is looked up first, and a name of decimal digits that no entry
/// has is taken as a numeric id, as `chown(1)` does.
pub fn resolve_owner(spec: &str) -> Result<Owner, OutputError> {
    let invalid = |reason| OutputError::InvalidOwner {
        spec: spec.to_owned(),
        reason,
    };

    let (user_name, group_name) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group).filter(|group| !group.is_empty())),
        None => (spec, None),
    };
    if user_name.is_empty() {
        return Err(invalid("the user name is missing"));
    }
    if group_name.is_some_and(|group| group.contains(':')) {
        return Err(invalid("it contains more than one ':'"));
    }

    let (uid, user, login_gid) = resolve_user(user_name)?;
    let (gid, group) = match group_name {
        Some(name) => resolve_group(name)?,
        None => {
            let login_gid = login_gid.ok_or_else(|| {
                invalid("the user id has no user entry, so it has no login group to use")
            })?;
            (login_gid, group_name_for_gid(login_gid)?)
        }
    };

    Ok(Owner {
        uid,
        gid,
        user,
        group,
    })
}

/// Treats the errors that getpwnam(3) and getgrnam(3) allow for "no such
/// entry" as no entry. glibc returns ENOENT, for one, on a root file system
/// without /etc/passwd, where a numeric `--owner` must still work.
fn entry_or_none<T>(result: nix::Result<Option<T>>) -> nix::Result<Option<T>> {
    match result {
        Err(nix::errno::Errno::ENOENT)
        | Err(nix::errno::Errno::ESRCH)
        | Err(nix::errno::Errno::EBADF)
        | Err(nix::errno::Errno::EPERM) => Ok(None),
        other => other,
    }
}

/// Looks up a user by name, then as a numeric id. Returns the uid, the
/// name, and the login group id when the user has an entry.
fn resolve_user(name: &str) -> Result<(u32, String, Option<u32>), OutputError> {
    let lookup_error = |source: nix::Error| OutputError::OwnerLookup {
        name: name.to_owned(),
        source: io::Error::from(source),
    };

    if let Some(user) = entry_or_none(User::from_name(name)).map_err(lookup_error)? {
        return Ok((user.uid.as_raw(), user.name, Some(user.gid.as_raw())));
    }

    let uid = parse_id(name).ok_or_else(|| OutputError::UnknownUser {
        name: name.to_owned(),
    })?;
    match entry_or_none(User::from_uid(Uid::from_raw(uid))).map_err(lookup_error)? {
        Some(user) => Ok((uid, user.name, Some(user.gid.as_raw()))),
        None => Ok((uid, uid.to_string(), None)),
    }
}

/// Looks up a group by name, then as a numeric id. Returns the gid and the
/// name.
fn resolve_group(name: &str) -> Result<(u32, String), OutputError> {
    let lookup_error = |source: nix::Error| OutputError::OwnerLookup {
        name: name.to_owned(),
        source: io::Error::from(source),
    };

    if let Some(group) = entry_or_none(Group::from_name(name)).map_err(lookup_error)? {
        return Ok((group.gid.as_raw(), group.name));
    }

    let gid = parse_id(name).ok_or_else(|| OutputError::UnknownGroup {
        name: name.to_owned(),
    })?;
    Ok((gid, group_name_for_gid(gid)?))
}

/// Returns the name of the group with id `gid`, or the decimal id when no
/// group has it.
fn group_name_for_gid(gid: u32) -> Result<String, OutputError> {
    match entry_or_none(Group::from_gid(Gid::from_raw(gid))) {
        Ok(Some(group)) => Ok(group.name),
        Ok(None) => Ok(gid.to_string()),
        Err(source) => Err(OutputError::OwnerLookup {
            name: gid.to_string(),
            source: io::Error::from(source),
        }),
    }
}

/// Parses a decimal user or group id. Only ASCII digits are accepted, so
/// "+0" or " 0" stay names.
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Sets the owner of `path` with `lchown(2)`.
///
/// A symbolic link at `path` gets the new owner itself and its target is
/// left alone, so a link planted in a folder that the new owner can write
/// cannot redirect the change to a file such as `/etc/shadow`.
pub fn chown_path(path: &Path, owner: &Owner) -> Result<(), OutputError> {
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).map_err(|source| {
        OutputError::Chown {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Removes the file at `path`; a missing file is not an error.
pub fn remove_file_if_exists(path: &Path) -> Result<(), OutputError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OutputError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Splits `path` into its folder (`.` for a bare file name) and file name.
fn split_path(path: &Path) -> Result<(PathBuf, String), OutputError> {
    let invalid = || OutputError::InvalidPath {
        path: path.to_path_buf(),
        source: io::Error::from(ErrorKind::InvalidInput),
    };

    let file_name = path.file_name().ok_or_else(invalid)?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, file_name.to_string_lossy().into_owned()))
}

/// Returns the temporary file path for attempt `attempt` at writing
/// `file_name` in `dir`. The leading dot hides it from `ls`.
fn temp_path(dir: &Path, file_name: &str, attempt: u32) -> PathBuf {
    dir.join(format!(".{file_name}.tmp.{}.{attempt}", std::process::id()))
}

/// Creates a new temporary file next to the target with `O_CREAT | O_EXCL`,
/// trying the next name while a name is taken, so an existing file (stale
/// or another writer's) is never opened or replaced.
fn create_temp_file(
    dir: &Path,
    file_name: &str,
    mode: u32,
) -> Result<(File, PathBuf), OutputError> {
    let mut attempt = 0;
    loop {
        let path = temp_path(dir, file_name, attempt);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path);
        match created {
            Ok(file) => return Ok((file, path)),
            Err(error)
                if error.kind() == ErrorKind::AlreadyExists && attempt + 1 < MAX_TEMP_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(source) => return Err(OutputError::CreateTemp { path, source }),
        }
    }
}

/// Writes all of `contents`, sets the exact `mode` (the umask may have
/// narrowed it at creation) and syncs data and metadata to disk.
fn write_and_sync(file: &mut File, contents: &[u8], mode: u32) -> io::Result<()> {
    file.write_all(contents)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()
}

/// Removes a temporary file after a failed write. The removal error is
/// dropped because the write error is the one to report.
fn remove_temp_file(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Syncs the folder so the rename in it survives a power loss.
fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|source| OutputError::SyncDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn running_as_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn write_private_key_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("priv_key");

        write_file_atomic(&path, b"secret", 0o600).unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"secret");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(dir_entries(dir.path()), ["priv_key"]);
    }

    #[test]
    fn write_certificate_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certificate.pem");

        write_file_atomic(&path, b"cert", 0o644).unwrap();

        assert_eq!(mode_of(&path), 0o644);
    }

    #[test]
    fn write_replaces_mode_of_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("priv_key");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();

        write_file_atomic(&path, b"new", 0o600).unwrap();

        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn temp_file_created_with_final_mode() {
        let dir = tempfile::tempdir().unwrap();

        let (file, temp) = create_temp_file(dir.path(), "priv_key", 0o600).unwrap();

        // Before any byte is written, the mode is already no broader than 0600.
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(mode_of(&temp) & !0o600, 0);
        assert!(temp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".priv_key.tmp."));
    }

    #[test]
    fn existing_temp_name_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("priv_key");
        let stale = temp_path(dir.path(), "priv_key", 0);
        fs::write(&stale, b"stale").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();

        write_file_atomic(&path, b"secret", 0o600).unwrap();

        assert_eq!(fs::read(&stale).unwrap(), b"stale");
        assert_eq!(mode_of(&stale), 0o666);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        assert_eq!(mode_of(&path), 0o600);
        let stale_name = stale.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(dir_entries(dir.path()), [stale_name, "priv_key".to_owned()]);
    }

    #[test]
    fn temp_symlink_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(dir.path(), "priv_key", 0)).unwrap();

        write_file_atomic(&dir.path().join("priv_key"), b"secret", 0o600).unwrap();

        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs::read(dir.path().join("priv_key")).unwrap(), b"secret");
    }

    #[test]
    fn rename_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certificate.pem");
        write_file_atomic(&path, b"old contents", 0o644).unwrap();
        let old_inode = fs::metadata(&path).unwrap().ino();
        let mut old_reader = File::open(&path).unwrap();

        write_file_atomic(&path, b"new", 0o644).unwrap();

        // A reader that opened the old file still reads all of it, because
        // the new file is a new inode and the old one was never truncated.
        let mut old_contents = String::new();
        old_reader.read_to_string(&mut old_contents).unwrap();
        assert_eq!(old_contents, "old contents");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_ne!(fs::metadata(&path).unwrap().ino(), old_inode);
        assert_eq!(dir_entries(dir.path()), ["certificate.pem"]);
    }

    #[test]
    fn write_replaces_symlink_not_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"target").unwrap();
        let link = dir.path().join("certificate.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        write_file_atomic(&link, b"new", 0o644).unwrap();

        assert_eq!(fs::read(&target).unwrap(), b"target");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(fs::read(&link).unwrap(), b"new");
    }

    #[test]
    fn write_bare_file_name_uses_current_dir() {
        let (dir, name) = split_path(Path::new("priv_key")).unwrap();
        assert_eq!(dir, Path::new("."));
        assert_eq!(name, "priv_key");
    }

    #[test]
    fn write_path_without_file_name_rejected() {
        let error = write_file_atomic(Path::new("/"), b"x", 0o600).unwrap_err();
        assert!(
            matches!(error, OutputError::InvalidPath { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("has no file name"));
    }

    #[test]
    fn write_parent_is_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_folder = dir.path().join("file");
        fs::write(&not_a_folder, b"").unwrap();
        let path = not_a_folder.join("priv_key");

        let error = write_file_atomic(&path, b"secret", 0o600).unwrap_err();

        assert!(matches!(error, OutputError::CreateTemp { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&not_a_folder.display().to_string()),
            "{message}"
        );
        assert!(message.contains("not a folder"), "{message}");
        assert_eq!(dir_entries(dir.path()), ["file"]);
    }

    #[test]
    fn failed_rename_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder at the target makes rename(2) fail after the
        // temporary file was written, even for root.
        let target = dir.path().join("certificate.pem");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"").unwrap();

        let error = write_file_atomic(&target, b"cert", 0o644).unwrap_err();

        assert!(matches!(error, OutputError::Rename { .. }), "{error:?}");
        assert!(error.to_string().contains(&target.display().to_string()));
        assert_eq!(dir_entries(dir.path()), ["certificate.pem"]);
        assert!(target.is_dir());
    }

    #[test]
    fn read_only_folder_leaves_nothing() {
        if running_as_root() {
            println!("skipped: root bypasses folder permission checks");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let read_only = dir.path().join("read-only");
        fs::create_dir(&read_only).unwrap();
        fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).unwrap();

        let result = write_file_atomic(&read_only.join("priv_key"), b"secret", 0o600);

        fs::set_permissions(&read_only, fs::Permissions::from_mode(0o755)).unwrap();
        let error = result.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("run as root or choose another --output-dir"),
            "{message}"
        );
        assert!(dir_entries(&read_only).is_empty());
    }

    #[test]
    fn create_output_dir_nested() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("var/lib/greengrass/credentials");

        create_output_dir(&nested).unwrap();

        assert!(nested.is_dir());
        // The umask can only remove bits from 0755.
        assert_eq!(mode_of(&nested) & !OUTPUT_DIR_MODE, 0);
        assert_eq!(mode_of(&nested) & 0o700, 0o700);
    }

    #[test]
    fn create_output_dir_existing_kept() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("credentials");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(existing.join("keep"), b"kept").unwrap();

        create_output_dir(&existing).unwrap();

        assert_eq!(mode_of(&existing), 0o700);
        assert_eq!(fs::read(existing.join("keep")).unwrap(), b"kept");
    }

    #[test]
    fn create_output_dir_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        fs::write(&file, b"").unwrap();

        let error = create_output_dir(&file).unwrap_err();

        assert!(
            matches!(error, OutputError::NotADirectory { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("not a folder"), "{message}");
    }

    #[test]
    fn create_output_dir_under_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();

        let error = create_output_dir(&file.join("credentials")).unwrap_err();

        assert!(matches!(error, OutputError::CreateDir { .. }), "{error:?}");
    }

    #[test]
    fn copy_sets_mode_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("AmazonRootCA1.pem");
        fs::write(&from, b"root ca").unwrap();
        fs::set_permissions(&from, fs::Permissions::from_mode(0o600)).unwrap();
        let to = dir.path().join("AmazonRootCA.pem");

        copy_file_atomic(&from, &to, 0o644).unwrap();

        assert_eq!(fs::read(&to).unwrap(), b"root ca");
        assert_eq!(mode_of(&to), 0o644);
        assert_eq!(mode_of(&from), 0o600);
    }

    #[test]
    fn copy_missing_source_fails() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("missing.pem");
        let to = dir.path().join("AmazonRootCA.pem");

        let error = copy_file_atomic(&from, &to, 0o644).unwrap_err();

        assert!(matches!(error, OutputError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains(&from.display().to_string()));
        assert!(!to.exists());
    }

    #[test]
    fn resolve_owner_root_names() {
        let owner = resolve_owner("root:root").unwrap();
        assert_eq!(
            owner,
            Owner {
                uid: 0,
                gid: 0,
                user: "root".to_owned(),
                group: "root".to_owned(),
            }
        );
    }

    #[test]
    fn resolve_owner_numeric_ids() {
        let owner = resolve_owner("0:0").unwrap();
        assert_eq!(owner.uid, 0);
        assert_eq!(owner.gid, 0);
        assert_eq!(owner.user, "root");
        assert_eq!(owner.group, "root");
    }

    #[test]
    fn resolve_owner_unassigned_numeric_ids() {
        let owner = resolve_owner("4000000001:4000000002").unwrap();
        assert_eq!(owner.uid, 4_000_000_001);
        assert_eq!(owner.gid, 4_000_000_002);
        assert_eq!(owner.user, "4000000001");
        assert_eq!(owner.group, "4000000002");
    }

    #[test]
    fn resolve_owner_login_group() {
        for spec in ["root:", "root", "0:"] {
            let owner = resolve_owner(spec).unwrap();
            assert_eq!(owner.uid, 0, "{spec}");
            assert_eq!(owner.gid, 0, "{spec}");
            assert_eq!(owner.group, "root", "{spec}");
        }
    }

    #[test]
    fn resolve_owner_unknown_user() {
        let error = resolve_owner("no-such-user-fp:root").unwrap_err();

        assert!(
            matches!(error, OutputError::UnknownUser { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("\"no-such-user-fp\""), "{message}");
        assert!(message.contains("--owner"), "{message}");
    }

    #[test]
    fn resolve_owner_unknown_group() {
        let error = resolve_owner("root:no-such-group-fp").unwrap_err();

        assert!(
            matches!(error, OutputError::UnknownGroup { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("\"no-such-group-fp\""), "{message}");
        assert!(message.contains("--owner"), "{message}");
    }

    #[test]
    fn resolve_owner_invalid_forms() {
        for spec in ["", ":root", ":", "root:root:root", "4000000001:"] {
            let error = resolve_owner(spec).unwrap_err();
            assert!(
                matches!(error, OutputError::InvalidOwner { .. }),
                "{spec:?}: {error:?}"
            );
            assert!(error.to_string().contains("--owner"), "{spec:?}");
        }
    }

    #[test]
    fn chown_sets_numeric_owner() {
        if !running_as_root() {
            println!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("priv_key");
        fs::write(&path, b"secret").unwrap();
        let owner = resolve_owner("4000000001:4000000002").unwrap();

        chown_path(&path, &owner).unwrap();

        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.uid(), 4_000_000_001);
        assert_eq!(metadata.gid(), 4_000_000_002);
    }

    #[test]
    fn chown_symlink_leaves_target() {
        if !running_as_root() {
            println!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"").unwrap();
        let target_owner = fs::metadata(&target).unwrap().uid();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let owner = resolve_owner("4000000001:4000000002").unwrap();

        chown_path(&link, &owner).unwrap();

        assert_eq!(fs::symlink_metadata(&link).unwrap().uid(), 4_000_000_001);
        assert_eq!(fs::metadata(&target).unwrap().uid(), target_owner);
    }

    #[test]
    fn chown_missing_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let owner = resolve_owner("root:root").unwrap();

        let error = chown_path(&path, &owner).unwrap_err();

        assert!(matches!(error, OutputError::Chown { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn remove_existing_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert_req.pem");
        fs::write(&path, b"csr").unwrap();

        remove_file_if_exists(&path).unwrap();
        assert!(!path.exists());

        remove_file_if_exists(&path).unwrap();
    }

    #[test]
    fn remove_folder_fails() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("cert_req.pem");
        fs::create_dir(&folder).unwrap();

        let error = remove_file_if_exists(&folder).unwrap_err();

        assert!(matches!(error, OutputError::Remove { .. }), "{error:?}");
        assert!(folder.is_dir());
    }

    #[test]
    fn display_suggests_fixes() {
        let path = PathBuf::from("/var/lib/greengrass/credentials/priv_key");
        let cases = [
            (
                nix::libc::EACCES,
                "run as root or choose another --output-dir",
            ),
            (nix::libc::ENOSPC, "free disk space"),
            (nix::libc::EDQUOT, "raise the disk quota"),
            (nix::libc::EROFS, "remount the file system read-write"),
        ];

        for (errno, expected_fix) in cases {
            let error = OutputError::Write {
                path: path.clone(),
                source: io::Error::from_raw_os_error(errno),
            };
            let message = error.to_string();
            assert!(message.contains(expected_fix), "{errno}: {message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("failed to write"), "{message}");
        }
    }

    #[test]
    fn display_chown_permission_fix() {
        let error = OutputError::Chown {
            path: PathBuf::from("/x"),
            source: io::Error::from_raw_os_error(nix::libc::EPERM),
        };
        assert!(error
            .to_string()
            .contains("run as root to change file owners"));
    }
}

//! Client side of the Greengrass Lite core bus over Unix stream sockets.
//!
//! One connection per request, as the daemons expect: a call writes one
//! request frame and reads one response frame; a subscription reads an
//! `accepted` frame and then one frame per event until either side closes.

use fleet_provisioning_core::corebus::{self, CoreBusError, GgError, Response};
use fleet_provisioning_core::eventstream::{self, MAX_FRAME_LEN, PRELUDE_LEN};
use fleet_provisioning_core::object::Object;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::signals;
use std::time::{Duration, Instant};

/// Time allowed for one call's response. The daemons reply to local calls in
/// microseconds; this only bounds a daemon that hangs.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of a core-bus exchange.
#[derive(Debug)]
pub enum CoreBusClientError {
    /// The socket could not be opened.
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// Reading or writing the socket failed, or it timed out.
    Io {
        /// Socket path.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The server sent no whole response in time.
    TimedOut {
        /// Socket path.
        path: PathBuf,
        /// How long the call waited.
        after: Duration,
    },
    /// SIGINT or SIGTERM arrived while the call waited.
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// The peer closed the connection before a whole frame arrived.
    Closed {
        /// Socket path.
        path: PathBuf,
    },
    /// The bytes received were not a valid core-bus frame.
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        error: CoreBusError,
    },
    /// The server returned a `GgError` code.
    Remote {
        /// Socket path.
        path: PathBuf,
        /// The raw error code.
        code: i32,
    },
    /// The server replied to a call with a subscription's `accepted` frame.
    UnexpectedAccepted {
        /// Socket path.
        path: PathBuf,
    },
    /// The server replied to a subscription with something other than
    /// `accepted`.
    NotAccepted {
        /// Socket path.
        path: PathBuf,
    },
}

impl CoreBusClientError {
    /// Returns the `GgError` the server sent, if it sent one.
    pub fn remote_error(&self) -> Option<GgError> {
        match self {
            CoreBusClientError::Remote { code, .. } => GgError::from_code(*code),
            _ => None,
        }
    }
}

impl fmt::Display for CoreBusClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreBusClientError::Connect { path, source } => write!(
                f,
                "cannot connect to core-bus socket {}: {source}; is the daemon running?",
                path.display()
            ),
            CoreBusClientError::Io { path, source } => {
                write!(f, "core-bus socket {}: {source}", path.display())
            }
            CoreBusClientError::TimedOut { path, after } => write!(
                f,
                "core-bus server at {} sent no complete response within {} s; check that \
                 the daemon is healthy, or restart it",
                path.display(),
                after.as_secs()
            ),
            CoreBusClientError::Interrupted { signal } => {
                write!(
                    f,
                    "stopped by signal {signal} while waiting for a core-bus response"
                )
            }
            CoreBusClientError::Closed { path } => write!(
                f,
                "core-bus socket {} closed before a whole frame arrived",
                path.display()
            ),
            CoreBusClientError::Protocol { path, error } => write!(
                f,
                "invalid frame from core-bus socket {}: {error}",
                path.display()
            ),
            CoreBusClientError::Remote { path, code } => {
                let name = GgError::from_code(*code).map_or("unknown", GgError::name);
                write!(
                    f,
                    "core-bus server at {} returned error {code} ({name})",
                    path.display()
                )
            }
            CoreBusClientError::UnexpectedAccepted { path } => write!(
                f,
                "core-bus server at {} replied to a call with a subscription acceptance",
                path.display()
            ),
            CoreBusClientError::NotAccepted { path } => write!(
                f,
                "core-bus server at {} did not accept the subscription",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CoreBusClientError {}

/// One whole frame read from a socket.
pub struct FrameBuf {
    bytes: Vec<u8>,
}

impl FrameBuf {
    /// Decodes the frame as a core-bus response.
    pub fn response(&self) -> Result<Response<'_>, CoreBusError> {
        let frame = eventstream::decode_frame(&self.bytes)?;
        corebus::parse_response(&frame)
    }
}

/// Longest single blocking read while a call waits, so that a signal or the
/// call's deadline is noticed promptly.
const READ_SLICE: Duration = Duration::from_millis(100);

/// Fills `buf` from `stream`. With a `deadline`, reads in short slices and
/// fails at the deadline or when SIGINT or SIGTERM arrived, however slowly
/// the peer trickles bytes. Returns the bytes read, fewer than `buf.len()`
/// only at the end of the stream.
fn read_until(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
    path: &Path,
) -> Result<usize, CoreBusClientError> {
    let mut filled = 0;
    while filled < buf.len() {
        if let Some(deadline) = deadline {
            if let Some(signal) = signals::received() {
                return Err(CoreBusClientError::Interrupted { signal });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CoreBusClientError::TimedOut {
                    path: path.to_owned(),
                    after: CALL_TIMEOUT,
                });
            }
            stream
                .set_read_timeout(Some((deadline - now).min(READ_SLICE)))
                .map_err(|source| CoreBusClientError::Io {
                    path: path.to_owned(),
                    source,
                })?;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if deadline.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
            Err(source) => {
                return Err(CoreBusClientError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(filled)
}

/// Reads one frame: the 12-byte prelude, then the rest. Returns `None` on a
/// clean end of stream before the first byte. With a `deadline`, the whole
/// frame must arrive by then.
pub fn read_frame(
    stream: &mut UnixStream,
    path: &Path,
    deadline: Option<Instant>,
) -> Result<Option<FrameBuf>, CoreBusClientError> {
    let mut prelude = [0u8; PRELUDE_LEN];
    match read_until(stream, &mut prelude, deadline, path)? {
        0 => return Ok(None),
        PRELUDE_LEN => {}
        _ => {
            return Err(CoreBusClientError::Closed {
                path: path.to_owned(),
            })
        }
    }
    let total = eventstream::frame_len(&prelude).map_err(|error| CoreBusClientError::Protocol {
        path: path.to_owned(),
        error: error.into(),
    })?;
    let mut bytes = vec![0u8; total.min(MAX_FRAME_LEN)];
    bytes[..PRELUDE_LEN].copy_from_slice(&prelude);
    let rest = bytes.len() - PRELUDE_LEN;
    if read_until(stream, &mut bytes[PRELUDE_LEN..], deadline, path)? < rest {
        return Err(CoreBusClientError::Closed {
            path: path.to_owned(),
        });
    }
    Ok(Some(FrameBuf { bytes }))
}

/// Builds request frames into a reusable buffer and opens connections.
#[derive(Debug, Clone)]
pub struct CoreBus {
    socket_dir: PathBuf,
}

impl CoreBus {
    /// Returns a client for the sockets in `socket_dir` (normally
    /// `/run/greengrass`).
    pub fn new(socket_dir: impl Into<PathBuf>) -> Self {
        CoreBus {
            socket_dir: socket_dir.into(),
        }
    }

    /// Returns the socket folder.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Returns the socket path of `interface`.
    pub fn socket_path(&self, interface: &str) -> PathBuf {
        self.socket_dir.join(interface)
    }

    fn connect(&self, interface: &str) -> Result<(UnixStream, PathBuf), CoreBusClientError> {
        let path = self.socket_path(interface);
        let stream = UnixStream::connect(&path).map_err(|source| CoreBusClientError::Connect {
            path: path.clone(),
            source,
        })?;
        Ok((stream, path))
    }

    /// Sends a call and returns the response frame; a server error becomes
    /// [`CoreBusClientError::Remote`].
    pub fn call(
        &self,
        interface: &str,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, CoreBusError>,
    ) -> Result<FrameBuf, CoreBusClientError> {
        let (mut stream, path) = self.connect(interface)?;
        let io_error = |source| CoreBusClientError::Io {
            path: path.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(io_error)?;
        stream
            .set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(io_error)?;
        send_request(&mut stream, &path, encode)?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        let frame = read_frame(&mut stream, &path, Some(deadline))?
            .ok_or_else(|| CoreBusClientError::Closed { path: path.clone() })?;
        match frame.response() {
            Ok(Response::Error(code)) => Err(CoreBusClientError::Remote { path, code }),
            Ok(Response::Accepted) => Err(CoreBusClientError::UnexpectedAccepted { path }),
            Ok(Response::Value(_)) => Ok(frame),
            Err(error) => Err(CoreBusClientError::Protocol { path, error }),
        }
    }

    /// Opens a subscription and waits for its `accepted` frame (bounded by
    /// [`CALL_TIMEOUT`]). Events are then read with [`read_frame`] on the
    /// returned stream.
    pub fn subscribe(
        &self,
        interface: &str,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, CoreBusError>,
    ) -> Result<(UnixStream, PathBuf), CoreBusClientError> {
        let (mut stream, path) = self.connect(interface)?;
        let io_error = |source| CoreBusClientError::Io {
            path: path.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(io_error)?;
        stream
            .set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(io_error)?;
        send_request(&mut stream, &path, encode)?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        let frame = read_frame(&mut stream, &path, Some(deadline))?
            .ok_or_else(|| CoreBusClientError::Closed { path: path.clone() })?;
        match frame.response() {
            Ok(Response::Accepted) => {}
            Ok(Response::Error(code)) => return Err(CoreBusClientError::Remote { path, code }),
            Ok(Response::Value(_)) => return Err(CoreBusClientError::NotAccepted { path }),
            Err(error) => return Err(CoreBusClientError::Protocol { path, error }),
        }
        stream
            .set_read_timeout(None)
            .map_err(|source| CoreBusClientError::Io {
                path: path.clone(),
                source,
            })?;
        Ok((stream, path))
    }
}

fn send_request(
    stream: &mut UnixStream,
    path: &Path,
    encode: impl FnOnce(&mut [u8]) -> Result<usize, CoreBusError>,
) -> Result<(), CoreBusClientError> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let len = encode(&mut buf).map_err(|error| CoreBusClientError::Protocol {
        path: path.to_owned(),
        error,
    })?;
    stream
        .write_all(&buf[..len])
        .map_err(|source| CoreBusClientError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Returns the value of a successful call response.
pub fn response_value(frame: &FrameBuf) -> Option<Object<'_>> {
    match frame.response() {
        Ok(Response::Value(value)) => Some(value),
        _ => None,
    }
}

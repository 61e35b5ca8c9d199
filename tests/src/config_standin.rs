//! Stand-in for Greengrass Lite's `ggconfigd`: serves the `gg_config`
//! core-bus interface on a Unix socket from an in-memory JSON tree.
//!
//! It speaks the same frames as the C daemon (one connection per request,
//! AWS event-stream frames carrying core-bus objects) and follows its rules:
//! `read` returns a map for a key with children, a map `write` merges
//! recursively, every leaf keeps the timestamp of its last write, and a write
//! older than the stored leaf is ignored but still returns `null`.
//! Values from the initial tree count as written when the server started, so
//! the C provisioner's writes with timestamp 3 never replace them.
//! `subscribe` sends the key path of each changed leaf at or below the
//! subscribed key, as ggconfigd does.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_provisioning_core::corebus::{self, GgError, RequestType};
use fleet_provisioning_core::eventstream::{self, MAX_FRAME_LEN, PRELUDE_LEN};
use fleet_provisioning_core::object::{Map as ObjectMap, Object, ObjectError, Writer};
use serde_json::{Map, Number, Value};

/// Core-bus interface name, which is also the socket's file name.
pub const INTERFACE: &str = "gg_config";

/// Time a client gets to send its request before the server drops it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `gg_config` server; [`ConfigServer::stop`] or drop ends it and
/// removes the socket.
pub struct ConfigServer {
    socket_path: PathBuf,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

/// One request the server received: the method name and the `key_path`
/// parameter (empty when the request had none).
pub type RecordedRequest = (String, Vec<String>);

struct Shared {
    state: Mutex<ConfigState>,
    stopping: AtomicBool,
}

struct ConfigState {
    tree: Value,
    /// Unix time in ms of the last write of each leaf, by key path.
    timestamps: HashMap<Vec<String>, i64>,
    requests: Vec<RecordedRequest>,
    fail_next: Option<(String, i32)>,
    subscribers: Vec<Subscriber>,
    next_subscriber_id: u64,
}

/// An open `subscribe` connection, told about every change at or below
/// `key_path`.
struct Subscriber {
    id: u64,
    key_path: Vec<String>,
    stream: UnixStream,
}

impl ConfigServer {
    /// Starts serving `initial` (a JSON object) on `<socket_dir>/gg_config`
    /// in a background thread. A stale socket file at that path is removed.
    pub fn start(socket_dir: &Path, initial: Value) -> io::Result<ConfigServer> {
        if !initial.is_object() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the initial ggconfigd tree must be a JSON object at the root",
            ));
        }
        std::fs::create_dir_all(socket_dir)?;
        let socket_path = socket_dir.join(INTERFACE);
        remove_stale_socket(&socket_path)?;
        let listener = UnixListener::bind(&socket_path)?;

        let mut timestamps = HashMap::new();
        record_leaf_timestamps(&initial, &mut Vec::new(), now_ms(), &mut timestamps);
        let shared = Arc::new(Shared {
            state: Mutex::new(ConfigState {
                tree: initial,
                timestamps,
                requests: Vec::new(),
                fail_next: None,
                subscribers: Vec::new(),
                next_subscriber_id: 0,
            }),
            stopping: AtomicBool::new(false),
        });

        let thread_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name("ggconfigd-standin".into())
            .spawn(move || accept_loop(listener, thread_shared))?;
        Ok(ConfigServer {
            socket_path,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// Path of the listening socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Copy of the current configuration tree.
    pub fn tree(&self) -> Value {
        lock(&self.shared).tree.clone()
    }

    /// Requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// Makes the next request for `method` fail with `error` instead of
    /// being carried out.
    pub fn set_fail_next(&self, method: &str, error: GgError) {
        lock(&self.shared).fail_next = Some((method.to_owned(), error.code()));
    }

    /// Stops accepting connections, waits for the accept thread and removes
    /// the socket file. Connections already accepted finish on their own.
    pub fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Shutting the subscriber sockets down ends their blocking reads.
        for subscriber in lock(&self.shared).subscribers.drain(..) {
            let _ = subscriber.stream.shutdown(Shutdown::Both);
        }
        // A connection wakes the blocking accept so that it sees the flag.
        let _ = UnixStream::connect(&self.socket_path);
        let _ = accept_thread.join();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, ConfigState> {
    // A panic in another connection thread must not hide the tree from tests.
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn record_leaf_timestamps(
    value: &Value,
    path: &mut Vec<String>,
    timestamp: i64,
    timestamps: &mut HashMap<Vec<String>, i64>,
) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                record_leaf_timestamps(child, path, timestamp, timestamps);
                path.pop();
            }
        }
        _ => {
            timestamps.insert(path.clone(), timestamp);
        }
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for connection in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match connection {
            Ok(stream) => {
                let connection_shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("ggconfigd-standin-conn".into())
                    .spawn(move || serve_connection(stream, &connection_shared));
                if let Err(error) = spawned {
                    eprintln!("ggconfigd stand-in: failed to start a connection thread: {error}");
                }
            }
            Err(error) => eprintln!("ggconfigd stand-in: accept failed: {error}"),
        }
    }
}

/// Why a request frame could not be read from a connection.
#[derive(Debug)]
pub enum ReadFrameError {
    /// The socket failed or closed before a whole frame arrived.
    Io(io::Error),
    /// The prelude is invalid or announces a frame over the size limit.
    Prelude(eventstream::FrameError),
}

impl fmt::Display for ReadFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFrameError::Io(error) => write!(f, "reading the request frame failed: {error}"),
            ReadFrameError::Prelude(error) => write!(
                f,
                "rejected the request frame: {error}; frames are limited to {MAX_FRAME_LEN} bytes"
            ),
        }
    }
}

impl std::error::Error for ReadFrameError {}

/// Reads one whole frame the way the C core bus does: the 12-byte prelude
/// first, then the rest of the frame it announces.
pub fn read_frame(stream: &mut impl Read) -> Result<Vec<u8>, ReadFrameError> {
    let mut frame = vec![0; PRELUDE_LEN];
    stream.read_exact(&mut frame).map_err(ReadFrameError::Io)?;
    // frame_len also rejects frames over MAX_FRAME_LEN.
    let total = eventstream::frame_len(&frame).map_err(ReadFrameError::Prelude)?;
    frame.resize(total, 0);
    stream
        .read_exact(&mut frame[PRELUDE_LEN..])
        .map_err(ReadFrameError::Io)?;
    Ok(frame)
}

fn serve_connection(mut stream: UnixStream, shared: &Shared) {
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let frame = match read_frame(&mut stream) {
        Ok(frame) => frame,
        Err(ReadFrameError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return,
        Err(error) => {
            // The C server closes the connection without a reply here.
            eprintln!("ggconfigd stand-in: dropping connection: {error}");
            return;
        }
    };
    let (kind, result) = handle_frame(&frame, shared);
    let outcome = match result {
        Ok(Outcome::Subscribe(key_path)) => {
            serve_subscriber(stream, shared, key_path);
            return;
        }
        Ok(Outcome::Value(value)) => Ok(value),
        Err(error) => Err(error),
    };
    if kind == Some(RequestType::Notify) {
        return;
    }
    let mut reply = vec![0; MAX_FRAME_LEN];
    let Some(len) = encode_reply(&outcome, &mut reply) else {
        return;
    };
    if let Err(error) = stream.write_all(reply.get(..len).unwrap_or_default()) {
        eprintln!("ggconfigd stand-in: sending the reply failed: {error}");
    }
}

/// What a successful request produced.
enum Outcome {
    /// Reply with this value; `Value::Null` for a request with no result.
    Value(Value),
    /// Keep the connection open as a subscriber to this key path.
    Subscribe(Vec<String>),
}

/// Decodes and carries out one request frame. Returns the request type
/// (`None` when the frame could not be parsed) and the result.
fn handle_frame(frame: &[u8], shared: &Shared) -> (Option<RequestType>, Result<Outcome, GgError>) {
    let parsed = eventstream::decode_frame(frame)
        .map_err(|_| GgError::Parse)
        .and_then(|frame| {
            corebus::parse_request(&frame)
                .map(|request| (request.method, request.kind, request.params))
                .map_err(|_| GgError::Parse)
        });
    let (method, kind, params) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("ggconfigd stand-in: malformed request frame, replying {error:?}");
            return (None, Err(error));
        }
    };

    let key_path = params.get("key_path").map(key_path_strings);
    let result = {
        let mut state = lock(shared);
        let recorded_path = match &key_path {
            Some(Ok(path)) => path.clone(),
            _ => Vec::new(),
        };
        state.requests.push((method.to_owned(), recorded_path));
        match state.fail_next.take() {
            Some((failing_method, code)) if failing_method == method => {
                Err(GgError::from_code(code).unwrap_or(GgError::Failure))
            }
            other => {
                state.fail_next = other;
                let key_path = key_path.unwrap_or(Err(GgError::Invalid));
                execute(&mut state, method, kind, &params, key_path)
            }
        }
    };
    // A missing key is an ordinary result of a read, not worth a line.
    match &result {
        Err(GgError::Noentry) | Ok(_) => {}
        Err(error) => eprintln!("ggconfigd stand-in: {method} failed with {error:?}"),
    }
    (Some(kind), result)
}

fn execute(
    state: &mut ConfigState,
    method: &str,
    kind: RequestType,
    params: &ObjectMap<'_>,
    key_path: Result<Vec<String>, GgError>,
) -> Result<Outcome, GgError> {
    match method {
        "read" => read_key(&state.tree, &key_path?).map(Outcome::Value),
        "list" => list_key(&state.tree, &key_path?).map(Outcome::Value),
        "write" => {
            let mut key_path = key_path?;
            let value = params.get("value").ok_or(GgError::Invalid)?;
            let value = object_to_json(&value)?;
            let timestamp = match params.get("timestamp") {
                None => now_ms(),
                Some(timestamp) => timestamp.as_i64().ok_or(GgError::Invalid)?,
            };
            let mut changed = Vec::new();
            let written = write_value(state, &mut key_path, value, timestamp, &mut changed);
            // Changes made before a failure stay, as in ggconfigd, so their
            // subscribers get events for them either way.
            notify_subscribers(state, &changed);
            written.map(|()| Outcome::Value(Value::Null))
        }
        "delete" => {
            delete_key(state, &key_path?);
            Ok(Outcome::Value(Value::Null))
        }
        "subscribe" if kind == RequestType::Subscribe => {
            let key_path = key_path?;
            lookup(&state.tree, &key_path).ok_or(GgError::Noentry)?;
            Ok(Outcome::Subscribe(key_path))
        }
        _ => Err(GgError::Noentry),
    }
}

/// Sends `accepted`, registers the connection for change events and keeps
/// it until the client closes it or the server stops.
fn serve_subscriber(stream: UnixStream, shared: &Shared, key_path: Vec<String>) {
    let id = {
        let mut state = lock(shared);
        let mut accepted = [0; 64];
        let sent = corebus::encode_accepted_response(&mut accepted)
            .map_err(|error| io::Error::other(format!("{error:?}")))
            .and_then(|len| (&stream).write_all(accepted.get(..len).unwrap_or_default()));
        if let Err(error) = sent {
            eprintln!("ggconfigd stand-in: sending the subscription acceptance failed: {error}");
            return;
        }
        let Ok(registered) = stream.try_clone() else {
            return;
        };
        // Registered under the same lock as the acceptance, so no event can
        // overtake it.
        let id = state.next_subscriber_id;
        state.next_subscriber_id += 1;
        state.subscribers.push(Subscriber {
            id,
            key_path,
            stream: registered,
        });
        id
    };

    // The client sends nothing more: EOF, an error or any byte ends it.
    let _ = stream.set_read_timeout(None);
    let mut byte = [0; 1];
    let _ = (&stream).read(&mut byte);
    lock(shared)
        .subscribers
        .retain(|subscriber| subscriber.id != id);
}

/// Sends each changed key path to the subscribers of that key or of one of
/// its ancestors, and drops subscribers whose socket fails.
fn notify_subscribers(state: &mut ConfigState, changed: &[Vec<String>]) {
    let mut event = vec![0; MAX_FRAME_LEN];
    for changed_path in changed {
        let encoded = corebus::encode_value_response(&mut event, |writer| {
            let components: Vec<&str> = changed_path.iter().map(String::as_str).collect();
            writer.str_list(&components)
        });
        let Ok(len) = encoded else {
            eprintln!(
                "ggconfigd stand-in: the change event for {changed_path:?} does not fit a frame"
            );
            continue;
        };
        let frame = event.get(..len).unwrap_or_default();
        state.subscribers.retain(|subscriber| {
            if !changed_path.starts_with(&subscriber.key_path) {
                return true;
            }
            let _ = subscriber.stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            match (&subscriber.stream).write_all(frame) {
                Ok(()) => true,
                Err(error) => {
                    eprintln!(
                        "ggconfigd stand-in: dropping subscriber {} of {:?}: {error}",
                        subscriber.id, subscriber.key_path
                    );
                    false
                }
            }
        });
    }
}

fn encode_reply(outcome: &Result<Value, GgError>, out: &mut [u8]) -> Option<usize> {
    let encoded = match outcome {
        Err(error) => corebus::encode_error_response(error.code(), out),
        Ok(value) => {
            match corebus::encode_value_response(out, |writer| write_json(writer, value)) {
                Ok(len) => Ok(len),
                Err(error) => {
                    eprintln!("ggconfigd stand-in: the reply does not fit a frame: {error:?}");
                    corebus::encode_error_response(GgError::Nomem.code(), out)
                }
            }
        }
    };
    match encoded {
        Ok(len) => Some(len),
        Err(error) => {
            eprintln!("ggconfigd stand-in: encoding the reply failed: {error:?}");
            None
        }
    }
}

fn key_path_strings(key_path: Object<'_>) -> Result<Vec<String>, GgError> {
    let list = key_path.as_list().ok_or(GgError::Invalid)?;
    list.iter()
        .map(|component| {
            component
                .as_str()
                .map(str::to_owned)
                .ok_or(GgError::Invalid)
        })
        .collect()
}

/// Converts a core-bus object into JSON. Buffers must be UTF-8 and floats
/// finite, because the C daemon stores the tree as JSON text.
pub fn object_to_json(object: &Object<'_>) -> Result<Value, GgError> {
    Ok(match object {
        Object::Null => Value::Null,
        Object::Bool(value) => Value::Bool(*value),
        Object::I64(value) => Value::Number(Number::from(*value)),
        Object::F64(value) => Value::Number(Number::from_f64(*value).ok_or(GgError::Invalid)?),
        Object::Buf(bytes) => Value::String(
            std::str::from_utf8(bytes)
                .map_err(|_| GgError::Invalid)?
                .to_owned(),
        ),
        Object::List(list) => Value::Array(
            list.iter()
                .map(|item| object_to_json(&item))
                .collect::<Result<_, _>>()?,
        ),
        Object::Map(map) => {
            let mut json = Map::new();
            for (key, item) in map.iter() {
                let key = std::str::from_utf8(key).map_err(|_| GgError::Invalid)?;
                json.insert(key.to_owned(), object_to_json(&item)?);
            }
            Value::Object(json)
        }
    })
}

/// Writes a JSON value as a core-bus object. Integers stay i64 and numbers
/// written with a fraction or exponent stay f64, as in the C daemon.
pub fn write_json(writer: &mut Writer<'_>, value: &Value) -> Result<(), ObjectError> {
    match value {
        Value::Null => writer.null(),
        Value::Bool(value) => writer.bool(*value),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => writer.i64(integer),
            // Integers above i64::MAX can only come from the initial file.
            None => writer.f64(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => writer.str(text),
        Value::Array(items) => {
            writer.list(
                u32::try_from(items.len())
                    .map_err(|_| ObjectError::TooLong { len: items.len() })?,
            )?;
            items.iter().try_for_each(|item| write_json(writer, item))
        }
        Value::Object(map) => {
            writer.map(
                u32::try_from(map.len()).map_err(|_| ObjectError::TooLong { len: map.len() })?,
            )?;
            map.iter().try_for_each(|(key, item)| {
                writer.key(key.as_bytes())?;
                write_json(writer, item)
            })
        }
    }
}

fn lookup<'t>(tree: &'t Value, key_path: &[String]) -> Option<&'t Value> {
    key_path
        .iter()
        .try_fold(tree, |node, key| node.as_object()?.get(key))
}

fn read_key(tree: &Value, key_path: &[String]) -> Result<Value, GgError> {
    lookup(tree, key_path).cloned().ok_or(GgError::Noentry)
}

fn list_key(tree: &Value, key_path: &[String]) -> Result<Value, GgError> {
    let node = lookup(tree, key_path).ok_or(GgError::Noentry)?;
    // ggconfigd rejects listing a leaf with INVALID.
    let map = node.as_object().ok_or(GgError::Invalid)?;
    Ok(Value::Array(
        map.keys().map(|key| Value::String(key.clone())).collect(),
    ))
}

/// Writes `value` at `path` with ggconfigd's rules, adding the key path of
/// every leaf whose value changed to `changed`. A non-empty map merges key
/// by key. A leaf cannot replace a map, an empty map cannot replace a leaf,
/// and a leaf cannot get children (all FAILURE). A leaf older than the
/// stored one is left as it is without an error.
fn write_value(
    state: &mut ConfigState,
    path: &mut Vec<String>,
    value: Value,
    timestamp: i64,
    changed: &mut Vec<Vec<String>>,
) -> Result<(), GgError> {
    let value = match value {
        Value::Object(entries) if !entries.is_empty() => {
            for (key, item) in entries {
                path.push(key);
                let written = write_value(state, path, item, timestamp, changed);
                path.pop();
                written?;
            }
            return Ok(());
        }
        other => other,
    };
    let Some((last, parents)) = path.split_last() else {
        // Only a map can be written at the root.
        return if value.is_object() {
            Ok(())
        } else {
            Err(GgError::Invalid)
        };
    };

    let parent = parent_map_mut(&mut state.tree, parents)?;
    match (parent.get(last), &value) {
        (None, _) => {}
        (Some(Value::Object(_)), Value::Object(_)) => return Ok(()),
        (Some(Value::Object(_)), _) | (Some(_), Value::Object(_)) => {
            eprintln!("ggconfigd stand-in: cannot replace {path:?} with a different kind of value");
            return Err(GgError::Failure);
        }
        (Some(stored), _) => {
            let stored_timestamp = state.timestamps.get(path.as_slice()).copied();
            if stored_timestamp.is_some_and(|stored_at| stored_at > timestamp) {
                return Ok(());
            }
            if *stored == value {
                state.timestamps.insert(path.clone(), timestamp);
                return Ok(());
            }
        }
    }

    let is_leaf = !value.is_object();
    parent.insert(last.clone(), value);
    if is_leaf {
        state.timestamps.insert(path.clone(), timestamp);
        changed.push(path.clone());
    }
    Ok(())
}

/// Returns the map that contains the key after `parents`, creating missing
/// maps on the way. A leaf on the way is an error, as in ggconfigd.
fn parent_map_mut<'t>(
    tree: &'t mut Value,
    parents: &[String],
) -> Result<&'t mut Map<String, Value>, GgError> {
    let mut node = tree.as_object_mut().ok_or(GgError::Failure)?;
    for key in parents {
        let child = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        node = child.as_object_mut().ok_or_else(|| {
            eprintln!("ggconfigd stand-in: key {key:?} is a value, so it cannot have children");
            GgError::Failure
        })?;
    }
    Ok(node)
}

fn remove_timestamps_under(timestamps: &mut HashMap<Vec<String>, i64>, path: &[String]) {
    timestamps.retain(|stored, _| !stored.starts_with(path));
}

fn delete_key(state: &mut ConfigState, key_path: &[String]) {
    let Some((last, parents)) = key_path.split_last() else {
        state.tree = Value::Object(Map::new());
        state.timestamps.clear();
        return;
    };
    let mut node = &mut state.tree;
    for key in parents {
        let Some(child) = node.as_object_mut().and_then(|map| map.get_mut(key)) else {
            return;
        };
        node = child;
    }
    if let Some(map) = node.as_object_mut() {
        // shift_remove keeps the insertion order of the remaining keys.
        map.shift_remove(last);
    }
    remove_timestamps_under(&mut state.timestamps, key_path);
}

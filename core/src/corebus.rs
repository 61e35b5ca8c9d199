//! Greengrass Lite core-bus requests and responses, built on event-stream
//! frames ([`crate::eventstream`]) carrying serialized objects
//! ([`crate::object`]).
//!
//! A request frame has exactly the headers `method` (string) and `type`
//! (int32), and its payload is a map of parameters. A response is either an
//! error (header `error`, no payload), a subscription acceptance (header
//! `accepted` = 1, no payload) or a value (no headers, payload is the result
//! or subscription event object).

use core::fmt;

use crate::eventstream::{self, FrameError, Header, HeaderValue};
use crate::object::{self, Map, Object, ObjectError, Writer};

/// Maximum length of a core-bus interface name (the socket file name under
/// `/run/greengrass/`), in bytes: `GGL_INTERFACE_NAME_MAX_LEN` of Greengrass
/// Lite, whose clients and servers reject longer names.
pub const MAX_INTERFACE_NAME_LEN: usize = 50;

const HEADER_METHOD: &str = "method";
const HEADER_TYPE: &str = "type";
const HEADER_ERROR: &str = "error";
const HEADER_ACCEPTED: &str = "accepted";

/// Kind of a core-bus request, sent as the `type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// One-way request: the server sends no response.
    Notify = 0,
    /// Request with exactly one response frame.
    Call = 1,
    /// Subscription: an acceptance frame, then one frame per event.
    Subscribe = 2,
}

impl RequestType {
    /// Returns the request type for a `type` header value.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(RequestType::Notify),
            1 => Some(RequestType::Call),
            2 => Some(RequestType::Subscribe),
            _ => None,
        }
    }

    /// Returns the `type` header value.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Greengrass Lite error codes (`GglError`), sent in the `error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgError {
    /// Success.
    Ok = 0,
    /// Generic failure.
    Failure = 1,
    /// Failure, may succeed if retried.
    Retry = 2,
    /// Request cannot be handled at the time.
    Busy = 3,
    /// System is in an irrecoverably broken state.
    Fatal = 4,
    /// Request is invalid or malformed.
    Invalid = 5,
    /// Request is unsupported.
    Unsupported = 6,
    /// Request data invalid.
    Parse = 7,
    /// Request or data outside of allowable range.
    Range = 8,
    /// Insufficient memory.
    Nomem = 9,
    /// No connection.
    Noconn = 10,
    /// No more data available.
    Nodata = 11,
    /// Unknown entry or target requested.
    Noentry = 12,
    /// Invalid or missing configuration.
    Config = 13,
    /// Received remote error.
    Remote = 14,
    /// Expected non-ok status.
    Expected = 15,
    /// Request timed out.
    Timeout = 16,
    /// Permission denied.
    Unauthorized = 17,
    /// Conflict with the current state.
    Conflict = 18,
}

impl GgError {
    const ALL: [GgError; 19] = [
        GgError::Ok,
        GgError::Failure,
        GgError::Retry,
        GgError::Busy,
        GgError::Fatal,
        GgError::Invalid,
        GgError::Unsupported,
        GgError::Parse,
        GgError::Range,
        GgError::Nomem,
        GgError::Noconn,
        GgError::Nodata,
        GgError::Noentry,
        GgError::Config,
        GgError::Remote,
        GgError::Expected,
        GgError::Timeout,
        GgError::Unauthorized,
        GgError::Conflict,
    ];

    /// Returns the error for a wire code, or `None` for an unknown code.
    pub fn from_code(code: i32) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|index| Self::ALL.get(index).copied())
    }

    /// Returns the wire code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Returns the upper-case name Greengrass Lite uses, such as "NOENTRY".
    pub fn name(self) -> &'static str {
        match self {
            GgError::Ok => "OK",
            GgError::Failure => "FAILURE",
            GgError::Retry => "RETRY",
            GgError::Busy => "BUSY",
            GgError::Fatal => "FATAL",
            GgError::Invalid => "INVALID",
            GgError::Unsupported => "UNSUPPORTED",
            GgError::Parse => "PARSE",
            GgError::Range => "RANGE",
            GgError::Nomem => "NOMEM",
            GgError::Noconn => "NOCONN",
            GgError::Nodata => "NODATA",
            GgError::Noentry => "NOENTRY",
            GgError::Config => "CONFIG",
            GgError::Remote => "REMOTE",
            GgError::Expected => "EXPECTED",
            GgError::Timeout => "TIMEOUT",
            GgError::Unauthorized => "UNAUTHORIZED",
            GgError::Conflict => "CONFLICT",
        }
    }
}

impl fmt::Display for GgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Error from building or parsing a core-bus message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreBusError {
    /// The event-stream frame is invalid or does not fit.
    Frame(FrameError),
    /// The payload object is invalid or does not fit.
    Object(ObjectError),
    /// A required header is absent.
    MissingHeader(&'static str),
    /// A header has the wrong value type or an invalid value.
    BadHeader {
        /// Header name.
        name: &'static str,
        /// Description of the valid value.
        expected: &'static str,
    },
    /// The payload is not a map where a map of parameters is required.
    NotAMap,
    /// A required parameter is absent from the map.
    MissingParam(&'static str),
    /// A parameter has the wrong type.
    WrongParamType {
        /// Parameter name.
        name: &'static str,
        /// Required type.
        expected: &'static str,
        /// Type found.
        found: &'static str,
    },
    /// The `type` header contains a value other than 0, 1 or 2.
    UnknownRequestType(i32),
    /// An MQTT QoS other than 0, 1 or 2.
    InvalidQos(u8),
}

impl From<FrameError> for CoreBusError {
    fn from(error: FrameError) -> Self {
        CoreBusError::Frame(error)
    }
}

impl From<ObjectError> for CoreBusError {
    fn from(error: ObjectError) -> Self {
        CoreBusError::Object(error)
    }
}

impl fmt::Display for CoreBusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CoreBusError::Frame(error) => write!(f, "core-bus frame error: {error}"),
            CoreBusError::Object(error) => write!(f, "core-bus payload error: {error}"),
            CoreBusError::MissingHeader(name) => write!(
                f,
                "core-bus message is missing the `{name}` header; the peer does not speak the core-bus protocol"
            ),
            CoreBusError::BadHeader { name, expected } => write!(
                f,
                "core-bus header `{name}` is invalid: expected {expected}; the peer does not speak the core-bus protocol"
            ),
            CoreBusError::NotAMap => write!(
                f,
                "core-bus payload is not a map; request parameters and this response must be a map"
            ),
            CoreBusError::MissingParam(name) => {
                write!(f, "core-bus map is missing the `{name}` entry")
            }
            CoreBusError::WrongParamType {
                name,
                expected,
                found,
            } => write!(
                f,
                "core-bus entry `{name}` is a {found} but must be a {expected}"
            ),
            CoreBusError::UnknownRequestType(code) => write!(
                f,
                "core-bus request type {code} is unknown (valid: 0 notify, 1 call, 2 subscribe)"
            ),
            CoreBusError::InvalidQos(qos) => {
                write!(f, "MQTT QoS {qos} is invalid; use 0, 1 or 2")
            }
        }
    }
}

/// Encodes a request frame into `out` and returns its length.
///
/// The headers are exactly `method` (string) and then `type` (int32). The
/// `params` closure writes the whole payload object, starting with the map
/// header. The payload is checked to be exactly one valid map.
pub fn encode_request(
    method: &str,
    kind: RequestType,
    out: &mut [u8],
    params: impl FnOnce(&mut Writer<'_>) -> Result<(), ObjectError>,
) -> Result<usize, CoreBusError> {
    let headers = [
        Header {
            name: HEADER_METHOD,
            value: HeaderValue::String(method),
        },
        Header {
            name: HEADER_TYPE,
            value: HeaderValue::Int32(kind.code()),
        },
    ];
    eventstream::encode_frame_with(&headers, out, |area: &mut [u8]| {
        let mut writer = Writer::new(area);
        params(&mut writer)?;
        // A closure that writes a wrong count or a non-map would produce a
        // frame the server rejects, so it is caught here instead.
        match object::decode(writer.written())? {
            Object::Map(_) => Ok(writer.len()),
            _ => Err(CoreBusError::NotAMap),
        }
    })
}

/// A decoded core-bus response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Response<'a> {
    /// Error response with its raw code, which [`GgError::from_code`] names.
    Error(i32),
    /// Subscription accepted.
    Accepted,
    /// Call result or subscription event. An empty payload is [`Object::Null`].
    Value(Object<'a>),
}

/// Parses a response frame.
pub fn parse_response<'a>(frame: &eventstream::Frame<'a>) -> Result<Response<'a>, CoreBusError> {
    if let Some(value) = frame.header(HEADER_ERROR) {
        return match value {
            HeaderValue::Int32(code) => Ok(Response::Error(code)),
            _ => Err(CoreBusError::BadHeader {
                name: HEADER_ERROR,
                expected: "an int32 error code",
            }),
        };
    }
    if let Some(value) = frame.header(HEADER_ACCEPTED) {
        return match value {
            HeaderValue::Int32(1) => Ok(Response::Accepted),
            _ => Err(CoreBusError::BadHeader {
                name: HEADER_ACCEPTED,
                expected: "int32 1",
            }),
        };
    }
    if frame.payload.is_empty() {
        return Ok(Response::Value(Object::Null));
    }
    Ok(Response::Value(object::decode(frame.payload)?))
}

/// A decoded core-bus request, as a server receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request<'a> {
    /// Method name from the `method` header.
    pub method: &'a str,
    /// Request type from the `type` header.
    pub kind: RequestType,
    /// Parameter map from the payload.
    pub params: Map<'a>,
}

/// Parses a request frame. Headers other than `method` and `type`, such as
/// the trace headers `T`, `S` and `P`, are ignored.
pub fn parse_request<'a>(frame: &eventstream::Frame<'a>) -> Result<Request<'a>, CoreBusError> {
    let method = match frame.header(HEADER_METHOD) {
        Some(HeaderValue::String(method)) => method,
        Some(_) => {
            return Err(CoreBusError::BadHeader {
                name: HEADER_METHOD,
                expected: "a string",
            })
        }
        None => return Err(CoreBusError::MissingHeader(HEADER_METHOD)),
    };
    let kind = match frame.header(HEADER_TYPE) {
        Some(HeaderValue::Int32(code)) => {
            RequestType::from_code(code).ok_or(CoreBusError::UnknownRequestType(code))?
        }
        Some(_) => {
            return Err(CoreBusError::BadHeader {
                name: HEADER_TYPE,
                expected: "an int32",
            })
        }
        None => return Err(CoreBusError::MissingHeader(HEADER_TYPE)),
    };
    if frame.payload.is_empty() {
        return Err(CoreBusError::NotAMap);
    }
    let params = object::decode(frame.payload)?
        .as_map()
        .ok_or(CoreBusError::NotAMap)?;
    Ok(Request {
        method,
        kind,
        params,
    })
}

/// Encodes an error response: header `error` (int32) and no payload, 27 bytes.
pub fn encode_error_response(code: i32, out: &mut [u8]) -> Result<usize, CoreBusError> {
    let headers = [Header {
        name: HEADER_ERROR,
        value: HeaderValue::Int32(code),
    }];
    Ok(eventstream::encode_frame(&headers, &[], out)?)
}

/// Encodes a subscription acceptance: header `accepted` (int32 1) and no
/// payload, 30 bytes.
pub fn encode_accepted_response(out: &mut [u8]) -> Result<usize, CoreBusError> {
    let headers = [Header {
        name: HEADER_ACCEPTED,
        value: HeaderValue::Int32(1),
    }];
    Ok(eventstream::encode_frame(&headers, &[], out)?)
}

/// Encodes a value response (call result or subscription event): no
/// headers, payload written by `value`, which must write exactly one object.
pub fn encode_value_response(
    out: &mut [u8],
    value: impl FnOnce(&mut Writer<'_>) -> Result<(), ObjectError>,
) -> Result<usize, CoreBusError> {
    eventstream::encode_frame_with(&[], out, |area: &mut [u8]| {
        let mut writer = Writer::new(area);
        value(&mut writer)?;
        object::decode(writer.written())?;
        Ok(writer.len())
    })
}

fn list_len(items: &[&str]) -> Result<u32, CoreBusError> {
    u32::try_from(items.len())
        .map_err(|_| CoreBusError::Object(ObjectError::TooLong { len: items.len() }))
}

/// Encodes a `gg_config` request whose only parameter is `key_path`.
fn encode_key_path_request(
    method: &str,
    key_path: &[&str],
    out: &mut [u8],
) -> Result<usize, CoreBusError> {
    list_len(key_path)?;
    encode_request(method, RequestType::Call, out, |writer| {
        writer.map(1)?;
        writer.key(b"key_path")?;
        writer.str_list(key_path)
    })
}

/// Encodes a `gg_config` `read` call: `{key_path: [buffer...]}`.
pub fn encode_config_read(key_path: &[&str], out: &mut [u8]) -> Result<usize, CoreBusError> {
    encode_key_path_request("read", key_path, out)
}

/// Encodes a `gg_config` `list` call: `{key_path: [buffer...]}`.
pub fn encode_config_list(key_path: &[&str], out: &mut [u8]) -> Result<usize, CoreBusError> {
    encode_key_path_request("list", key_path, out)
}

/// Encodes a `gg_config` `delete` call: `{key_path: [buffer...]}`.
pub fn encode_config_delete(key_path: &[&str], out: &mut [u8]) -> Result<usize, CoreBusError> {
    encode_key_path_request("delete", key_path, out)
}

/// Encodes a `gg_config` `write` call: `{key_path, value, timestamp}`, with
/// `timestamp` (Unix ms) left out when `None`. The `value` closure writes
/// exactly one object.
pub fn encode_config_write(
    key_path: &[&str],
    timestamp: Option<i64>,
    out: &mut [u8],
    value: impl FnOnce(&mut Writer<'_>) -> Result<(), ObjectError>,
) -> Result<usize, CoreBusError> {
    list_len(key_path)?;
    encode_request("write", RequestType::Call, out, |writer| {
        writer.map(if timestamp.is_some() { 3 } else { 2 })?;
        writer.key(b"key_path")?;
        writer.str_list(key_path)?;
        writer.key(b"value")?;
        value(writer)?;
        if let Some(timestamp) = timestamp {
            writer.key(b"timestamp")?;
            writer.i64(timestamp)?;
        }
        Ok(())
    })
}

/// Encodes a `gg_config` `write` call of a string value.
pub fn encode_config_write_str(
    key_path: &[&str],
    value: &str,
    timestamp: Option<i64>,
    out: &mut [u8],
) -> Result<usize, CoreBusError> {
    encode_config_write(key_path, timestamp, out, |writer| writer.str(value))
}

fn check_qos(qos: u8) -> Result<(), CoreBusError> {
    if qos > 2 {
        return Err(CoreBusError::InvalidQos(qos));
    }
    Ok(())
}

/// Encodes an `aws_iot_mqtt` `publish` call: `{topic, payload, qos}` with
/// `qos` as an i64.
pub fn encode_mqtt_publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    out: &mut [u8],
) -> Result<usize, CoreBusError> {
    check_qos(qos)?;
    encode_request("publish", RequestType::Call, out, |writer| {
        writer.map(3)?;
        writer.key(b"topic")?;
        writer.str(topic)?;
        writer.key(b"payload")?;
        writer.buf(payload)?;
        writer.key(b"qos")?;
        writer.i64(i64::from(qos))
    })
}

/// Encodes an `aws_iot_mqtt` `subscribe` request:
/// `{topic_filter: [buffer...], qos, virtual}`.
///
/// With `virtual_subscription` set, iotcored sends no MQTT SUBSCRIBE but
/// still delivers matching incoming messages.
pub fn encode_mqtt_subscribe(
    topic_filters: &[&str],
    qos: u8,
    virtual_subscription: bool,
    out: &mut [u8],
) -> Result<usize, CoreBusError> {
    check_qos(qos)?;
    list_len(topic_filters)?;
    encode_request("subscribe", RequestType::Subscribe, out, |writer| {
        writer.map(3)?;
        writer.key(b"topic_filter")?;
        writer.str_list(topic_filters)?;
        writer.key(b"qos")?;
        writer.i64(i64::from(qos))?;
        writer.key(b"virtual")?;
        writer.bool(virtual_subscription)
    })
}

/// Encodes an `aws_iot_mqtt` `connection_status` subscription with an empty
/// parameter map. Each event is a boolean, true while MQTT is connected.
pub fn encode_connection_status(out: &mut [u8]) -> Result<usize, CoreBusError> {
    encode_request("connection_status", RequestType::Subscribe, out, |writer| {
        writer.map(0)
    })
}

/// An MQTT message delivered by an `aws_iot_mqtt` subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttMessage<'a> {
    /// Topic the message was published to.
    pub topic: &'a str,
    /// Message payload.
    pub payload: &'a [u8],
}

fn required_param<'a>(map: &Map<'a>, name: &'static str) -> Result<Object<'a>, CoreBusError> {
    map.get(name).ok_or(CoreBusError::MissingParam(name))
}

/// Parses a subscription event `{topic, payload}`. The topic must be UTF-8.
pub fn parse_mqtt_event<'a>(value: &Object<'a>) -> Result<MqttMessage<'a>, CoreBusError> {
    let map = value.as_map().ok_or(CoreBusError::NotAMap)?;
    let topic_object = required_param(&map, "topic")?;
    let topic = topic_object.as_str().ok_or(CoreBusError::WrongParamType {
        name: "topic",
        expected: "UTF-8 buffer",
        found: topic_object.type_name(),
    })?;
    let payload_object = required_param(&map, "payload")?;
    let payload = payload_object
        .as_buf()
        .ok_or(CoreBusError::WrongParamType {
            name: "payload",
            expected: "buffer",
            found: payload_object.type_name(),
        })?;
    Ok(MqttMessage { topic, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gg_error_codes_and_names() {
        for (index, error) in GgError::ALL.iter().enumerate() {
            assert_eq!(error.code(), index as i32);
            assert_eq!(GgError::from_code(index as i32), Some(*error));
        }
        assert_eq!(GgError::from_code(12), Some(GgError::Noentry));
        assert_eq!(GgError::Noentry.name(), "NOENTRY");
        assert_eq!(GgError::Conflict.code(), 18);
        assert_eq!(GgError::from_code(19), None);
        assert_eq!(GgError::from_code(-1), None);
    }

    #[test]
    fn request_round_trip() {
        let mut out = [0u8; 256];
        let len = encode_config_read(&["system", "thingName"], &mut out).unwrap();
        let frame = eventstream::decode_frame(&out[..len]).unwrap();
        let request = parse_request(&frame).unwrap();
        assert_eq!(request.method, "read");
        assert_eq!(request.kind, RequestType::Call);
        let key_path = request.params.get("key_path").unwrap().as_list().unwrap();
        assert_eq!(key_path.get(1).unwrap().as_str(), Some("thingName"));
    }

    #[test]
    fn encode_request_rejects_bad_params() {
        let mut out = [0u8; 256];
        assert_eq!(
            encode_request("x", RequestType::Call, &mut out, |writer| writer.null()),
            Err(CoreBusError::NotAMap)
        );
        assert_eq!(
            encode_request("x", RequestType::Call, &mut out, |writer| writer.map(1)),
            Err(CoreBusError::Object(ObjectError::LengthOverrun))
        );
    }

    #[test]
    fn encode_rejects_small_buffer() {
        let mut out = [0u8; 40];
        assert!(matches!(
            encode_config_read(&["system", "thingName"], &mut out),
            Err(CoreBusError::Object(ObjectError::BufferTooSmall { .. }))
        ));
        let mut tiny = [0u8; 20];
        assert_eq!(
            encode_error_response(12, &mut tiny),
            Err(CoreBusError::Frame(FrameError::BufferTooSmall {
                needed: 27
            }))
        );
    }

    #[test]
    fn encode_rejects_invalid_qos() {
        let mut out = [0u8; 256];
        assert_eq!(
            encode_mqtt_publish("t", b"p", 3, &mut out),
            Err(CoreBusError::InvalidQos(3))
        );
    }

    #[test]
    fn parse_request_rejects_bad_headers() {
        let mut out = [0u8; 128];
        let headers = [Header {
            name: HEADER_TYPE,
            value: HeaderValue::Int32(1),
        }];
        let len = eventstream::encode_frame(&headers, &[6, 0, 0, 0, 0], &mut out).unwrap();
        let frame = eventstream::decode_frame(&out[..len]).unwrap();
        assert_eq!(
            parse_request(&frame),
            Err(CoreBusError::MissingHeader("method"))
        );

        let headers = [
            Header {
                name: HEADER_METHOD,
                value: HeaderValue::String("read"),
            },
            Header {
                name: HEADER_TYPE,
                value: HeaderValue::Int32(7),
            },
        ];
        let len = eventstream::encode_frame(&headers, &[6, 0, 0, 0, 0], &mut out).unwrap();
        let frame = eventstream::decode_frame(&out[..len]).unwrap();
        assert_eq!(
            parse_request(&frame),
            Err(CoreBusError::UnknownRequestType(7))
        );
    }

    #[test]
    fn parse_mqtt_event_rejects_bad_shapes() {
        assert_eq!(parse_mqtt_event(&Object::Null), Err(CoreBusError::NotAMap));
        let empty_map = object::decode(&[6, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            parse_mqtt_event(&empty_map),
            Err(CoreBusError::MissingParam("topic"))
        );
    }
}

//! AWS IoT fleet provisioning over MQTT: topics, request encoders and reply
//! parsers for the JSON flavour of `CreateCertificateFromCsr` and
//! `RegisterThing`.
//!
//! The JSON reader and writer here are small and hand-written instead of
//! going through `serde-json-core` 0.7, because that crate
//! - rejects `\uD83D\uDE00` surrogate-pair escapes (valid JSON for characters
//!   outside the Basic Multilingual Plane),
//! - skips unknown scalar values by scanning to the next `,` `}` or `]`, so it
//!   accepts malformed JSON there,
//! - reports an over-long string as a generic error that does not name the
//!   field,
//! - cannot return the source text of a number, which template parameters
//!   need (`42` becomes the string `"42"`).
//! - writes a newline as `\n`, while the Greengrass Lite C tool writes
//!   `\u000A`, and requests here match the C tool byte for byte.
//!
//! Every parser here accepts arbitrary bytes and returns an error instead of
//! panicking. Nesting of skipped values is limited to [`MAX_NESTING_DEPTH`] so
//! recursion depth is bounded.

use core::fmt;

use heapless::{String, Vec};

/// Maximum CSR PEM length. The EC P-256 CSR with the default common name is
/// 379 bytes of PEM in a recorded run of the Greengrass Lite C tool.
pub const MAX_CSR_PEM_LEN: usize = 1024;
/// Maximum certificate PEM length. A device certificate signed by an
/// RSA-4096 CA is about 2 KiB in PEM form (an estimate), so twice that fits.
pub const MAX_CERTIFICATE_PEM_LEN: usize = 4096;
/// Maximum certificate id length. AWS IoT certificate ids are 64 hex digits.
pub const MAX_CERTIFICATE_ID_LEN: usize = 64;
/// Maximum certificate ownership token length.
// NOTE: AWS does not document a maximum, so this is an estimate with headroom.
// A recorded test-bed run used a 128-character token.
pub const MAX_OWNERSHIP_TOKEN_LEN: usize = 2048;
/// Maximum thing name length, the AWS IoT limit for thing names.
pub const MAX_THING_NAME_LEN: usize = 128;
/// Maximum provisioning template name length, the AWS IoT limit.
pub const MAX_TEMPLATE_NAME_LEN: usize = 36;
/// Maximum stored `errorCode` length. AWS error codes are short identifiers
/// such as `InvalidCSR` or `Throttling`.
pub const MAX_ERROR_CODE_LEN: usize = 64;
/// Maximum stored `errorMessage` length. Longer messages are truncated.
pub const MAX_ERROR_MESSAGE_LEN: usize = 512;
/// Maximum topic length. The longest topic used is
/// `$aws/provisioning-templates/<36 chars>/provision/json/accepted`, 99 bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Maximum number of template parameters. Each one takes a fixed slot of
/// [`MAX_PARAMETER_KEY_LEN`] + [`MAX_PARAMETER_VALUE_LEN`] bytes in
/// [`TemplateParameters`], so this count sets most of the state machine's
/// size.
// NOTE: a budget, not an AWS limit. Fleet provisioning templates typically
// take one to a few parameters such as `SerialNumber`.
pub const MAX_PARAMETERS: usize = 32;
/// Maximum template parameter key length in bytes. Parameter names are
/// identifiers chosen by the template author, so this budget stays far
/// below the 2,048 characters the RegisterThing control-plane API accepts.
pub const MAX_PARAMETER_KEY_LEN: usize = 128;
/// Maximum template parameter value length in bytes, a budget below the
/// 4,096 characters the RegisterThing control-plane API accepts. Values are
/// device facts such as serial numbers and MAC addresses.
pub const MAX_PARAMETER_VALUE_LEN: usize = 512;
/// Maximum length of the encoded `parameters` object, braces included.
///
/// [`TemplateParameters::push`] enforces it so that every request fits in
/// [`MAX_REQUEST_PAYLOAD_LEN`].
// NOTE: an estimate. Greengrass templates typically take one to a few short
// parameters such as `SerialNumber`, far below this budget.
pub const MAX_ENCODED_PARAMETERS_LEN: usize = 8192;
/// Maximum nesting depth of objects and arrays inside a reply, for example in
/// `deviceConfiguration`. Deeper input is rejected as invalid JSON.
pub const MAX_NESTING_DEPTH: usize = 32;

/// Worst-case escaped length of `len` bytes of string content: a control
/// character (1 byte) becomes `\u00XX` (6 bytes).
const fn max_escaped_len(len: usize) -> usize {
    len * 6
}

const REGISTER_THING_PREFIX: &str = "{\"certificateOwnershipToken\":\"";
const REGISTER_THING_MIDDLE: &str = "\",\"parameters\":";
const CREATE_CERTIFICATE_PREFIX: &str = "{\"certificateSigningRequest\":\"";

const MAX_REGISTER_THING_REQUEST_LEN: usize = REGISTER_THING_PREFIX.len()
    + max_escaped_len(MAX_OWNERSHIP_TOKEN_LEN)
    + REGISTER_THING_MIDDLE.len()
    + MAX_ENCODED_PARAMETERS_LEN
    + 1;
const MAX_CREATE_CERTIFICATE_REQUEST_LEN: usize =
    CREATE_CERTIFICATE_PREFIX.len() + max_escaped_len(MAX_CSR_PEM_LEN) + 2;

/// Buffer size that fits any request the encoders accept: the
/// `RegisterThing` request with a maximum-length ownership token in which
/// every character needs escaping, plus [`MAX_ENCODED_PARAMETERS_LEN`], or the
/// `CreateCertificateFromCsr` request with a maximum-length CSR, whichever is
/// larger.
pub const MAX_REQUEST_PAYLOAD_LEN: usize =
    if MAX_REGISTER_THING_REQUEST_LEN > MAX_CREATE_CERTIFICATE_REQUEST_LEN {
        MAX_REGISTER_THING_REQUEST_LEN
    } else {
        MAX_CREATE_CERTIFICATE_REQUEST_LEN
    };

/// Topic of the `CreateCertificateFromCsr` request.
pub const CREATE_CERTIFICATE_TOPIC: &str = "$aws/certificates/create-from-csr/json";
/// Subscription filter for the `CreateCertificateFromCsr` replies.
pub const CREATE_CERTIFICATE_FILTER: &str = "$aws/certificates/create-from-csr/json/+";

const REGISTER_THING_TOPIC_PREFIX: &str = "$aws/provisioning-templates/";
const REGISTER_THING_TOPIC_SUFFIX: &str = "/provision/json";

/// An MQTT topic or topic filter.
pub type Topic = String<MAX_TOPIC_LEN>;

/// Number of key bytes kept in an error for display.
const KEY_EXCERPT_LEN: usize = 32;

/// The start of a template parameter key, kept inside a [`FleetError`] so the
/// error can name the key while staying `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyExcerpt {
    bytes: [u8; KEY_EXCERPT_LEN],
    len: u8,
    truncated: bool,
}

impl KeyExcerpt {
    /// Copies up to 32 bytes of `key`, cut at a char boundary.
    pub fn new(key: &str) -> Self {
        let mut end = key.len().min(KEY_EXCERPT_LEN);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; KEY_EXCERPT_LEN];
        let kept = key.as_bytes().get(..end).unwrap_or_default();
        if let Some(target) = bytes.get_mut(..end) {
            target.copy_from_slice(kept);
        }
        Self {
            bytes,
            len: end as u8,
            truncated: end < key.len(),
        }
    }

    /// Returns the kept start of the key.
    pub fn as_str(&self) -> &str {
        let kept = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        core::str::from_utf8(kept).unwrap_or_default()
    }

    /// Returns whether the key was longer than the kept part.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Debug for KeyExcerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KeyExcerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}", self.as_str().escape_debug())?;
        if self.truncated {
            f.write_str("...")?;
        }
        f.write_str("\"")
    }
}

/// Errors of the fleet provisioning codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetError {
    /// The payload is not valid JSON (or nests deeper than
    /// [`MAX_NESTING_DEPTH`]).
    InvalidJson,
    /// The payload is valid JSON but not an object.
    NotAnObject,
    /// A required field is missing.
    MissingField(&'static str),
    /// A field occurs twice in one object.
    DuplicateField(&'static str),
    /// A field has the wrong JSON type.
    InvalidFieldType {
        /// JSON field name.
        field: &'static str,
        /// Expected JSON type.
        expected: &'static str,
    },
    /// A required string field is empty.
    EmptyField(&'static str),
    /// A string field is longer than its capacity.
    FieldTooLong {
        /// JSON field name.
        field: &'static str,
        /// Capacity in bytes (UTF-8, after unescaping).
        max: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall {
        /// Required buffer size in bytes.
        needed: usize,
    },
    /// The template name is empty, longer than 36 characters, or contains a
    /// character outside `[A-Za-z0-9_-]`.
    InvalidTemplateName,
    /// More template parameters than the capacity.
    TooManyParameters {
        /// Capacity.
        max: usize,
    },
    /// A template parameter key is empty.
    EmptyParameterKey,
    /// A template parameter key is longer than [`MAX_PARAMETER_KEY_LEN`].
    ParameterKeyTooLong {
        /// Start of the key.
        key: KeyExcerpt,
        /// Capacity in bytes.
        max: usize,
    },
    /// A template parameter value is longer than [`MAX_PARAMETER_VALUE_LEN`].
    ParameterValueTooLong {
        /// Key of the parameter.
        key: KeyExcerpt,
        /// Capacity in bytes.
        max: usize,
    },
    /// A template parameter key occurs twice.
    DuplicateParameter {
        /// The repeated key.
        key: KeyExcerpt,
    },
    /// A template parameter value is an object, array or null.
    ParameterNotScalar {
        /// Key of the parameter.
        key: KeyExcerpt,
    },
    /// The encoded `parameters` object would exceed
    /// [`MAX_ENCODED_PARAMETERS_LEN`].
    ParametersTooLarge {
        /// Capacity in bytes.
        max: usize,
    },
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson => write!(
                f,
                "invalid JSON (or nesting deeper than {MAX_NESTING_DEPTH}); \
                 check that the text is a complete JSON object"
            ),
            Self::NotAnObject => f.write_str("JSON value is not an object; expected {...}"),
            Self::MissingField(field) => {
                write!(
                    f,
                    "required field \"{field}\" is missing from the JSON object"
                )
            }
            Self::DuplicateField(field) => {
                write!(f, "field \"{field}\" occurs more than once; send it once")
            }
            Self::InvalidFieldType { field, expected } => {
                write!(
                    f,
                    "field \"{field}\" has the wrong type; expected {expected}"
                )
            }
            Self::EmptyField(field) => write!(f, "field \"{field}\" is empty; expected a value"),
            Self::FieldTooLong { field, max } => {
                write!(
                    f,
                    "field \"{field}\" is longer than the maximum of {max} bytes"
                )
            }
            Self::BufferTooSmall { needed } => {
                write!(f, "output buffer too small; {needed} bytes are needed")
            }
            Self::InvalidTemplateName => write!(
                f,
                "invalid provisioning template name; use 1 to {MAX_TEMPLATE_NAME_LEN} \
                 characters of A-Z, a-z, 0-9, '_' or '-'"
            ),
            Self::TooManyParameters { max } => {
                write!(
                    f,
                    "too many template parameters; at most {max} are supported"
                )
            }
            Self::EmptyParameterKey => {
                f.write_str("template parameter key is empty; give each parameter a name")
            }
            Self::ParameterKeyTooLong { key, max } => write!(
                f,
                "template parameter key {key} is longer than the maximum of {max} bytes"
            ),
            Self::ParameterValueTooLong { key, max } => write!(
                f,
                "value of template parameter {key} is longer than the maximum of {max} bytes"
            ),
            Self::DuplicateParameter { key } => {
                write!(
                    f,
                    "template parameter {key} is given more than once; keep one"
                )
            }
            Self::ParameterNotScalar { key } => write!(
                f,
                "template parameter {key} is an object, array or null; \
                 use a string, number or boolean"
            ),
            Self::ParametersTooLarge { max } => write!(
                f,
                "template parameters exceed {max} bytes when encoded; use fewer or shorter ones"
            ),
        }
    }
}

impl core::error::Error for FleetError {}

// ---------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------

fn validate_template_name(template_name: &str) -> Result<(), FleetError> {
    let valid_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let valid = !template_name.is_empty()
        && template_name.len() <= MAX_TEMPLATE_NAME_LEN
        && template_name.bytes().all(valid_char);
    if valid {
        Ok(())
    } else {
        Err(FleetError::InvalidTemplateName)
    }
}

fn build_topic(parts: &[&str]) -> Result<Topic, FleetError> {
    let mut topic = Topic::new();
    for part in parts {
        // Unreachable for valid template names, because the longest topic is
        // 99 bytes.
        topic
            .push_str(part)
            .map_err(|_| FleetError::BufferTooSmall {
                needed: parts.iter().map(|p| p.len()).sum(),
            })?;
    }
    Ok(topic)
}

/// Builds the `RegisterThing` request topic
/// `$aws/provisioning-templates/<template_name>/provision/json`.
///
/// Returns [`FleetError::InvalidTemplateName`] unless the name has 1 to 36
/// characters of `[A-Za-z0-9_-]`, the AWS template name rule.
pub fn register_thing_topic(template_name: &str) -> Result<Topic, FleetError> {
    validate_template_name(template_name)?;
    build_topic(&[
        REGISTER_THING_TOPIC_PREFIX,
        template_name,
        REGISTER_THING_TOPIC_SUFFIX,
    ])
}

/// Builds the subscription filter for the `RegisterThing` replies,
/// `$aws/provisioning-templates/<template_name>/provision/json/+`.
pub fn register_thing_filter(template_name: &str) -> Result<Topic, FleetError> {
    validate_template_name(template_name)?;
    build_topic(&[
        REGISTER_THING_TOPIC_PREFIX,
        template_name,
        REGISTER_THING_TOPIC_SUFFIX,
        "/+",
    ])
}

/// Outcome of a request, given by the reply topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Reply on `<request topic>/accepted`.
    Accepted,
    /// Reply on `<request topic>/rejected`.
    Rejected,
}

/// Classifies a reply topic against a request topic: `<request>/accepted` or
/// `<request>/rejected`; `None` for anything else.
pub fn reply_kind(request_topic: &str, reply_topic: &str) -> Option<ReplyKind> {
    match reply_topic.strip_prefix(request_topic)? {
        "/accepted" => Some(ReplyKind::Accepted),
        "/rejected" => Some(ReplyKind::Rejected),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// JSON writer
// ---------------------------------------------------------------------------

/// Writes into a byte slice and keeps counting past its end, so a too-small
/// buffer reports the exact size needed.
struct JsonWriter<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> JsonWriter<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Self { out, len: 0 }
    }

    fn raw(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(target) = self.out.get_mut(self.len..end) {
            target.copy_from_slice(bytes);
        }
        self.len = end;
    }

    /// Writes `value` as a JSON string with its quotes.
    fn string(&mut self, value: &str) {
        self.raw(b"\"");
        self.string_content(value);
        self.raw(b"\"");
    }

    /// Writes the escaped content of a JSON string. Control characters
    /// become `\u00XX` with upper-case hex digits, the same bytes as the
    /// Greengrass Lite C tool writes (a newline in a PEM is `\u000A`).
    fn string_content(&mut self, value: &str) {
        let bytes = value.as_bytes();
        let mut run_start = 0;
        for (index, &byte) in bytes.iter().enumerate() {
            let escape: Option<[u8; 6]> = match byte {
                b'"' | b'\\' => Some([b'\\', byte, 0, 0, 0, 0]),
                0x00..=0x1F => Some([
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    hex_digit(byte >> 4),
                    hex_digit(byte & 0x0F),
                ]),
                _ => None,
            };
            if let Some(escape) = escape {
                self.raw(bytes.get(run_start..index).unwrap_or_default());
                let escape_len = if escape[1] == b'u' { 6 } else { 2 };
                self.raw(escape.get(..escape_len).unwrap_or_default());
                run_start = index + 1;
            }
        }
        self.raw(bytes.get(run_start..).unwrap_or_default());
    }

    fn finish(self) -> Result<usize, FleetError> {
        if self.len <= self.out.len() {
            Ok(self.len)
        } else {
            Err(FleetError::BufferTooSmall { needed: self.len })
        }
    }
}

fn hex_digit(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'A' + (nibble - 10),
    }
}

/// Length of `value` once escaped by [`JsonWriter::string_content`].
fn escaped_len(value: &str) -> usize {
    value
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' => 2,
            0x00..=0x1F => 6,
            _ => 1,
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// Encodes the `CreateCertificateFromCsr` request
/// `{"certificateSigningRequest":"<PEM>"}` into `out`, with no spaces, and
/// returns its length.
///
/// Newlines in the PEM are written as `\u000A`.
pub fn encode_create_certificate_request(
    csr_pem: &str,
    out: &mut [u8],
) -> Result<usize, FleetError> {
    const FIELD: &str = "certificateSigningRequest";
    if csr_pem.is_empty() {
        return Err(FleetError::EmptyField(FIELD));
    }
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(FleetError::FieldTooLong {
            field: FIELD,
            max: MAX_CSR_PEM_LEN,
        });
    }
    let mut writer = JsonWriter::new(out);
    writer.raw(CREATE_CERTIFICATE_PREFIX.as_bytes());
    writer.string_content(csr_pem);
    writer.raw(b"\"}");
    writer.finish()
}

/// Encodes the `RegisterThing` request
/// `{"certificateOwnershipToken":"..","parameters":{"k":"v",..}}` into `out`,
/// with no spaces and parameters in insertion order, and returns its length.
///
/// With a token of at most [`MAX_OWNERSHIP_TOKEN_LEN`] bytes the request
/// always fits in [`MAX_REQUEST_PAYLOAD_LEN`] bytes.
pub fn encode_register_thing_request(
    ownership_token: &str,
    parameters: &TemplateParameters,
    out: &mut [u8],
) -> Result<usize, FleetError> {
    const FIELD: &str = "certificateOwnershipToken";
    if ownership_token.is_empty() {
        return Err(FleetError::EmptyField(FIELD));
    }
    if ownership_token.len() > MAX_OWNERSHIP_TOKEN_LEN {
        return Err(FleetError::FieldTooLong {
            field: FIELD,
            max: MAX_OWNERSHIP_TOKEN_LEN,
        });
    }
    let mut writer = JsonWriter::new(out);
    writer.raw(REGISTER_THING_PREFIX.as_bytes());
    writer.string_content(ownership_token);
    writer.raw(REGISTER_THING_MIDDLE.as_bytes());
    writer.raw(b"{");
    for (index, (key, value)) in parameters.iter().enumerate() {
        if index > 0 {
            writer.raw(b",");
        }
        writer.string(key);
        writer.raw(b":");
        writer.string(value);
    }
    writer.raw(b"}}");
    writer.finish()
}

// ---------------------------------------------------------------------------
// Template parameters
// ---------------------------------------------------------------------------

type ParameterKey = String<MAX_PARAMETER_KEY_LEN>;
type ParameterValue = String<MAX_PARAMETER_VALUE_LEN>;

/// Template parameters as AWS wants them: string keys, string values, in
/// insertion order, with unique keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateParameters {
    entries: Vec<(ParameterKey, ParameterValue), MAX_PARAMETERS>,
    /// Length of the encoded `{..}` object, kept to enforce
    /// [`MAX_ENCODED_PARAMETERS_LEN`].
    encoded_len: usize,
}

impl Default for TemplateParameters {
    fn default() -> Self {
        Self::new()
    }
}

impl TemplateParameters {
    /// Creates an empty set of parameters.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            // The braces of the empty object.
            encoded_len: 2,
        }
    }

    /// Appends a parameter.
    ///
    /// Rejects an empty or repeated key, a key or value over its capacity,
    /// more than [`MAX_PARAMETERS`] entries and an encoded size over
    /// [`MAX_ENCODED_PARAMETERS_LEN`]. On error nothing is added.
    pub fn push(&mut self, key: &str, value: &str) -> Result<(), FleetError> {
        if key.is_empty() {
            return Err(FleetError::EmptyParameterKey);
        }
        let stored_key =
            ParameterKey::try_from(key).map_err(|_| FleetError::ParameterKeyTooLong {
                key: KeyExcerpt::new(key),
                max: MAX_PARAMETER_KEY_LEN,
            })?;
        let stored_value =
            ParameterValue::try_from(value).map_err(|_| FleetError::ParameterValueTooLong {
                key: KeyExcerpt::new(key),
                max: MAX_PARAMETER_VALUE_LEN,
            })?;

        if self.get(key).is_some() {
            return Err(FleetError::DuplicateParameter {
                key: KeyExcerpt::new(key),
            });
        }

        let separator_len = usize::from(!self.entries.is_empty());
        // Two quoted strings, a colon and maybe a comma.
        let entry_len = separator_len + escaped_len(key) + escaped_len(value) + 5;
        let encoded_len = self.encoded_len + entry_len;
        if encoded_len > MAX_ENCODED_PARAMETERS_LEN {
            return Err(FleetError::ParametersTooLarge {
                max: MAX_ENCODED_PARAMETERS_LEN,
            });
        }

        self.entries.push((stored_key, stored_value)).map_err(|_| {
            FleetError::TooManyParameters {
                max: MAX_PARAMETERS,
            }
        })?;
        self.encoded_len = encoded_len;
        Ok(())
    }

    /// Returns the value stored for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(stored_key, _)| stored_key.as_str() == key)
            .map(|(_, value)| value.as_str())
    }

    /// Iterates over `(key, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// Returns the number of parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses a JSON object string (the `-p/--template-params` flag or a
/// string-valued `templateParams` config) into template parameters.
///
/// Values may be strings, numbers or booleans. Numbers and booleans are kept
/// as their JSON text, so `42` becomes `"42"` and `true` becomes `"true"`. A
/// nested object, array or null is [`FleetError::ParameterNotScalar`] naming
/// the key.
pub fn parse_template_parameters_json(json: &str) -> Result<TemplateParameters, FleetError> {
    report_syntax_error_first(json.as_bytes(), read_template_parameters_json(json))
}

fn read_template_parameters_json(json: &str) -> Result<TemplateParameters, FleetError> {
    let mut reader = JsonReader::new(json.as_bytes());
    let mut parameters = TemplateParameters::new();
    reader.object::<MAX_PARAMETER_KEY_LEN>(|reader, key| {
        if key.overflowed {
            return Err(FleetError::ParameterKeyTooLong {
                key: KeyExcerpt::new(key.text.as_str()),
                max: MAX_PARAMETER_KEY_LEN,
            });
        }
        let key = key.text.as_str();
        let mut value = ParameterValue::new();
        match reader.peek_value_kind()? {
            ValueKind::String => {
                if reader.string_into(&mut value)? {
                    return Err(FleetError::ParameterValueTooLong {
                        key: KeyExcerpt::new(key),
                        max: MAX_PARAMETER_VALUE_LEN,
                    });
                }
            }
            ValueKind::Number | ValueKind::True | ValueKind::False => {
                let text = reader.scalar_text()?;
                value
                    .push_str(text)
                    .map_err(|_| FleetError::ParameterValueTooLong {
                        key: KeyExcerpt::new(key),
                        max: MAX_PARAMETER_VALUE_LEN,
                    })?;
            }
            ValueKind::Null | ValueKind::Object | ValueKind::Array => {
                return Err(FleetError::ParameterNotScalar {
                    key: KeyExcerpt::new(key),
                });
            }
        }
        parameters.push(key, &value)
    })?;
    reader.end()?;
    Ok(parameters)
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// Accepted reply of `CreateCertificateFromCsr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIssued {
    /// AWS IoT certificate id (`certificateId`).
    pub certificate_id: String<MAX_CERTIFICATE_ID_LEN>,
    /// Device certificate in PEM form, unescaped (`certificatePem`).
    pub certificate_pem: String<MAX_CERTIFICATE_PEM_LEN>,
    /// Token that proves ownership of the certificate in `RegisterThing`
    /// (`certificateOwnershipToken`).
    pub ownership_token: String<MAX_OWNERSHIP_TOKEN_LEN>,
}

/// Accepted reply of `RegisterThing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingRegistered {
    /// Name of the registered thing (`thingName`).
    pub thing_name: String<MAX_THING_NAME_LEN>,
}

/// Rejected reply of either request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP-style status code (`statusCode`), for example 400 or 429.
    pub status_code: u16,
    /// AWS error code (`errorCode`), for example `InvalidCSR`.
    pub error_code: String<MAX_ERROR_CODE_LEN>,
    /// Error message (`errorMessage`), empty when absent and truncated at a
    /// char boundary to [`MAX_ERROR_MESSAGE_LEN`] bytes.
    pub error_message: String<MAX_ERROR_MESSAGE_LEN>,
}

impl Rejection {
    /// Returns whether retrying the same request later may succeed:
    /// status 429 or 5xx, or error code `Throttling`, `ServiceUnavailable` or
    /// `InternalFailure` (also with an `Exception` suffix).
    pub fn is_retryable(&self) -> bool {
        if self.status_code == 429 || (500..=599).contains(&self.status_code) {
            return true;
        }
        let code = self.error_code.as_str();
        let code = code.strip_suffix("Exception").unwrap_or(code);
        matches!(
            code,
            "Throttling" | "ServiceUnavailable" | "InternalFailure"
        )
    }
}

/// Reads a required string field into `slot`, rejecting a second occurrence,
/// the wrong type, an empty value and an over-long value.
fn read_required_string<const N: usize>(
    reader: &mut JsonReader<'_>,
    field: &'static str,
    slot: &mut Option<String<N>>,
) -> Result<(), FleetError> {
    if slot.is_some() {
        return Err(FleetError::DuplicateField(field));
    }
    if reader.peek_value_kind()? != ValueKind::String {
        return Err(FleetError::InvalidFieldType {
            field,
            expected: "a string",
        });
    }
    let mut value = String::new();
    if reader.string_into(&mut value)? {
        return Err(FleetError::FieldTooLong { field, max: N });
    }
    if value.is_empty() {
        return Err(FleetError::EmptyField(field));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the accepted reply of `CreateCertificateFromCsr`:
/// `{"certificateId":..,"certificatePem":..,"certificateOwnershipToken":..}`.
///
/// Unescapes the strings (`\n` in the PEM) and ignores unknown fields. A
/// missing, repeated, non-string, empty or over-long field is an error that
/// names it.
pub fn parse_create_certificate_accepted(payload: &[u8]) -> Result<CertificateIssued, FleetError> {
    report_syntax_error_first(payload, read_create_certificate_accepted(payload))
}

fn read_create_certificate_accepted(payload: &[u8]) -> Result<CertificateIssued, FleetError> {
    const ID: &str = "certificateId";
    const PEM: &str = "certificatePem";
    const TOKEN: &str = "certificateOwnershipToken";
    let mut certificate_id = None;
    let mut certificate_pem = None;
    let mut ownership_token = None;
    let mut reader = JsonReader::new(payload);
    reader.object::<FIELD_NAME_LEN>(|reader, key| match key.as_field() {
        Some(ID) => read_required_string(reader, ID, &mut certificate_id),
        Some(PEM) => read_required_string(reader, PEM, &mut certificate_pem),
        Some(TOKEN) => read_required_string(reader, TOKEN, &mut ownership_token),
        _ => reader.skip_value(),
    })?;
    reader.end()?;
    Ok(CertificateIssued {
        certificate_id: certificate_id.ok_or(FleetError::MissingField(ID))?,
        certificate_pem: certificate_pem.ok_or(FleetError::MissingField(PEM))?,
        ownership_token: ownership_token.ok_or(FleetError::MissingField(TOKEN))?,
    })
}

/// Parses the accepted reply of `RegisterThing`:
/// `{"deviceConfiguration":{..},"thingName":".."}`.
///
/// `deviceConfiguration` and unknown fields are skipped whatever their
/// content.
pub fn parse_register_thing_accepted(payload: &[u8]) -> Result<ThingRegistered, FleetError> {
    report_syntax_error_first(payload, read_register_thing_accepted(payload))
}

fn read_register_thing_accepted(payload: &[u8]) -> Result<ThingRegistered, FleetError> {
    const THING_NAME: &str = "thingName";
    let mut thing_name = None;
    let mut reader = JsonReader::new(payload);
    reader.object::<FIELD_NAME_LEN>(|reader, key| match key.as_field() {
        Some(THING_NAME) => read_required_string(reader, THING_NAME, &mut thing_name),
        _ => reader.skip_value(),
    })?;
    reader.end()?;
    Ok(ThingRegistered {
        thing_name: thing_name.ok_or(FleetError::MissingField(THING_NAME))?,
    })
}

/// Parses a rejected reply of either request:
/// `{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":".."}`.
///
/// `statusCode` and `errorCode` are required. A missing `errorMessage`
/// leaves it empty and an over-long one is truncated at a char boundary.
pub fn parse_rejected(payload: &[u8]) -> Result<Rejection, FleetError> {
    report_syntax_error_first(payload, read_rejected(payload))
}

fn read_rejected(payload: &[u8]) -> Result<Rejection, FleetError> {
    const STATUS_CODE: &str = "statusCode";
    const ERROR_CODE: &str = "errorCode";
    const ERROR_MESSAGE: &str = "errorMessage";
    let mut status_code = None;
    let mut error_code = None;
    let mut error_message: Option<String<MAX_ERROR_MESSAGE_LEN>> = None;
    let mut reader = JsonReader::new(payload);
    reader.object::<FIELD_NAME_LEN>(|reader, key| match key.as_field() {
        Some(STATUS_CODE) => {
            if status_code.is_some() {
                return Err(FleetError::DuplicateField(STATUS_CODE));
            }
            let invalid_type = FleetError::InvalidFieldType {
                field: STATUS_CODE,
                expected: "an integer from 0 to 65535",
            };
            if reader.peek_value_kind()? != ValueKind::Number {
                return Err(invalid_type);
            }
            let text = reader.scalar_text()?;
            status_code = Some(text.parse::<u16>().map_err(|_| invalid_type)?);
            Ok(())
        }
        Some(ERROR_CODE) => read_required_string(reader, ERROR_CODE, &mut error_code),
        Some(ERROR_MESSAGE) => {
            if error_message.is_some() {
                return Err(FleetError::DuplicateField(ERROR_MESSAGE));
            }
            if reader.peek_value_kind()? != ValueKind::String {
                return Err(FleetError::InvalidFieldType {
                    field: ERROR_MESSAGE,
                    expected: "a string",
                });
            }
            let mut message = String::new();
            // Truncation is wanted here, so the overflow flag is ignored.
            reader.string_into(&mut message)?;
            error_message = Some(message);
            Ok(())
        }
        _ => reader.skip_value(),
    })?;
    reader.end()?;
    Ok(Rejection {
        status_code: status_code.ok_or(FleetError::MissingField(STATUS_CODE))?,
        error_code: error_code.ok_or(FleetError::MissingField(ERROR_CODE))?,
        error_message: error_message.unwrap_or_default(),
    })
}

/// Returns [`FleetError::InvalidJson`] in place of a field error when the
/// payload is not valid JSON at all. The readers stop at the first field
/// error, before they have seen the rest of the payload.
fn report_syntax_error_first<T>(
    payload: &[u8],
    result: Result<T, FleetError>,
) -> Result<T, FleetError> {
    match result {
        Err(error) if error != FleetError::InvalidJson && !is_valid_json(payload) => {
            Err(FleetError::InvalidJson)
        }
        other => other,
    }
}

fn is_valid_json(payload: &[u8]) -> bool {
    let mut reader = JsonReader::new(payload);
    reader.skip_value().is_ok() && reader.end().is_ok()
}

// ---------------------------------------------------------------------------
// JSON reader
// ---------------------------------------------------------------------------

/// Capacity for member names of the reply objects. The longest known name is
/// `certificateOwnershipToken` (25 bytes); longer names are unknown fields.
const FIELD_NAME_LEN: usize = 32;

/// Kind of the next JSON value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    String,
    Number,
    True,
    False,
    Null,
    Object,
    Array,
}

/// An object member name, unescaped, possibly cut at its capacity.
struct MemberName<const N: usize> {
    text: String<N>,
    overflowed: bool,
}

impl<const N: usize> MemberName<N> {
    /// Returns the name unless it overflowed, in which case it matches no
    /// known field.
    fn as_field(&self) -> Option<&str> {
        (!self.overflowed).then_some(self.text.as_str())
    }
}

/// A strict RFC 8259 JSON reader over a byte slice. Every byte access is
/// bounds-checked, so malformed input returns an error instead of panicking.
struct JsonReader<'a> {
    input: &'a [u8],
    position: usize,
    depth: usize,
}

impl<'a> JsonReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            position: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.position).copied()
    }

    fn next_byte(&mut self) -> Result<u8, FleetError> {
        let byte = self.peek().ok_or(FleetError::InvalidJson)?;
        self.position += 1;
        Ok(byte)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    fn expect(&mut self, expected: u8) -> Result<(), FleetError> {
        if self.next_byte()? == expected {
            Ok(())
        } else {
            Err(FleetError::InvalidJson)
        }
    }

    fn expect_literal(&mut self, literal: &[u8]) -> Result<(), FleetError> {
        let end = self.position.saturating_add(literal.len());
        if self.input.get(self.position..end) == Some(literal) {
            self.position = end;
            Ok(())
        } else {
            Err(FleetError::InvalidJson)
        }
    }

    /// Skips whitespace and classifies the next value without consuming it.
    fn peek_value_kind(&mut self) -> Result<ValueKind, FleetError> {
        self.skip_whitespace();
        match self.peek().ok_or(FleetError::InvalidJson)? {
            b'"' => Ok(ValueKind::String),
            b'-' | b'0'..=b'9' => Ok(ValueKind::Number),
            b't' => Ok(ValueKind::True),
            b'f' => Ok(ValueKind::False),
            b'n' => Ok(ValueKind::Null),
            b'{' => Ok(ValueKind::Object),
            b'[' => Ok(ValueKind::Array),
            _ => Err(FleetError::InvalidJson),
        }
    }

    /// Checks that only whitespace follows the top-level value.
    fn end(&mut self) -> Result<(), FleetError> {
        self.skip_whitespace();
        if self.position == self.input.len() {
            Ok(())
        } else {
            Err(FleetError::InvalidJson)
        }
    }

    /// Reads an object and calls `on_member` for each member with the reader
    /// placed before the value. `on_member` must consume exactly one value.
    fn object<const N: usize>(
        &mut self,
        mut on_member: impl FnMut(&mut Self, &MemberName<N>) -> Result<(), FleetError>,
    ) -> Result<(), FleetError> {
        match self.peek_value_kind()? {
            ValueKind::Object => {}
            _ => {
                // Tell "valid JSON of another type" from "not JSON".
                self.skip_value()?;
                self.end()?;
                return Err(FleetError::NotAnObject);
            }
        }
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(FleetError::InvalidJson);
            }
            let mut text = String::<N>::new();
            let overflowed = self.string_into(&mut text)?;
            let name = MemberName { text, overflowed };
            self.skip_whitespace();
            self.expect(b':')?;
            on_member(self, &name)?;
            self.skip_whitespace();
            match self.next_byte()? {
                b',' => {}
                b'}' => return Ok(()),
                _ => return Err(FleetError::InvalidJson),
            }
        }
    }

    /// Reads a string value, unescaping it into `out` up to its capacity.
    /// Returns `true` when the string did not fit, in which case `out` contains
    /// the start of it cut at a char boundary. The whole string is always
    /// consumed and validated.
    fn string_into<const N: usize>(&mut self, out: &mut String<N>) -> Result<bool, FleetError> {
        let mut overflowed = false;
        let mut append = |text: &str| {
            if overflowed {
                return;
            }
            if out.push_str(text).is_err() {
                overflowed = true;
                for c in text.chars() {
                    if out.push(c).is_err() {
                        break;
                    }
                }
            }
        };
        self.skip_whitespace();
        self.expect(b'"')?;
        loop {
            let run_start = self.position;
            while let Some(byte) = self.peek() {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.position += 1;
            }
            // The run ends at an ASCII byte or the end of input, so it is a
            // whole UTF-8 sequence if the input is valid UTF-8.
            let run = self
                .input
                .get(run_start..self.position)
                .ok_or(FleetError::InvalidJson)?;
            let run = core::str::from_utf8(run).map_err(|_| FleetError::InvalidJson)?;
            append(run);
            match self.next_byte()? {
                b'"' => return Ok(overflowed),
                b'\\' => {
                    let c = self.escape()?;
                    append(c.encode_utf8(&mut [0; 4]));
                }
                // A raw control character, which JSON forbids in strings.
                _ => return Err(FleetError::InvalidJson),
            }
        }
    }

    /// Decodes the escape after a backslash, including UTF-16 surrogate
    /// pairs written as two `\uXXXX` escapes.
    fn escape(&mut self) -> Result<char, FleetError> {
        let c = match self.next_byte()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        self.expect_literal(b"\\u")?;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(FleetError::InvalidJson);
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code).ok_or(FleetError::InvalidJson)?
                    }
                    // A lone low surrogate, which no char can hold.
                    0xDC00..=0xDFFF => return Err(FleetError::InvalidJson),
                    _ => char::from_u32(unit).ok_or(FleetError::InvalidJson)?,
                }
            }
            _ => return Err(FleetError::InvalidJson),
        };
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, FleetError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = char::from(self.next_byte()?)
                .to_digit(16)
                .ok_or(FleetError::InvalidJson)?;
            value = value * 16 + digit;
        }
        Ok(value)
    }

    /// Reads a number, `true` or `false` and returns its source text.
    fn scalar_text(&mut self) -> Result<&'a str, FleetError> {
        let start = self.position;
        match self.peek_value_kind()? {
            ValueKind::Number => self.number()?,
            ValueKind::True => self.expect_literal(b"true")?,
            ValueKind::False => self.expect_literal(b"false")?,
            _ => return Err(FleetError::InvalidJson),
        }
        let text = self
            .input
            .get(start..self.position)
            .ok_or(FleetError::InvalidJson)?;
        // Validated ASCII, after leading whitespace is trimmed.
        core::str::from_utf8(text)
            .map(str::trim_start)
            .map_err(|_| FleetError::InvalidJson)
    }

    /// Consumes a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<(), FleetError> {
        if self.peek() == Some(b'-') {
            self.position += 1;
        }
        match self.next_byte()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(FleetError::InvalidJson),
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.position += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.position += 1;
            }
            self.required_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.position += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), FleetError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(FleetError::InvalidJson);
        }
        self.digits();
        Ok(())
    }

    /// Consumes and validates any value.
    fn skip_value(&mut self) -> Result<(), FleetError> {
        match self.peek_value_kind()? {
            ValueKind::String => {
                self.string_into(&mut String::<0>::new())?;
            }
            ValueKind::Number | ValueKind::True | ValueKind::False => {
                self.scalar_text()?;
            }
            ValueKind::Null => self.expect_literal(b"null")?,
            ValueKind::Object => {
                self.nested(|reader| reader.object::<0>(|reader, _| reader.skip_value()))?;
            }
            ValueKind::Array => self.nested(Self::skip_array)?,
        }
        Ok(())
    }

    /// Runs `read` one nesting level deeper, failing past
    /// [`MAX_NESTING_DEPTH`] so recursion stays bounded.
    fn nested(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<(), FleetError>,
    ) -> Result<(), FleetError> {
        if self.depth >= MAX_NESTING_DEPTH {
            return Err(FleetError::InvalidJson);
        }
        self.depth += 1;
        let result = read(self);
        self.depth -= 1;
        result
    }

    fn skip_array(&mut self) -> Result<(), FleetError> {
        self.skip_whitespace();
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Ok(());
        }
        loop {
            self.skip_value()?;
            self.skip_whitespace();
            match self.next_byte()? {
                b',' => {}
                b']' => return Ok(()),
                _ => return Err(FleetError::InvalidJson),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;

    use super::*;

    /// Returns the JSON payload buffer inside a core-bus vector: the bytes
    /// after the first `{"`, whose length is the little-endian u32 before it.
    fn vector_payload(frame: &[u8]) -> &[u8] {
        let start = frame.windows(2).position(|w| w == b"{\"").unwrap();
        let len_bytes: [u8; 4] = frame[start - 4..start].try_into().unwrap();
        let len = u32::from_le_bytes(len_bytes) as usize;
        &frame[start..start + len]
    }

    const CSR_REQUEST_FRAME: &[u8] =
        include_bytes!("../tests/vectors/030-mqtt-publish-csr-req.bin");
    const CSR_ACCEPTED_FRAME: &[u8] =
        include_bytes!("../tests/vectors/029-mqtt-subscribe-csr-event.bin");
    const PROVISION_REQUEST_FRAME: &[u8] =
        include_bytes!("../tests/vectors/035-mqtt-publish-provision-req.bin");
    const PROVISION_ACCEPTED_FRAME: &[u8] =
        include_bytes!("../tests/vectors/034-mqtt-subscribe-provision-event.bin");

    const VECTOR_TOKEN: &str = "Y3xzE6iOe8bAb8TlerN44D44TQmAzUib-PLcYxozBbawNz_RqG1krFourBdb39295jrtuosD8BgcAn4y-pXXRRecci0Nt2yQXUobex4AYwlsEjvzMzLDXu_FHz-fyoza";

    /// Reads the CSR PEM back out of a `CreateCertificateFromCsr` request.
    fn decode_csr_request(payload: &[u8]) -> String<MAX_CSR_PEM_LEN> {
        let mut csr = String::new();
        let mut reader = JsonReader::new(payload);
        reader
            .object::<FIELD_NAME_LEN>(|reader, key| {
                assert_eq!(key.as_field(), Some("certificateSigningRequest"));
                assert!(!reader.string_into(&mut csr)?);
                Ok(())
            })
            .unwrap();
        reader.end().unwrap();
        csr
    }

    /// Reads token and parameters back out of a `RegisterThing` request.
    fn decode_register_request(
        payload: &[u8],
    ) -> (String<MAX_OWNERSHIP_TOKEN_LEN>, TemplateParameters) {
        let mut token = String::new();
        let mut parameters = TemplateParameters::new();
        let mut reader = JsonReader::new(payload);
        reader
            .object::<FIELD_NAME_LEN>(|reader, key| match key.as_field() {
                Some("certificateOwnershipToken") => {
                    assert!(!reader.string_into(&mut token)?);
                    Ok(())
                }
                Some("parameters") => reader.object::<MAX_PARAMETER_KEY_LEN>(|reader, key| {
                    let mut value = ParameterValue::new();
                    assert!(!reader.string_into(&mut value)?);
                    parameters.push(key.text.as_str(), &value)
                }),
                other => panic!("unexpected field {other:?}"),
            })
            .unwrap();
        reader.end().unwrap();
        (token, parameters)
    }

    fn single_parameter(key: &str, value: &str) -> TemplateParameters {
        let mut parameters = TemplateParameters::new();
        parameters.push(key, value).unwrap();
        parameters
    }

    fn rejection(status_code: u16, error_code: &str) -> Rejection {
        Rejection {
            status_code,
            error_code: String::try_from(error_code).unwrap(),
            error_message: String::new(),
        }
    }

    // --- topics ---

    #[test]
    fn register_topic_and_filter() {
        assert_eq!(
            register_thing_topic("GGFleetProvisioningTemplate").unwrap(),
            "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json"
        );
        assert_eq!(
            register_thing_filter("GGFleetProvisioningTemplate").unwrap(),
            "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json/+"
        );
    }

    #[test]
    fn template_name_length_limits() {
        let longest = "a".repeat(MAX_TEMPLATE_NAME_LEN);
        let accepted_topic = register_thing_topic(&longest).unwrap();
        assert!(accepted_topic.len() + "/accepted".len() <= MAX_TOPIC_LEN);
        assert!(register_thing_filter(&longest).is_ok());

        let too_long = "a".repeat(MAX_TEMPLATE_NAME_LEN + 1);
        assert_eq!(
            register_thing_topic(&too_long),
            Err(FleetError::InvalidTemplateName)
        );
        assert_eq!(
            register_thing_filter(&too_long),
            Err(FleetError::InvalidTemplateName)
        );
        assert_eq!(
            register_thing_topic(""),
            Err(FleetError::InvalidTemplateName)
        );
    }

    #[test]
    fn template_name_characters() {
        assert!(register_thing_topic("My_Template-01").is_ok());
        for name in ["a/b", "a+b", "a#", "a b", "é", "a.b", "$aws", "a\n"] {
            assert_eq!(
                register_thing_topic(name),
                Err(FleetError::InvalidTemplateName),
                "name {name:?}"
            );
        }
    }

    #[test]
    fn reply_kind_classifies_topics() {
        let request = CREATE_CERTIFICATE_TOPIC;
        let accepted = "$aws/certificates/create-from-csr/json/accepted";
        let rejected = "$aws/certificates/create-from-csr/json/rejected";
        assert_eq!(reply_kind(request, accepted), Some(ReplyKind::Accepted));
        assert_eq!(reply_kind(request, rejected), Some(ReplyKind::Rejected));
        assert_eq!(reply_kind(request, request), None);
        assert_eq!(
            reply_kind(request, "$aws/certificates/create-from-csr/json/other"),
            None
        );
        assert_eq!(
            reply_kind(request, "$aws/certificates/create-from-csr/json/accepted/x"),
            None
        );
        assert_eq!(
            reply_kind(request, "$aws/certificates/create/json/accepted"),
            None
        );
        let register = register_thing_topic("T").unwrap();
        assert_eq!(reply_kind(&register, accepted), None);
        assert_eq!(
            reply_kind(
                &register,
                "$aws/provisioning-templates/T/provision/json/rejected"
            ),
            Some(ReplyKind::Rejected)
        );
    }

    #[test]
    fn create_certificate_filter_matches_replies() {
        assert_eq!(
            CREATE_CERTIFICATE_FILTER.strip_suffix("/+"),
            Some(CREATE_CERTIFICATE_TOPIC)
        );
    }

    // --- requests ---

    #[test]
    fn csr_request_matches_c_tool_bytes() {
        let expected = vector_payload(CSR_REQUEST_FRAME);
        let csr = decode_csr_request(expected);
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\nMIHg"));
        assert!(csr.ends_with("-----END CERTIFICATE REQUEST-----\n"));

        let mut out = [0u8; MAX_REQUEST_PAYLOAD_LEN];
        let len = encode_create_certificate_request(&csr, &mut out).unwrap();
        assert_eq!(&out[..len], expected);
    }

    #[test]
    fn register_request_matches_c_tool_bytes() {
        let expected = vector_payload(PROVISION_REQUEST_FRAME);
        let parameters = single_parameter("SerialNumber", "peer23156r0");
        let mut out = [0u8; MAX_REQUEST_PAYLOAD_LEN];
        let len = encode_register_thing_request(VECTOR_TOKEN, &parameters, &mut out).unwrap();
        assert_eq!(&out[..len], expected);
    }

    #[test]
    fn register_request_without_parameters() {
        let mut out = [0u8; 64];
        let len =
            encode_register_thing_request("tok", &TemplateParameters::new(), &mut out).unwrap();
        assert_eq!(
            &out[..len],
            br#"{"certificateOwnershipToken":"tok","parameters":{}}"#
        );
    }

    #[test]
    fn register_request_escapes_strings() {
        let mut parameters = TemplateParameters::new();
        parameters.push("quote\"key", "back\\slash").unwrap();
        parameters.push("ctl", "a\nb\tc\u{1}\u{1f}\u{7f}").unwrap();
        parameters.push("unicode", "é😀").unwrap();
        let mut out = [0u8; 512];
        let len = encode_register_thing_request("t\"\\", &parameters, &mut out).unwrap();
        let expected = "{\"certificateOwnershipToken\":\"t\\\"\\\\\",\"parameters\":{\
             \"quote\\\"key\":\"back\\\\slash\",\
             \"ctl\":\"a\\u000Ab\\u0009c\\u0001\\u001F\u{7f}\",\
             \"unicode\":\"é😀\"}}";
        assert_eq!(core::str::from_utf8(&out[..len]).unwrap(), expected);
    }

    #[test]
    fn register_request_round_trips() {
        let mut parameters = TemplateParameters::new();
        parameters.push("SerialNumber", "peer\"23\\156").unwrap();
        parameters.push("Ctl\u{0}", "\r\n\u{8}\u{c}\u{1b}").unwrap();
        parameters.push("Ünïcödé", "日本語 😀").unwrap();
        parameters.push("Empty", "").unwrap();
        let token = "tok\"en\\\n😀";
        let mut out = [0u8; 1024];
        let len = encode_register_thing_request(token, &parameters, &mut out).unwrap();
        let (decoded_token, decoded_parameters) = decode_register_request(&out[..len]);
        assert_eq!(decoded_token, token);
        assert_eq!(decoded_parameters, parameters);
    }

    #[test]
    fn csr_request_round_trips_control_characters() {
        let csr = "line1\r\nline2\u{0}\"\\end";
        let mut out = [0u8; 128];
        let len = encode_create_certificate_request(csr, &mut out).unwrap();
        assert_eq!(decode_csr_request(&out[..len]), csr);
    }

    #[test]
    fn encode_reports_needed_buffer_size() {
        let parameters = single_parameter("SerialNumber", "peer23156r0");
        let mut big = [0u8; 512];
        let full_len = encode_register_thing_request(VECTOR_TOKEN, &parameters, &mut big).unwrap();
        let mut small = [0u8; 100];
        assert_eq!(
            encode_register_thing_request(VECTOR_TOKEN, &parameters, &mut small),
            Err(FleetError::BufferTooSmall { needed: full_len })
        );
        let mut exact = [0u8; 512];
        let exact = &mut exact[..full_len];
        assert_eq!(
            encode_register_thing_request(VECTOR_TOKEN, &parameters, exact),
            Ok(full_len)
        );

        // 30 bytes of prefix, `a\u000Ab` (8 bytes) and the closing `"}`.
        let mut tiny = [0u8; 10];
        assert_eq!(
            encode_create_certificate_request("a\nb", &mut tiny),
            Err(FleetError::BufferTooSmall { needed: 40 })
        );
    }

    #[test]
    fn encode_rejects_empty_and_long_inputs() {
        let mut out = [0u8; MAX_REQUEST_PAYLOAD_LEN];
        let parameters = TemplateParameters::new();
        assert_eq!(
            encode_create_certificate_request("", &mut out),
            Err(FleetError::EmptyField("certificateSigningRequest"))
        );
        let long_csr = "A".repeat(MAX_CSR_PEM_LEN + 1);
        assert_eq!(
            encode_create_certificate_request(&long_csr, &mut out),
            Err(FleetError::FieldTooLong {
                field: "certificateSigningRequest",
                max: MAX_CSR_PEM_LEN
            })
        );
        assert_eq!(
            encode_register_thing_request("", &parameters, &mut out),
            Err(FleetError::EmptyField("certificateOwnershipToken"))
        );
        let long_token = "A".repeat(MAX_OWNERSHIP_TOKEN_LEN + 1);
        assert_eq!(
            encode_register_thing_request(&long_token, &parameters, &mut out),
            Err(FleetError::FieldTooLong {
                field: "certificateOwnershipToken",
                max: MAX_OWNERSHIP_TOKEN_LEN
            })
        );
    }

    #[test]
    fn largest_requests_fit_payload_buffer() {
        // Every token character is a control character, so each is escaped
        // to six bytes, and the parameters fill their encoded budget.
        let token = "\u{1}".repeat(MAX_OWNERSHIP_TOKEN_LEN);
        let mut parameters = TemplateParameters::new();
        let value = "\u{2}".repeat(MAX_PARAMETER_VALUE_LEN);
        let mut index = 0;
        loop {
            let key = std::format!("k{index}");
            match parameters.push(&key, &value) {
                Ok(()) => index += 1,
                Err(FleetError::ParametersTooLarge { .. }) => break,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        // Top up with a short value so the budget is nearly exhausted.
        let mut filler = std::string::String::new();
        while parameters.push("filler", &filler).is_err() && !filler.is_empty() {
            filler.pop();
        }
        assert!(parameters.encoded_len <= MAX_ENCODED_PARAMETERS_LEN);
        assert!(parameters.encoded_len > MAX_ENCODED_PARAMETERS_LEN - 6 * MAX_PARAMETER_VALUE_LEN);

        let mut out = std::vec![0u8; MAX_REQUEST_PAYLOAD_LEN];
        let len = encode_register_thing_request(&token, &parameters, &mut out).unwrap();
        let expected_len = REGISTER_THING_PREFIX.len()
            + 6 * MAX_OWNERSHIP_TOKEN_LEN
            + REGISTER_THING_MIDDLE.len()
            + parameters.encoded_len
            + 1;
        assert_eq!(len, expected_len);

        let csr = "\n".repeat(MAX_CSR_PEM_LEN);
        assert!(encode_create_certificate_request(&csr, &mut out).is_ok());
    }

    // --- template parameters ---

    #[test]
    fn parameters_push_and_lookup() {
        let mut parameters = TemplateParameters::new();
        assert!(parameters.is_empty());
        parameters.push("b", "2").unwrap();
        parameters.push("a", "1").unwrap();
        assert_eq!(parameters.len(), 2);
        assert!(!parameters.is_empty());
        assert_eq!(parameters.get("a"), Some("1"));
        assert_eq!(parameters.get("c"), None);
        let order: std::vec::Vec<_> = parameters.iter().collect();
        assert_eq!(order, [("b", "2"), ("a", "1")]);
    }

    #[test]
    fn parameters_push_rejects_invalid() {
        let mut parameters = single_parameter("a", "1");
        assert_eq!(parameters.push("", "x"), Err(FleetError::EmptyParameterKey));
        assert_eq!(
            parameters.push("a", "2"),
            Err(FleetError::DuplicateParameter {
                key: KeyExcerpt::new("a")
            })
        );
        let long_key = "k".repeat(MAX_PARAMETER_KEY_LEN + 1);
        assert_eq!(
            parameters.push(&long_key, "x"),
            Err(FleetError::ParameterKeyTooLong {
                key: KeyExcerpt::new(&long_key),
                max: MAX_PARAMETER_KEY_LEN
            })
        );
        let long_value = "v".repeat(MAX_PARAMETER_VALUE_LEN + 1);
        assert_eq!(
            parameters.push("b", &long_value),
            Err(FleetError::ParameterValueTooLong {
                key: KeyExcerpt::new("b"),
                max: MAX_PARAMETER_VALUE_LEN
            })
        );
        assert_eq!(parameters.len(), 1);
        assert_eq!(parameters.get("a"), Some("1"));
    }

    #[test]
    fn parameters_capacity_limit() {
        let mut parameters = TemplateParameters::new();
        for index in 0..MAX_PARAMETERS {
            parameters.push(&std::format!("k{index}"), "v").unwrap();
        }
        assert_eq!(
            parameters.push("one-more", "v"),
            Err(FleetError::TooManyParameters {
                max: MAX_PARAMETERS
            })
        );
        assert_eq!(parameters.len(), MAX_PARAMETERS);
    }

    #[test]
    fn parameters_json_scalars() {
        let parameters = parse_template_parameters_json(
            r#" { "SerialNumber" : "peer23156r0", "Count": 42, "Ratio": -1.5e3,
                 "On": true, "Off": false, "Zero": 0, "Esc\u0061ped": "a\"b" } "#,
        )
        .unwrap();
        let pairs: std::vec::Vec<_> = parameters.iter().collect();
        assert_eq!(
            pairs,
            [
                ("SerialNumber", "peer23156r0"),
                ("Count", "42"),
                ("Ratio", "-1.5e3"),
                ("On", "true"),
                ("Off", "false"),
                ("Zero", "0"),
                ("Escaped", "a\"b"),
            ]
        );
    }

    #[test]
    fn parameters_json_empty_object() {
        assert!(parse_template_parameters_json("{}").unwrap().is_empty());
        assert!(parse_template_parameters_json(" {  } ").unwrap().is_empty());
    }

    #[test]
    fn parameters_json_rejects_non_scalars() {
        for (json, key) in [
            (r#"{"ok":"1","Nested":{"a":"b"}}"#, "Nested"),
            (r#"{"List":["a"]}"#, "List"),
            (r#"{"Nothing":null}"#, "Nothing"),
        ] {
            let error = parse_template_parameters_json(json).unwrap_err();
            assert_eq!(
                error,
                FleetError::ParameterNotScalar {
                    key: KeyExcerpt::new(key)
                },
                "json {json}"
            );
            assert!(error.to_string().contains(key), "message {error}");
        }
    }

    #[test]
    fn parameters_json_rejects_bad_input() {
        assert_eq!(
            parse_template_parameters_json("[]"),
            Err(FleetError::NotAnObject)
        );
        assert_eq!(
            parse_template_parameters_json("\"x\""),
            Err(FleetError::NotAnObject)
        );
        assert_eq!(
            parse_template_parameters_json(""),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{\"a\":1,}"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{\"a\":01}"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{\"a\":1.}"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{\"a\":tru}"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{a:1}"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json("{\"a\":1} x"),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json(r#"{"a":"1","a":"2"}"#),
            Err(FleetError::DuplicateParameter {
                key: KeyExcerpt::new("a")
            })
        );
        assert_eq!(
            parse_template_parameters_json(r#"{"":"1"}"#),
            Err(FleetError::EmptyParameterKey)
        );
    }

    #[test]
    fn parameters_json_length_limits() {
        let long_key = "k".repeat(MAX_PARAMETER_KEY_LEN + 1);
        assert_eq!(
            parse_template_parameters_json(&std::format!("{{\"{long_key}\":\"v\"}}")),
            Err(FleetError::ParameterKeyTooLong {
                key: KeyExcerpt::new(&long_key),
                max: MAX_PARAMETER_KEY_LEN
            })
        );
        let long_value = "v".repeat(MAX_PARAMETER_VALUE_LEN + 1);
        assert_eq!(
            parse_template_parameters_json(&std::format!("{{\"k\":\"{long_value}\"}}")),
            Err(FleetError::ParameterValueTooLong {
                key: KeyExcerpt::new("k"),
                max: MAX_PARAMETER_VALUE_LEN
            })
        );
        let long_number = "9".repeat(MAX_PARAMETER_VALUE_LEN + 1);
        assert_eq!(
            parse_template_parameters_json(&std::format!("{{\"k\":{long_number}}}")),
            Err(FleetError::ParameterValueTooLong {
                key: KeyExcerpt::new("k"),
                max: MAX_PARAMETER_VALUE_LEN
            })
        );
        let max_value = "v".repeat(MAX_PARAMETER_VALUE_LEN);
        let parameters =
            parse_template_parameters_json(&std::format!("{{\"k\":\"{max_value}\"}}")).unwrap();
        assert_eq!(parameters.get("k"), Some(max_value.as_str()));
    }

    #[test]
    fn key_excerpt_cuts_at_char_boundary() {
        // 31 ASCII bytes then a 2-byte char that crosses the 32-byte limit.
        let key = std::format!("{}é", "a".repeat(31));
        let excerpt = KeyExcerpt::new(&key);
        assert_eq!(excerpt.as_str(), "a".repeat(31));
        assert!(excerpt.is_truncated());
        assert!(excerpt.to_string().ends_with("...\""));
        let short = KeyExcerpt::new("Serial");
        assert_eq!(short.as_str(), "Serial");
        assert!(!short.is_truncated());
        assert_eq!(short.to_string(), "\"Serial\"");
    }

    // --- CreateCertificateFromCsr accepted ---

    #[test]
    fn certificate_accepted_from_vector() {
        let issued = parse_create_certificate_accepted(vector_payload(CSR_ACCEPTED_FRAME)).unwrap();
        assert_eq!(
            issued.certificate_id,
            "821731aaf79c4deb6984d9a2efa29bf9170b70892038911eafccf65c5ba773af"
        );
        assert!(issued
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----\nMIIBpjCCAUygAwIBAgIUSahbmBxKWok1MwpwpyuJsDyTgD4wCgYIKoZIzj0EAwIw\n"));
        assert!(issued
            .certificate_pem
            .ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(!issued.certificate_pem.contains('\\'));
        // BEGIN line, 9 base64 lines, END line.
        assert_eq!(issued.certificate_pem.lines().count(), 11);
        assert_eq!(issued.ownership_token, VECTOR_TOKEN);
    }

    #[test]
    fn certificate_accepted_ignores_unknown_fields() {
        let payload = br#"{"extra":{"a":[1,2.5e-3,{"b":null}],"c":"}]\""},"certificateId":"abc",
            "more":[true,false,null,-0],"certificatePem":"PEM","certificateOwnershipToken":"tok",
            "aVeryLongUnknownFieldNameThatExceedsThirtyTwoBytes":"x"}"#;
        let issued = parse_create_certificate_accepted(payload).unwrap();
        assert_eq!(issued.certificate_id, "abc");
        assert_eq!(issued.certificate_pem, "PEM");
        assert_eq!(issued.ownership_token, "tok");
    }

    #[test]
    fn certificate_accepted_missing_fields() {
        let cases: [(&[u8], &str); 3] = [
            (
                br#"{"certificatePem":"p","certificateOwnershipToken":"t"}"#,
                "certificateId",
            ),
            (
                br#"{"certificateId":"i","certificateOwnershipToken":"t"}"#,
                "certificatePem",
            ),
            (
                br#"{"certificateId":"i","certificatePem":"p"}"#,
                "certificateOwnershipToken",
            ),
        ];
        for (payload, field) in cases {
            assert_eq!(
                parse_create_certificate_accepted(payload),
                Err(FleetError::MissingField(field))
            );
        }
    }

    #[test]
    fn certificate_accepted_field_errors() {
        assert_eq!(
            parse_create_certificate_accepted(
                br#"{"certificateId":5,"certificatePem":"p","certificateOwnershipToken":"t"}"#
            ),
            Err(FleetError::InvalidFieldType {
                field: "certificateId",
                expected: "a string"
            })
        );
        assert_eq!(
            parse_create_certificate_accepted(
                br#"{"certificateId":"","certificatePem":"p","certificateOwnershipToken":"t"}"#
            ),
            Err(FleetError::EmptyField("certificateId"))
        );
        assert_eq!(
            parse_create_certificate_accepted(
                br#"{"certificateId":"a","certificateId":"b","certificatePem":"p","certificateOwnershipToken":"t"}"#
            ),
            Err(FleetError::DuplicateField("certificateId"))
        );
    }

    #[test]
    fn certificate_accepted_length_limits() {
        let accepted = |id: &str, pem: &str, token: &str| {
            std::format!(
                r#"{{"certificateId":"{id}","certificatePem":"{pem}","certificateOwnershipToken":"{token}"}}"#
            )
        };
        let max_id = "f".repeat(MAX_CERTIFICATE_ID_LEN);
        assert!(parse_create_certificate_accepted(accepted(&max_id, "p", "t").as_bytes()).is_ok());

        let long_id = "f".repeat(MAX_CERTIFICATE_ID_LEN + 1);
        assert_eq!(
            parse_create_certificate_accepted(accepted(&long_id, "p", "t").as_bytes()),
            Err(FleetError::FieldTooLong {
                field: "certificateId",
                max: MAX_CERTIFICATE_ID_LEN
            })
        );

        let long_token = "t".repeat(MAX_OWNERSHIP_TOKEN_LEN + 1);
        assert_eq!(
            parse_create_certificate_accepted(accepted("i", "p", &long_token).as_bytes()),
            Err(FleetError::FieldTooLong {
                field: "certificateOwnershipToken",
                max: MAX_OWNERSHIP_TOKEN_LEN
            })
        );

        // The limit applies after unescaping: 4096 escaped newlines are 8192
        // bytes of JSON text but 4096 bytes of PEM.
        let escaped_pem = "\\n".repeat(MAX_CERTIFICATE_PEM_LEN);
        let issued =
            parse_create_certificate_accepted(accepted("i", &escaped_pem, "t").as_bytes()).unwrap();
        assert_eq!(issued.certificate_pem.len(), MAX_CERTIFICATE_PEM_LEN);
        assert!(issued.certificate_pem.bytes().all(|b| b == b'\n'));

        let long_pem = "\\n".repeat(MAX_CERTIFICATE_PEM_LEN + 1);
        assert_eq!(
            parse_create_certificate_accepted(accepted("i", &long_pem, "t").as_bytes()),
            Err(FleetError::FieldTooLong {
                field: "certificatePem",
                max: MAX_CERTIFICATE_PEM_LEN
            })
        );
    }

    #[test]
    fn string_escapes_decode() {
        let payload = br#"{"thingName":"q\" b\\ s\/ c\b\f\n\r\t u\u00e9\u00C9 p\uD83D\uDE00"}"#;
        let registered = parse_register_thing_accepted(payload).unwrap();
        assert_eq!(
            registered.thing_name,
            "q\" b\\ s/ c\u{8}\u{c}\n\r\t uéÉ p😀"
        );
    }

    #[test]
    fn invalid_json_is_rejected() {
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"{\"thingName\":\"x\"",
            b"{\"thingName\":\"x\",}",
            b"{\"thingName\":\"x\"} trailing",
            b"{\"thingName\":\"x\nraw newline\"}",
            b"{\"thingName\":\"bad \\x escape\"}",
            b"{\"thingName\":\"lone \\uD83D high\"}",
            b"{\"thingName\":\"lone \\uDE00 low\"}",
            b"{\"thingName\":\"pair \\uD83D\\u0041 wrong\"}",
            b"{\"thingName\":\"short \\u12\"}",
            b"{\"thingName\":\"not utf8 \xff\"}",
            b"{\"thingName\":\"x\",\"n\":01}",
            b"{\"thingName\":\"x\",\"n\":-}",
            b"{\"thingName\":\"x\",\"n\":1e}",
            b"{\"thingName\":\"x\",\"n\":nul}",
            b"{\"thingName\":\"x\",\"n\":[1,]}",
            b"{\"thingName\":\"x\",\"n\":[1 2]}",
            b"{\"thingName\":\"x\" \"n\":1}",
            b"{thingName:\"x\"}",
            b"\xef\xbb\xbf{\"thingName\":\"x\"}",
        ];
        for payload in cases {
            assert_eq!(
                parse_register_thing_accepted(payload),
                Err(FleetError::InvalidJson),
                "payload {:?}",
                core::str::from_utf8(payload)
            );
        }
    }

    #[test]
    fn syntax_error_wins_over_field_error() {
        assert_eq!(
            parse_rejected(br#"{"statusCode":{"#),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_create_certificate_accepted(br#"{"certificateId":"","x":}"#),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_template_parameters_json(r#"{"a":null,"b":}"#),
            Err(FleetError::InvalidJson)
        );
        assert_eq!(
            parse_register_thing_accepted(br#"{"thingName":1"#),
            Err(FleetError::InvalidJson)
        );
    }

    #[test]
    fn nesting_depth_limit() {
        let nested = |depth: usize| {
            std::format!(
                "{{\"deviceConfiguration\":{}{},\"thingName\":\"t\"}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(parse_register_thing_accepted(nested(MAX_NESTING_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse_register_thing_accepted(nested(MAX_NESTING_DEPTH + 1).as_bytes()),
            Err(FleetError::InvalidJson)
        );
        let very_deep = "[".repeat(100_000);
        assert_eq!(
            parse_register_thing_accepted(very_deep.as_bytes()),
            Err(FleetError::InvalidJson)
        );
    }

    #[test]
    fn non_object_payloads() {
        for payload in [&b"[]"[..], b"42", b" \"text\" ", b"null", b"true"] {
            assert_eq!(parse_rejected(payload), Err(FleetError::NotAnObject));
        }
    }

    // --- RegisterThing accepted ---

    #[test]
    fn thing_registered_from_vector() {
        let registered =
            parse_register_thing_accepted(vector_payload(PROVISION_ACCEPTED_FRAME)).unwrap();
        assert_eq!(registered.thing_name, "ggl-peer-peer23156r0");
    }

    #[test]
    fn thing_registered_skips_device_configuration() {
        let payload =
            br#"{"deviceConfiguration":{"Fleet":"x","nested":{"list":[1,{"a":"}"}],"n":null}},
            "thingName":"Device-01"}"#;
        assert_eq!(
            parse_register_thing_accepted(payload).unwrap().thing_name,
            "Device-01"
        );
        assert_eq!(
            parse_register_thing_accepted(br#"{"deviceConfiguration":{}}"#),
            Err(FleetError::MissingField("thingName"))
        );
        let long_name = "n".repeat(MAX_THING_NAME_LEN + 1);
        assert_eq!(
            parse_register_thing_accepted(
                std::format!(r#"{{"thingName":"{long_name}"}}"#).as_bytes()
            ),
            Err(FleetError::FieldTooLong {
                field: "thingName",
                max: MAX_THING_NAME_LEN
            })
        );
    }

    // --- rejected ---

    #[test]
    fn rejected_invalid_csr() {
        let payload = br#"{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":"Failed to parse CSR: \"bad\" input"}"#;
        let rejection = parse_rejected(payload).unwrap();
        assert_eq!(rejection.status_code, 400);
        assert_eq!(rejection.error_code, "InvalidCSR");
        assert_eq!(
            rejection.error_message,
            "Failed to parse CSR: \"bad\" input"
        );
        assert!(!rejection.is_retryable());
    }

    #[test]
    fn rejected_throttling() {
        let payload =
            br#"{ "statusCode": 429, "errorCode": "Throttling", "errorMessage": "Rate exceeded" }"#;
        let rejection = parse_rejected(payload).unwrap();
        assert_eq!(rejection.status_code, 429);
        assert_eq!(rejection.error_code, "Throttling");
        assert_eq!(rejection.error_message, "Rate exceeded");
        assert!(rejection.is_retryable());
    }

    #[test]
    fn rejected_without_message() {
        let rejection = parse_rejected(br#"{"statusCode":403,"errorCode":"Forbidden"}"#).unwrap();
        assert_eq!(rejection.status_code, 403);
        assert_eq!(rejection.error_code, "Forbidden");
        assert!(rejection.error_message.is_empty());
    }

    #[test]
    fn rejected_long_message_truncated() {
        // 'é' is two bytes, so an odd prefix makes the cut fall inside one.
        let message = std::format!("x{}", "é".repeat(MAX_ERROR_MESSAGE_LEN));
        let payload = std::format!(
            r#"{{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":"{message}"}}"#
        );
        let rejection = parse_rejected(payload.as_bytes()).unwrap();
        assert_eq!(rejection.error_message.len(), MAX_ERROR_MESSAGE_LEN - 1);
        assert!(message.starts_with(rejection.error_message.as_str()));
    }

    #[test]
    fn rejected_field_errors() {
        assert_eq!(
            parse_rejected(br#"{"errorCode":"InvalidCSR"}"#),
            Err(FleetError::MissingField("statusCode"))
        );
        assert_eq!(
            parse_rejected(br#"{"statusCode":400}"#),
            Err(FleetError::MissingField("errorCode"))
        );
        for status in ["\"400\"", "70000", "-1", "400.5", "4e2", "null"] {
            let payload = std::format!(r#"{{"statusCode":{status},"errorCode":"X"}}"#);
            assert_eq!(
                parse_rejected(payload.as_bytes()),
                Err(FleetError::InvalidFieldType {
                    field: "statusCode",
                    expected: "an integer from 0 to 65535"
                }),
                "status {status}"
            );
        }
        let long_code = "E".repeat(MAX_ERROR_CODE_LEN + 1);
        assert_eq!(
            parse_rejected(
                std::format!(r#"{{"statusCode":400,"errorCode":"{long_code}"}}"#).as_bytes()
            ),
            Err(FleetError::FieldTooLong {
                field: "errorCode",
                max: MAX_ERROR_CODE_LEN
            })
        );
        assert_eq!(
            parse_rejected(br#"{"statusCode":400,"errorCode":"X","errorMessage":7}"#),
            Err(FleetError::InvalidFieldType {
                field: "errorMessage",
                expected: "a string"
            })
        );
    }

    #[test]
    fn retryable_classification() {
        let retryable = [
            rejection(429, "Throttling"),
            rejection(500, "InternalFailure"),
            rejection(503, "ServiceUnavailable"),
            rejection(599, "Anything"),
            rejection(400, "Throttling"),
            rejection(400, "ThrottlingException"),
            rejection(400, "ServiceUnavailableException"),
            rejection(400, "InternalFailureException"),
        ];
        for rejection in &retryable {
            assert!(rejection.is_retryable(), "{rejection:?}");
        }
        let final_rejections = [
            rejection(400, "InvalidCSR"),
            rejection(400, "InvalidParameters"),
            rejection(403, "Forbidden"),
            rejection(404, "ResourceNotFound"),
            rejection(600, "Unknown"),
            rejection(400, "Exception"),
        ];
        for rejection in &final_rejections {
            assert!(!rejection.is_retryable(), "{rejection:?}");
        }
    }

    #[test]
    fn error_messages_name_value() {
        let cases = [
            (FleetError::MissingField("thingName"), "thingName"),
            (
                FleetError::FieldTooLong {
                    field: "certificatePem",
                    max: 4096,
                },
                "4096",
            ),
            (FleetError::BufferTooSmall { needed: 777 }, "777"),
            (FleetError::InvalidTemplateName, "A-Z"),
            (
                FleetError::ParameterValueTooLong {
                    key: KeyExcerpt::new("SerialNumber"),
                    max: 512,
                },
                "SerialNumber",
            ),
        ];
        for (error, expected) in cases {
            let message = error.to_string();
            assert!(message.contains(expected), "{message}");
        }
    }
}

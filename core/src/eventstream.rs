//! AWS event-stream frames, the framing of every core-bus message.
//!
//! A frame is, in order: the total length (u32 BE, the whole frame), the
//! headers length (u32 BE), the prelude CRC (CRC-32 of the first 8 bytes),
//! the headers, the payload and the message CRC (CRC-32 of everything before
//! it). Each header is a 1-byte name length, the UTF-8 name, a 1-byte value
//! type and the value. All integers are big endian.

use core::fmt;

/// Maximum frame size the core bus accepts, in bytes (the default
/// `GGL_COREBUS_MAX_MSG_LEN` of Greengrass Lite). A peer rejects larger
/// frames, so this codec neither writes nor reads them.
pub const MAX_FRAME_LEN: usize = 10_000;

/// Length of the prelude: total length, headers length and prelude CRC.
pub const PRELUDE_LEN: usize = 12;

/// Bytes of a frame that are neither headers nor payload: the prelude and the
/// trailing message CRC.
pub const FRAME_OVERHEAD: usize = PRELUDE_LEN + CRC_LEN;

const CRC_LEN: usize = 4;

const TYPE_BOOL_TRUE: u8 = 0;
const TYPE_BOOL_FALSE: u8 = 1;
const TYPE_BYTE: u8 = 2;
const TYPE_INT16: u8 = 3;
const TYPE_INT32: u8 = 4;
const TYPE_INT64: u8 = 5;
const TYPE_BYTES: u8 = 6;
const TYPE_STRING: u8 = 7;
const TYPE_TIMESTAMP: u8 = 8;
const TYPE_UUID: u8 = 9;

/// Lookup table for the reflected CRC-32 polynomial 0xEDB88320 (IEEE 802.3,
/// as used by zlib), one entry per byte value.
const CRC32_TABLE: [u32; 256] = crc32_table();

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
}

/// Computes the CRC-32 (IEEE, zlib polynomial) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// Continues a CRC-32 computation: `crc32_update(crc32(a), b)` equals the
/// CRC-32 of `a` followed by `b`.
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut state = !crc;
    for &byte in bytes {
        let index = ((state ^ u32::from(byte)) & 0xFF) as usize;
        state = CRC32_TABLE[index] ^ (state >> 8);
    }
    !state
}

/// Value of one frame header, tagged on the wire by its value type byte.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeaderValue<'a> {
    /// Boolean (type 0 for true, 1 for false, no value bytes).
    Bool(bool),
    /// Signed byte (type 2).
    Byte(i8),
    /// 16-bit integer (type 3).
    Int16(i16),
    /// 32-bit integer (type 4). The core bus uses it for `type`, `error` and
    /// `accepted`.
    Int32(i32),
    /// 64-bit integer (type 5).
    Int64(i64),
    /// Byte buffer of at most 65,535 bytes (type 6).
    Bytes(&'a [u8]),
    /// UTF-8 string of at most 65,535 bytes (type 7). The core bus uses it
    /// for `method`.
    String(&'a str),
    /// Milliseconds since the Unix epoch (type 8).
    Timestamp(i64),
    /// UUID as 16 raw bytes (type 9).
    Uuid([u8; 16]),
}

impl HeaderValue<'_> {
    /// Returns the wire type byte of this value.
    pub fn type_byte(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => TYPE_BOOL_TRUE,
            HeaderValue::Bool(false) => TYPE_BOOL_FALSE,
            HeaderValue::Byte(_) => TYPE_BYTE,
            HeaderValue::Int16(_) => TYPE_INT16,
            HeaderValue::Int32(_) => TYPE_INT32,
            HeaderValue::Int64(_) => TYPE_INT64,
            HeaderValue::Bytes(_) => TYPE_BYTES,
            HeaderValue::String(_) => TYPE_STRING,
            HeaderValue::Timestamp(_) => TYPE_TIMESTAMP,
            HeaderValue::Uuid(_) => TYPE_UUID,
        }
    }

    /// Returns the name of the value type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Bool(_) => "bool",
            HeaderValue::Byte(_) => "byte",
            HeaderValue::Int16(_) => "int16",
            HeaderValue::Int32(_) => "int32",
            HeaderValue::Int64(_) => "int64",
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::String(_) => "string",
            HeaderValue::Timestamp(_) => "timestamp",
            HeaderValue::Uuid(_) => "uuid",
        }
    }

    /// Returns the number of bytes the value occupies after its type byte.
    fn encoded_len(&self) -> usize {
        match self {
            HeaderValue::Bool(_) => 0,
            HeaderValue::Byte(_) => 1,
            HeaderValue::Int16(_) => 2,
            HeaderValue::Int32(_) => 4,
            HeaderValue::Int64(_) | HeaderValue::Timestamp(_) => 8,
            HeaderValue::Bytes(bytes) => 2 + bytes.len(),
            HeaderValue::String(text) => 2 + text.len(),
            HeaderValue::Uuid(_) => 16,
        }
    }
}

/// One frame header: a name and a typed value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header<'a> {
    /// Header name, at most 255 bytes of UTF-8.
    pub name: &'a str,
    /// Header value.
    pub value: HeaderValue<'a>,
}

impl Header<'_> {
    /// Returns the number of bytes the header occupies in a frame.
    pub fn encoded_len(&self) -> usize {
        1 + self.name.len() + 1 + self.value.encoded_len()
    }
}

/// Error from encoding or decoding a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 12 bytes were given where a prelude was expected.
    Truncated,
    /// The frame length exceeds [`MAX_FRAME_LEN`].
    TooLarge {
        /// Frame length in bytes.
        len: usize,
    },
    /// The declared total length is below the 16-byte minimum.
    TooShort {
        /// Declared total length in bytes.
        len: usize,
    },
    /// The declared total length differs from the number of bytes given.
    LengthMismatch {
        /// Total length from the prelude.
        declared: usize,
        /// Number of bytes given.
        actual: usize,
    },
    /// The prelude CRC does not match the first 8 bytes.
    PreludeCrc {
        /// CRC stored in the frame.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
    /// The message CRC does not match the frame contents.
    MessageCrc {
        /// CRC stored in the frame.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
    /// The declared headers length does not fit in the declared total length.
    HeadersOverrun,
    /// A header runs past the end of the headers section.
    HeaderTruncated,
    /// A header has a value type byte other than 0 to 9.
    UnknownHeaderType(u8),
    /// A header name is not valid UTF-8.
    HeaderNameNotUtf8,
    /// A string header value is not valid UTF-8.
    HeaderStringNotUtf8,
    /// A header name is longer than 255 bytes, so it cannot be encoded.
    HeaderNameTooLong {
        /// Name length in bytes.
        len: usize,
    },
    /// A string or byte header value is longer than 65,535 bytes, so it
    /// cannot be encoded.
    HeaderValueTooLong {
        /// Value length in bytes.
        len: usize,
    },
    /// The output buffer is too small for the frame.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
    /// The payload writer returned a length larger than the payload area it
    /// was given.
    PayloadLenInvalid {
        /// Length returned by the payload writer.
        len: usize,
        /// Size of the payload area.
        available: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Truncated => write!(
                f,
                "event-stream frame truncated: fewer than {PRELUDE_LEN} prelude bytes; read the whole prelude first"
            ),
            FrameError::TooLarge { len } => write!(
                f,
                "event-stream frame of {len} bytes exceeds the core-bus maximum of {MAX_FRAME_LEN} bytes; a peer that sends it does not follow the core-bus protocol, and a value this large does not fit a request"
            ),
            FrameError::TooShort { len } => write!(
                f,
                "event-stream frame declares a total length of {len} bytes, below the minimum of {FRAME_OVERHEAD}; the peer sent a corrupt frame"
            ),
            FrameError::LengthMismatch { declared, actual } => write!(
                f,
                "event-stream frame declares {declared} bytes but {actual} bytes were given; pass exactly one whole frame"
            ),
            FrameError::PreludeCrc { expected, actual } => write!(
                f,
                "event-stream prelude CRC mismatch: frame has {expected:#010x}, computed {actual:#010x}; the stream is corrupt or out of sync"
            ),
            FrameError::MessageCrc { expected, actual } => write!(
                f,
                "event-stream message CRC mismatch: frame has {expected:#010x}, computed {actual:#010x}; the frame is corrupt"
            ),
            FrameError::HeadersOverrun => write!(
                f,
                "event-stream headers length exceeds the frame length; the peer sent a corrupt frame"
            ),
            FrameError::HeaderTruncated => write!(
                f,
                "event-stream header runs past the end of the headers section; the peer sent a corrupt frame"
            ),
            FrameError::UnknownHeaderType(value_type) => write!(
                f,
                "event-stream header has unknown value type {value_type} (valid: 0 to 9); the peer sent a corrupt frame"
            ),
            FrameError::HeaderNameNotUtf8 => write!(
                f,
                "event-stream header name is not valid UTF-8; the peer sent a corrupt frame"
            ),
            FrameError::HeaderStringNotUtf8 => write!(
                f,
                "event-stream string header value is not valid UTF-8; the peer sent a corrupt frame"
            ),
            FrameError::HeaderNameTooLong { len } => write!(
                f,
                "event-stream header name of {len} bytes exceeds the maximum of 255 bytes; use a shorter name"
            ),
            FrameError::HeaderValueTooLong { len } => write!(
                f,
                "event-stream header value of {len} bytes exceeds the maximum of 65535 bytes; use a shorter value"
            ),
            FrameError::BufferTooSmall { needed } => write!(
                f,
                "output buffer too small for the event-stream frame: {needed} bytes needed; pass a larger buffer"
            ),
            FrameError::PayloadLenInvalid { len, available } => write!(
                f,
                "payload writer returned length {len} but its area holds only {available} bytes; fix the payload writer"
            ),
        }
    }
}

fn read_u32_be(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let chunk: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(chunk))
}

/// Validates a prelude and returns the total frame length it declares.
///
/// Only the first [`PRELUDE_LEN`] bytes of `prelude` are read. It checks the
/// prelude CRC, that the total length is between [`FRAME_OVERHEAD`] and
/// [`MAX_FRAME_LEN`], and that the headers fit. A stream reader reads 12
/// bytes, calls this, and then reads the rest of the frame.
pub fn frame_len(prelude: &[u8]) -> Result<usize, FrameError> {
    let prelude = prelude.get(..PRELUDE_LEN).ok_or(FrameError::Truncated)?;
    let (Some(total), Some(headers_len), Some(expected)) = (
        read_u32_be(prelude, 0),
        read_u32_be(prelude, 4),
        read_u32_be(prelude, 8),
    ) else {
        return Err(FrameError::Truncated);
    };
    let actual = crc32(prelude.get(..8).ok_or(FrameError::Truncated)?);
    if expected != actual {
        return Err(FrameError::PreludeCrc { expected, actual });
    }
    let total = total as usize;
    if total < FRAME_OVERHEAD {
        return Err(FrameError::TooShort { len: total });
    }
    if total > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: total });
    }
    if headers_len as usize > total - FRAME_OVERHEAD {
        return Err(FrameError::HeadersOverrun);
    }
    Ok(total)
}

/// A decoded frame borrowing the bytes it was decoded from.
///
/// Only [`decode_frame`] creates one, so its headers are known to be valid.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    headers: &'a [u8],
    /// Payload bytes, empty when the frame has none.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Returns an iterator over the headers in wire order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { rest: self.headers }
    }

    /// Returns the value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.headers()
            .find(|header| header.name == name)
            .map(|header| header.value)
    }

    /// Returns the raw bytes of the headers section.
    pub fn header_bytes(&self) -> &'a [u8] {
        self.headers
    }
}

/// Iterator over the headers of a [`Frame`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // `decode_frame` validated these headers, so parsing cannot fail here.
        // Ending the iteration is the fallback that needs no panic.
        match parse_header(self.rest) {
            Ok((header, rest)) => {
                self.rest = rest;
                Some(header)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

fn take(bytes: &[u8], count: usize) -> Result<(&[u8], &[u8]), FrameError> {
    if bytes.len() < count {
        return Err(FrameError::HeaderTruncated);
    }
    Ok(bytes.split_at(count))
}

fn take_array<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), FrameError> {
    let (head, rest) = take(bytes, N)?;
    let array = head.try_into().map_err(|_| FrameError::HeaderTruncated)?;
    Ok((array, rest))
}

/// Parses one header at the start of `bytes` and returns it with the bytes
/// after it.
fn parse_header(bytes: &[u8]) -> Result<(Header<'_>, &[u8]), FrameError> {
    let ([name_len], rest) = take_array::<1>(bytes)?;
    let (name, rest) = take(rest, usize::from(name_len))?;
    let name = core::str::from_utf8(name).map_err(|_| FrameError::HeaderNameNotUtf8)?;
    let ([value_type], rest) = take_array::<1>(rest)?;
    let (value, rest) = match value_type {
        TYPE_BOOL_TRUE => (HeaderValue::Bool(true), rest),
        TYPE_BOOL_FALSE => (HeaderValue::Bool(false), rest),
        TYPE_BYTE => {
            let (raw, rest) = take_array::<1>(rest)?;
            (HeaderValue::Byte(i8::from_be_bytes(raw)), rest)
        }
        TYPE_INT16 => {
            let (raw, rest) = take_array::<2>(rest)?;
            (HeaderValue::Int16(i16::from_be_bytes(raw)), rest)
        }
        TYPE_INT32 => {
            let (raw, rest) = take_array::<4>(rest)?;
            (HeaderValue::Int32(i32::from_be_bytes(raw)), rest)
        }
        TYPE_INT64 => {
            let (raw, rest) = take_array::<8>(rest)?;
            (HeaderValue::Int64(i64::from_be_bytes(raw)), rest)
        }
        TYPE_BYTES | TYPE_STRING => {
            let (raw_len, rest) = take_array::<2>(rest)?;
            let (data, rest) = take(rest, usize::from(u16::from_be_bytes(raw_len)))?;
            if value_type == TYPE_BYTES {
                (HeaderValue::Bytes(data), rest)
            } else {
                let text =
                    core::str::from_utf8(data).map_err(|_| FrameError::HeaderStringNotUtf8)?;
                (HeaderValue::String(text), rest)
            }
        }
        TYPE_TIMESTAMP => {
            let (raw, rest) = take_array::<8>(rest)?;
            (HeaderValue::Timestamp(i64::from_be_bytes(raw)), rest)
        }
        TYPE_UUID => {
            let (raw, rest) = take_array::<16>(rest)?;
            (HeaderValue::Uuid(raw), rest)
        }
        unknown => return Err(FrameError::UnknownHeaderType(unknown)),
    };
    Ok((Header { name, value }, rest))
}

/// Decodes exactly one frame that fills `bytes` entirely.
///
/// It validates the prelude, the total length against `bytes.len()`, both
/// CRCs and every header. An unknown header value type is an error.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    let total = frame_len(bytes)?;
    if total != bytes.len() {
        return Err(FrameError::LengthMismatch {
            declared: total,
            actual: bytes.len(),
        });
    }
    let crc_offset = total - CRC_LEN;
    let expected = read_u32_be(bytes, crc_offset).ok_or(FrameError::Truncated)?;
    let body = bytes.get(..crc_offset).ok_or(FrameError::Truncated)?;
    let actual = crc32(body);
    if expected != actual {
        return Err(FrameError::MessageCrc { expected, actual });
    }

    let headers_len = read_u32_be(bytes, 4).ok_or(FrameError::Truncated)? as usize;
    let headers_end = PRELUDE_LEN + headers_len;
    let headers = bytes
        .get(PRELUDE_LEN..headers_end)
        .ok_or(FrameError::HeadersOverrun)?;
    let payload = bytes
        .get(headers_end..crc_offset)
        .ok_or(FrameError::HeadersOverrun)?;

    let mut rest = headers;
    while !rest.is_empty() {
        let (_, after) = parse_header(rest)?;
        rest = after;
    }
    Ok(Frame { headers, payload })
}

fn put(out: &mut [u8], offset: &mut usize, bytes: &[u8]) -> Result<(), FrameError> {
    let end = *offset + bytes.len();
    let target = out
        .get_mut(*offset..end)
        .ok_or(FrameError::BufferTooSmall { needed: end })?;
    target.copy_from_slice(bytes);
    *offset = end;
    Ok(())
}

/// Writes `headers` starting at `out[offset]` and returns the offset after them.
fn write_headers(
    headers: &[Header<'_>],
    out: &mut [u8],
    mut offset: usize,
) -> Result<usize, FrameError> {
    for header in headers {
        let name_len =
            u8::try_from(header.name.len()).map_err(|_| FrameError::HeaderNameTooLong {
                len: header.name.len(),
            })?;
        put(out, &mut offset, &[name_len])?;
        put(out, &mut offset, header.name.as_bytes())?;
        put(out, &mut offset, &[header.value.type_byte()])?;
        match header.value {
            HeaderValue::Bool(_) => {}
            HeaderValue::Byte(value) => put(out, &mut offset, &value.to_be_bytes())?,
            HeaderValue::Int16(value) => put(out, &mut offset, &value.to_be_bytes())?,
            HeaderValue::Int32(value) => put(out, &mut offset, &value.to_be_bytes())?,
            HeaderValue::Int64(value) | HeaderValue::Timestamp(value) => {
                put(out, &mut offset, &value.to_be_bytes())?
            }
            HeaderValue::Bytes(data) => put_u16_prefixed(out, &mut offset, data)?,
            HeaderValue::String(text) => put_u16_prefixed(out, &mut offset, text.as_bytes())?,
            HeaderValue::Uuid(value) => put(out, &mut offset, &value)?,
        }
    }
    Ok(offset)
}

fn put_u16_prefixed(out: &mut [u8], offset: &mut usize, data: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(data.len())
        .map_err(|_| FrameError::HeaderValueTooLong { len: data.len() })?;
    put(out, offset, &len.to_be_bytes())?;
    put(out, offset, data)
}

/// Writes a whole frame into `out` and returns its length.
///
/// `write_payload` receives the payload area (everything between the headers
/// and the room for the message CRC), writes the payload at its start and
/// returns the payload length. This avoids a second buffer for the payload.
pub fn encode_frame_with<E: From<FrameError>>(
    headers: &[Header<'_>],
    out: &mut [u8],
    write_payload: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<usize, E> {
    let mut headers_len = 0usize;
    for header in headers {
        if header.name.len() > usize::from(u8::MAX) {
            return Err(FrameError::HeaderNameTooLong {
                len: header.name.len(),
            }
            .into());
        }
        headers_len += header.encoded_len();
    }
    let payload_start = PRELUDE_LEN + headers_len;
    let minimum = payload_start + CRC_LEN;
    if minimum > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: minimum }.into());
    }
    if out.len() < minimum {
        return Err(FrameError::BufferTooSmall { needed: minimum }.into());
    }
    let end = write_headers(headers, out, PRELUDE_LEN)?;
    debug_assert_eq!(end, payload_start);

    let payload_end_max = out.len() - CRC_LEN;
    let area = out
        .get_mut(payload_start..payload_end_max)
        .ok_or(FrameError::BufferTooSmall { needed: minimum })?;
    let available = area.len();
    let payload_len = write_payload(area)?;
    if payload_len > available {
        return Err(FrameError::PayloadLenInvalid {
            len: payload_len,
            available,
        }
        .into());
    }

    let total = minimum + payload_len;
    if total > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: total }.into());
    }
    // Both lengths are at most MAX_FRAME_LEN here, so they fit in u32.
    let mut offset = 0;
    put(out, &mut offset, &(total as u32).to_be_bytes())?;
    put(out, &mut offset, &(headers_len as u32).to_be_bytes())?;
    let prelude_crc = crc32(
        out.get(..8)
            .ok_or(FrameError::BufferTooSmall { needed: total })?,
    );
    put(out, &mut offset, &prelude_crc.to_be_bytes())?;

    let crc_offset = total - CRC_LEN;
    let message_crc = crc32(
        out.get(..crc_offset)
            .ok_or(FrameError::BufferTooSmall { needed: total })?,
    );
    let mut offset = crc_offset;
    put(out, &mut offset, &message_crc.to_be_bytes())?;
    Ok(total)
}

/// Writes a whole frame with the given headers and payload into `out` and
/// returns its length.
pub fn encode_frame(
    headers: &[Header<'_>],
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let headers_len: usize = headers.iter().map(Header::encoded_len).sum();
    let total = FRAME_OVERHEAD + headers_len + payload.len();
    if total > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: total });
    }
    if out.len() < total {
        return Err(FrameError::BufferTooSmall { needed: total });
    }
    encode_frame_with(headers, out, |area: &mut [u8]| {
        let target = area
            .get_mut(..payload.len())
            .ok_or(FrameError::BufferTooSmall { needed: total })?;
        target.copy_from_slice(payload);
        Ok(payload.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_HEADERS: [Header<'static>; 2] = [
        Header {
            name: "method",
            value: HeaderValue::String("read"),
        },
        Header {
            name: "type",
            value: HeaderValue::Int32(1),
        },
    ];

    fn encode_sample(out: &mut [u8]) -> usize {
        encode_frame(&REQUEST_HEADERS, &[0x06, 0, 0, 0, 0], out).unwrap()
    }

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut out = [0u8; 128];
        let len = encode_sample(&mut out);
        let frame = decode_frame(&out[..len]).unwrap();
        assert_eq!(frame.payload, &[0x06, 0, 0, 0, 0]);
        assert_eq!(frame.header("method"), Some(HeaderValue::String("read")));
        assert_eq!(frame.header("type"), Some(HeaderValue::Int32(1)));
        assert_eq!(frame.header("missing"), None);
        assert_eq!(frame.headers().count(), 2);
        assert_eq!(frame_len(&out[..PRELUDE_LEN]), Ok(len));
    }

    #[test]
    fn decode_rejects_oversized_frame() {
        let big = [0u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            decode_frame(&big).map(|_| ()),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1
            })
        );
    }

    #[test]
    fn frame_len_rejects_declared_oversize() {
        let mut prelude = [0u8; PRELUDE_LEN];
        prelude[..4].copy_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        let crc = crc32(&prelude[..8]);
        prelude[8..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            frame_len(&prelude),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1
            })
        );
    }

    #[test]
    fn encode_rejects_oversized_payload() {
        let payload = [0u8; MAX_FRAME_LEN];
        let mut out = [0u8; MAX_FRAME_LEN + 100];
        assert_eq!(
            encode_frame(&[], &payload, &mut out),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + FRAME_OVERHEAD
            })
        );
    }

    #[test]
    fn decode_rejects_bad_prelude_crc() {
        let mut out = [0u8; 128];
        let len = encode_sample(&mut out);
        out[8] ^= 0xFF;
        assert!(matches!(
            decode_frame(&out[..len]),
            Err(FrameError::PreludeCrc { .. })
        ));
    }

    #[test]
    fn decode_rejects_bad_message_crc() {
        let mut out = [0u8; 128];
        let len = encode_sample(&mut out);
        out[len - 5] ^= 0x01;
        assert!(matches!(
            decode_frame(&out[..len]),
            Err(FrameError::MessageCrc { .. })
        ));
    }

    #[test]
    fn decode_rejects_length_mismatch() {
        let mut out = [0u8; 128];
        let len = encode_sample(&mut out);
        assert_eq!(
            decode_frame(&out[..len + 1]).map(|_| ()),
            Err(FrameError::LengthMismatch {
                declared: len,
                actual: len + 1
            })
        );
        assert_eq!(
            decode_frame(&out[..len - 1]).map(|_| ()),
            Err(FrameError::LengthMismatch {
                declared: len,
                actual: len - 1
            })
        );
        assert_eq!(
            decode_frame(&out[..5]).map(|_| ()),
            Err(FrameError::Truncated)
        );
    }

    /// Builds a frame around raw header bytes with valid CRCs.
    fn frame_with_raw_headers(raw_headers: &[u8], out: &mut [u8]) -> usize {
        let total = FRAME_OVERHEAD + raw_headers.len();
        out[..4].copy_from_slice(&(total as u32).to_be_bytes());
        out[4..8].copy_from_slice(&(raw_headers.len() as u32).to_be_bytes());
        let crc = crc32(&out[..8]);
        out[8..12].copy_from_slice(&crc.to_be_bytes());
        out[12..12 + raw_headers.len()].copy_from_slice(raw_headers);
        let crc = crc32(&out[..total - 4]);
        out[total - 4..total].copy_from_slice(&crc.to_be_bytes());
        total
    }

    #[test]
    fn decode_rejects_unknown_header_type() {
        let mut out = [0u8; 64];
        let len = frame_with_raw_headers(&[1, b'x', 10], &mut out);
        assert_eq!(
            decode_frame(&out[..len]).map(|_| ()),
            Err(FrameError::UnknownHeaderType(10))
        );
    }

    #[test]
    fn decode_rejects_bad_headers() {
        let mut out = [0u8; 64];
        let len = frame_with_raw_headers(&[1, b'x', TYPE_INT32, 0, 0], &mut out);
        assert_eq!(
            decode_frame(&out[..len]).map(|_| ()),
            Err(FrameError::HeaderTruncated)
        );
        let len = frame_with_raw_headers(&[1, 0xFF, TYPE_BOOL_TRUE], &mut out);
        assert_eq!(
            decode_frame(&out[..len]).map(|_| ()),
            Err(FrameError::HeaderNameNotUtf8)
        );
        let len = frame_with_raw_headers(&[1, b'x', TYPE_STRING, 0, 1, 0xC0], &mut out);
        assert_eq!(
            decode_frame(&out[..len]).map(|_| ()),
            Err(FrameError::HeaderStringNotUtf8)
        );
    }

    #[test]
    fn frame_len_rejects_headers_overrun() {
        let mut prelude = [0u8; PRELUDE_LEN];
        prelude[..4].copy_from_slice(&20u32.to_be_bytes());
        prelude[4..8].copy_from_slice(&5u32.to_be_bytes());
        let crc = crc32(&prelude[..8]);
        prelude[8..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(frame_len(&prelude), Err(FrameError::HeadersOverrun));
    }

    #[test]
    fn frame_len_rejects_short_total() {
        let mut prelude = [0u8; PRELUDE_LEN];
        prelude[..4].copy_from_slice(&15u32.to_be_bytes());
        let crc = crc32(&prelude[..8]);
        prelude[8..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(frame_len(&prelude), Err(FrameError::TooShort { len: 15 }));
    }

    #[test]
    fn encode_rejects_small_buffer() {
        let mut out = [0u8; 30];
        assert_eq!(
            encode_frame(&REQUEST_HEADERS, &[0x06, 0, 0, 0, 0], &mut out),
            Err(FrameError::BufferTooSmall { needed: 45 })
        );
        let mut tiny = [0u8; 10];
        assert_eq!(
            encode_frame(&[], &[], &mut tiny),
            Err(FrameError::BufferTooSmall { needed: 16 })
        );
    }

    #[test]
    fn encode_rejects_long_header_name() {
        let long = [b'a'; 256];
        let name = core::str::from_utf8(&long).unwrap();
        let headers = [Header {
            name,
            value: HeaderValue::Bool(true),
        }];
        let mut out = [0u8; 512];
        assert_eq!(
            encode_frame(&headers, &[], &mut out),
            Err(FrameError::HeaderNameTooLong { len: 256 })
        );
    }

    #[test]
    fn every_header_type_round_trips() {
        let headers = [
            Header {
                name: "t",
                value: HeaderValue::Bool(true),
            },
            Header {
                name: "f",
                value: HeaderValue::Bool(false),
            },
            Header {
                name: "b",
                value: HeaderValue::Byte(-3),
            },
            Header {
                name: "s",
                value: HeaderValue::Int16(-300),
            },
            Header {
                name: "i",
                value: HeaderValue::Int32(-70_000),
            },
            Header {
                name: "l",
                value: HeaderValue::Int64(-5_000_000_000),
            },
            Header {
                name: "y",
                value: HeaderValue::Bytes(&[0, 1, 0xFF]),
            },
            Header {
                name: "str",
                value: HeaderValue::String("värde"),
            },
            Header {
                name: "ts",
                value: HeaderValue::Timestamp(1_700_000_000_000),
            },
            Header {
                name: "u",
                value: HeaderValue::Uuid([7; 16]),
            },
        ];
        let mut out = [0u8; 256];
        let len = encode_frame(&headers, b"payload", &mut out).unwrap();
        let frame = decode_frame(&out[..len]).unwrap();
        assert!(frame.headers().eq(headers.iter().copied()));
        assert_eq!(frame.payload, b"payload");
    }
}

//! Greengrass core-bus object serialization, the payload of core-bus frames.
//!
//! An object tree is written depth first, little endian. Each object starts
//! with a tag byte: 0 null, 1 boolean (1 byte, 0 or 1), 2 i64 (8 bytes),
//! 3 f64 (8 bytes IEEE-754), 4 buffer (u32 length + bytes, and strings are
//! buffers), 5 list (u32 count, then the items), 6 map (u32 count, then per
//! pair a key as u32 length + bytes without a tag, then the value object).
//!
//! [`decode`] validates the whole tree once, so the [`List`] and [`Map`]
//! views it returns iterate the bytes lazily and never fail.

use core::fmt;

/// Maximum nesting depth, as enforced by Greengrass Lite: a scalar has depth
/// 1, `{"a": 5}` depth 2. A deeper object is an error.
pub const MAX_DEPTH: usize = 15;

const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_I64: u8 = 2;
const TAG_F64: u8 = 3;
const TAG_BUF: u8 = 4;
const TAG_LIST: u8 = 5;
const TAG_MAP: u8 = 6;

/// Smallest encoding of a list item: a tag byte alone (null).
const MIN_ITEM_LEN: usize = 1;
/// Smallest encoding of a map pair: an empty key (4 bytes) and a null value.
const MIN_PAIR_LEN: usize = 5;

/// One decoded object, borrowing the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Object<'a> {
    /// Null (tag 0).
    Null,
    /// Boolean (tag 1).
    Bool(bool),
    /// Signed 64-bit integer (tag 2).
    I64(i64),
    /// 64-bit float (tag 3).
    F64(f64),
    /// Byte buffer (tag 4). Strings are buffers that contain UTF-8.
    Buf(&'a [u8]),
    /// List (tag 5).
    List(List<'a>),
    /// Map (tag 6).
    Map(Map<'a>),
}

impl<'a> Object<'a> {
    /// Returns the bytes of a buffer.
    pub fn as_buf(&self) -> Option<&'a [u8]> {
        match *self {
            Object::Buf(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Returns a buffer as text when it contains valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_buf()
            .and_then(|bytes| core::str::from_utf8(bytes).ok())
    }

    /// Returns the map view of a map.
    pub fn as_map(&self) -> Option<Map<'a>> {
        match *self {
            Object::Map(map) => Some(map),
            _ => None,
        }
    }

    /// Returns the list view of a list.
    pub fn as_list(&self) -> Option<List<'a>> {
        match *self {
            Object::List(list) => Some(list),
            _ => None,
        }
    }

    /// Returns the value of a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Object::Bool(value) => Some(value),
            _ => None,
        }
    }

    /// Returns the value of an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Object::I64(value) => Some(value),
            _ => None,
        }
    }

    /// Returns the value of an f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Object::F64(value) => Some(value),
            _ => None,
        }
    }

    /// Returns true for null.
    pub fn is_null(&self) -> bool {
        matches!(self, Object::Null)
    }

    /// Returns the type name used in Greengrass Lite messages: "null",
    /// "boolean", "i64", "f64", "buffer", "list" or "map".
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Null => "null",
            Object::Bool(_) => "boolean",
            Object::I64(_) => "i64",
            Object::F64(_) => "f64",
            Object::Buf(_) => "buffer",
            Object::List(_) => "list",
            Object::Map(_) => "map",
        }
    }
}

/// A validated list: its item count and the encoded items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct List<'a> {
    count: u32,
    items: &'a [u8],
}

impl<'a> List<'a> {
    /// Returns the number of items.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Returns true when the list has no items.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Returns an iterator over the items in wire order.
    pub fn iter(&self) -> ListIter<'a> {
        ListIter {
            remaining: self.count,
            rest: self.items,
        }
    }

    /// Returns the item at `index`.
    pub fn get(&self, index: usize) -> Option<Object<'a>> {
        self.iter().nth(index)
    }
}

impl<'a> IntoIterator for List<'a> {
    type Item = Object<'a>;
    type IntoIter = ListIter<'a>;

    fn into_iter(self) -> ListIter<'a> {
        self.iter()
    }
}

/// Iterator over the items of a [`List`].
#[derive(Debug, Clone)]
pub struct ListIter<'a> {
    remaining: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Object<'a>;

    fn next(&mut self) -> Option<Object<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // `decode` validated these bytes including their depth, so parsing
        // cannot fail and the depth passed here does not matter.
        match parse_object(self.rest, 1) {
            Ok((object, rest)) => {
                self.rest = rest;
                Some(object)
            }
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// A validated map: its pair count and the encoded pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Map<'a> {
    count: u32,
    pairs: &'a [u8],
}

impl<'a> Map<'a> {
    /// Returns the number of key/value pairs.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Returns true when the map has no pairs.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Returns an iterator over the pairs in wire order.
    pub fn iter(&self) -> MapIter<'a> {
        MapIter {
            remaining: self.count,
            rest: self.pairs,
        }
    }

    /// Returns the value of the first pair whose key equals `key`.
    pub fn get(&self, key: &str) -> Option<Object<'a>> {
        self.get_bytes(key.as_bytes())
    }

    /// Returns the value of the first pair whose key equals the bytes `key`.
    pub fn get_bytes(&self, key: &[u8]) -> Option<Object<'a>> {
        self.iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }
}

impl<'a> IntoIterator for Map<'a> {
    type Item = (&'a [u8], Object<'a>);
    type IntoIter = MapIter<'a>;

    fn into_iter(self) -> MapIter<'a> {
        self.iter()
    }
}

/// Iterator over the pairs of a [`Map`].
#[derive(Debug, Clone)]
pub struct MapIter<'a> {
    remaining: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for MapIter<'a> {
    type Item = (&'a [u8], Object<'a>);

    fn next(&mut self) -> Option<(&'a [u8], Object<'a>)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let parsed = parse_len_prefixed(self.rest, 0)
            .and_then(|(key, rest)| parse_object(rest, 1).map(|(value, rest)| (key, value, rest)));
        match parsed {
            Ok((key, value, rest)) => {
                self.rest = rest;
                Some((key, value))
            }
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// Error from decoding or encoding an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectError {
    /// The input ends inside a fixed-size field.
    Truncated {
        /// Offset of the field in the input.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
    },
    /// A tag byte other than 0 to 6.
    UnknownTag(u8),
    /// The object nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes follow the root object.
    TrailingBytes {
        /// Number of bytes after the root object.
        count: usize,
    },
    /// A buffer length, key length or item count runs past the end of the
    /// input.
    LengthOverrun,
    /// A boolean body byte other than 0 or 1.
    InvalidBool(u8),
    /// The output buffer is too small.
    BufferTooSmall {
        /// Total bytes needed so far, including the write that failed.
        needed: usize,
    },
    /// A buffer, key or collection is longer than the u32 length field allows.
    TooLong {
        /// Length in bytes or items.
        len: usize,
    },
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ObjectError::Truncated { offset, needed } => write!(
                f,
                "core-bus object truncated: {needed} bytes needed at offset {offset}; the payload is incomplete"
            ),
            ObjectError::UnknownTag(tag) => write!(
                f,
                "core-bus object has unknown tag {tag} (valid: 0 to 6); the payload is corrupt"
            ),
            ObjectError::TooDeep => write!(
                f,
                "core-bus object nests deeper than {MAX_DEPTH} levels; flatten the data"
            ),
            ObjectError::TrailingBytes { count } => write!(
                f,
                "{count} trailing bytes after the core-bus object; the payload must hold exactly one object"
            ),
            ObjectError::LengthOverrun => write!(
                f,
                "core-bus object length or count runs past the end of the payload; the payload is corrupt"
            ),
            ObjectError::InvalidBool(value) => write!(
                f,
                "core-bus boolean has invalid value {value} (valid: 0 or 1); the payload is corrupt"
            ),
            ObjectError::BufferTooSmall { needed } => write!(
                f,
                "output buffer too small for the core-bus object: {needed} bytes needed; pass a larger buffer"
            ),
            ObjectError::TooLong { len } => write!(
                f,
                "core-bus buffer or collection of length {len} exceeds the u32 limit; send less data"
            ),
        }
    }
}

/// Reads `N` bytes at the start of `bytes`. The `offset` of `bytes` in the
/// whole input goes into the error.
fn take_array<const N: usize>(
    bytes: &[u8],
    offset: usize,
) -> Result<([u8; N], &[u8]), ObjectError> {
    let truncated = ObjectError::Truncated { offset, needed: N };
    let head = bytes.get(..N).ok_or(truncated)?;
    let rest = bytes.get(N..).ok_or(truncated)?;
    let array = head.try_into().map_err(|_| truncated)?;
    Ok((array, rest))
}

fn parse_u32(bytes: &[u8], offset: usize) -> Result<(u32, &[u8]), ObjectError> {
    let (raw, rest) = take_array::<4>(bytes, offset)?;
    Ok((u32::from_le_bytes(raw), rest))
}

/// Parses a u32 length and that many bytes.
fn parse_len_prefixed(bytes: &[u8], offset: usize) -> Result<(&[u8], &[u8]), ObjectError> {
    let (len, rest) = parse_u32(bytes, offset)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(ObjectError::LengthOverrun);
    }
    Ok(rest.split_at(len))
}

/// Parses one object at the start of `bytes` and validates its subtree.
/// The root object has `depth` 1.
fn parse_object(bytes: &[u8], depth: usize) -> Result<(Object<'_>, &[u8]), ObjectError> {
    parse_object_at(bytes, depth, 0)
}

fn parse_object_at(
    bytes: &[u8],
    depth: usize,
    offset: usize,
) -> Result<(Object<'_>, &[u8]), ObjectError> {
    if depth > MAX_DEPTH {
        return Err(ObjectError::TooDeep);
    }
    let ([tag], body) = take_array::<1>(bytes, offset)?;
    let body_offset = offset + 1;
    match tag {
        TAG_NULL => Ok((Object::Null, body)),
        TAG_BOOL => {
            let ([value], rest) = take_array::<1>(body, body_offset)?;
            match value {
                0 => Ok((Object::Bool(false), rest)),
                1 => Ok((Object::Bool(true), rest)),
                other => Err(ObjectError::InvalidBool(other)),
            }
        }
        TAG_I64 => {
            let (raw, rest) = take_array::<8>(body, body_offset)?;
            Ok((Object::I64(i64::from_le_bytes(raw)), rest))
        }
        TAG_F64 => {
            let (raw, rest) = take_array::<8>(body, body_offset)?;
            Ok((Object::F64(f64::from_le_bytes(raw)), rest))
        }
        TAG_BUF => {
            let (data, rest) = parse_len_prefixed(body, body_offset)?;
            Ok((Object::Buf(data), rest))
        }
        TAG_LIST => {
            let (count, items) = parse_u32(body, body_offset)?;
            check_count(count, MIN_ITEM_LEN, items.len())?;
            let mut rest = items;
            for _ in 0..count {
                let item_offset = offset_of(bytes, rest, offset);
                let (_, after) = parse_object_at(rest, depth + 1, item_offset)?;
                rest = after;
            }
            let used = items.len() - rest.len();
            let items = items.get(..used).ok_or(ObjectError::LengthOverrun)?;
            Ok((Object::List(List { count, items }), rest))
        }
        TAG_MAP => {
            let (count, pairs) = parse_u32(body, body_offset)?;
            check_count(count, MIN_PAIR_LEN, pairs.len())?;
            let mut rest = pairs;
            for _ in 0..count {
                let key_offset = offset_of(bytes, rest, offset);
                let (key, after_key) = parse_len_prefixed(rest, key_offset)?;
                let value_offset = key_offset + 4 + key.len();
                let (_, after) = parse_object_at(after_key, depth + 1, value_offset)?;
                rest = after;
            }
            let used = pairs.len() - rest.len();
            let pairs = pairs.get(..used).ok_or(ObjectError::LengthOverrun)?;
            Ok((Object::Map(Map { count, pairs }), rest))
        }
        other => Err(ObjectError::UnknownTag(other)),
    }
}

/// Rejects a count that cannot fit in the remaining bytes, before looping
/// over it, so that a corrupt count fails fast.
fn check_count(count: u32, min_len: usize, available: usize) -> Result<(), ObjectError> {
    match (count as usize).checked_mul(min_len) {
        Some(needed) if needed <= available => Ok(()),
        _ => Err(ObjectError::LengthOverrun),
    }
}

/// Returns the offset in the whole input of `rest`, a suffix of `whole`,
/// which starts at `whole_offset`.
fn offset_of(whole: &[u8], rest: &[u8], whole_offset: usize) -> usize {
    whole_offset + whole.len().saturating_sub(rest.len())
}

/// Decodes and fully validates one object filling `bytes`.
///
/// It checks tags, lengths, booleans, the depth limit, and that no bytes
/// follow the object. Iterators over the returned object never fail.
pub fn decode(bytes: &[u8]) -> Result<Object<'_>, ObjectError> {
    let (object, rest) = parse_object(bytes, 1)?;
    if !rest.is_empty() {
        return Err(ObjectError::TrailingBytes { count: rest.len() });
    }
    Ok(object)
}

/// Streaming object writer into a caller-provided slice.
///
/// Each call writes one tag or key. A list or map header announces its
/// count, and the caller then writes that many items or key/value pairs.
/// A failed call writes nothing, so [`Writer::len`] stays valid.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// Creates a writer that fills `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    /// Returns the number of bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Writes all `parts` or, when they do not fit, nothing.
    fn put(&mut self, parts: &[&[u8]]) -> Result<(), ObjectError> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let end = self.len + total;
        let target = self
            .buf
            .get_mut(self.len..end)
            .ok_or(ObjectError::BufferTooSmall { needed: end })?;
        let mut offset = 0;
        for part in parts {
            if let Some(slot) = target.get_mut(offset..offset + part.len()) {
                slot.copy_from_slice(part);
            }
            offset += part.len();
        }
        self.len = end;
        Ok(())
    }

    fn length_field(len: usize) -> Result<[u8; 4], ObjectError> {
        u32::try_from(len)
            .map(u32::to_le_bytes)
            .map_err(|_| ObjectError::TooLong { len })
    }

    /// Writes a null.
    pub fn null(&mut self) -> Result<(), ObjectError> {
        self.put(&[&[TAG_NULL]])
    }

    /// Writes a boolean.
    pub fn bool(&mut self, value: bool) -> Result<(), ObjectError> {
        self.put(&[&[TAG_BOOL, u8::from(value)]])
    }

    /// Writes an i64.
    pub fn i64(&mut self, value: i64) -> Result<(), ObjectError> {
        self.put(&[&[TAG_I64], &value.to_le_bytes()])
    }

    /// Writes an f64.
    pub fn f64(&mut self, value: f64) -> Result<(), ObjectError> {
        self.put(&[&[TAG_F64], &value.to_le_bytes()])
    }

    /// Writes a buffer.
    pub fn buf(&mut self, bytes: &[u8]) -> Result<(), ObjectError> {
        let len = Self::length_field(bytes.len())?;
        self.put(&[&[TAG_BUF], &len, bytes])
    }

    /// Writes text as a buffer.
    pub fn str(&mut self, text: &str) -> Result<(), ObjectError> {
        self.buf(text.as_bytes())
    }

    /// Writes a list header. The caller then writes `count` items.
    pub fn list(&mut self, count: u32) -> Result<(), ObjectError> {
        self.put(&[&[TAG_LIST], &count.to_le_bytes()])
    }

    /// Writes a map header. The caller then writes `count` pairs, each a
    /// [`Writer::key`] followed by one value.
    pub fn map(&mut self, count: u32) -> Result<(), ObjectError> {
        self.put(&[&[TAG_MAP], &count.to_le_bytes()])
    }

    /// Writes a map key: u32 length and bytes, without a tag.
    pub fn key(&mut self, key: &[u8]) -> Result<(), ObjectError> {
        let len = Self::length_field(key.len())?;
        self.put(&[&len, key])
    }

    /// Writes a list of buffers, one per entry of `items`.
    pub fn str_list(&mut self, items: &[&str]) -> Result<(), ObjectError> {
        let count =
            u32::try_from(items.len()).map_err(|_| ObjectError::TooLong { len: items.len() })?;
        self.list(count)?;
        for item in items {
            self.str(item)?;
        }
        Ok(())
    }

    /// Re-encodes a decoded object. The result has the same bytes as the
    /// object had on the wire, because the encoding is canonical.
    pub fn object(&mut self, object: &Object<'_>) -> Result<(), ObjectError> {
        match *object {
            Object::Null => self.null(),
            Object::Bool(value) => self.bool(value),
            Object::I64(value) => self.i64(value),
            Object::F64(value) => self.f64(value),
            Object::Buf(bytes) => self.buf(bytes),
            // A decoded list or map holds its validated encoded body, so it is
            // copied as is rather than walked item by item.
            Object::List(list) => self.put(&[&[TAG_LIST], &list.count.to_le_bytes(), list.items]),
            Object::Map(map) => self.put(&[&[TAG_MAP], &map.count.to_le_bytes(), map.pairs]),
        }
    }
}

/// Encodes `object` into `out` and returns the number of bytes written.
pub fn encode(object: &Object<'_>, out: &mut [u8]) -> Result<usize, ObjectError> {
    let mut writer = Writer::new(out);
    writer.object(object)?;
    Ok(writer.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_scalars() {
        assert_eq!(decode(&[0]), Ok(Object::Null));
        assert_eq!(decode(&[1, 1]), Ok(Object::Bool(true)));
        assert_eq!(decode(&[1, 0]), Ok(Object::Bool(false)));
        assert_eq!(decode(&[2, 3, 0, 0, 0, 0, 0, 0, 0]), Ok(Object::I64(3)));
        let mut f = [3u8; 9];
        f[1..].copy_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(decode(&f), Ok(Object::F64(2.5)));
        assert_eq!(
            decode(&[4, 2, 0, 0, 0, b'h', b'i']).unwrap().as_str(),
            Some("hi")
        );
    }

    #[test]
    fn decode_map_and_list() {
        let mut out = [0u8; 128];
        let mut writer = Writer::new(&mut out);
        writer.map(2).unwrap();
        writer.key(b"a").unwrap();
        writer.i64(5).unwrap();
        writer.key(b"l").unwrap();
        writer.str_list(&["x", "y"]).unwrap();
        let len = writer.len();
        let object = decode(&out[..len]).unwrap();
        let map = object.as_map().unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), Some(Object::I64(5)));
        let list = map.get("l").unwrap().as_list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.get(1).unwrap().as_str(), Some("y"));
        assert_eq!(map.get("missing"), None);

        let mut copy = [0u8; 128];
        let copy_len = encode(&object, &mut copy).unwrap();
        assert_eq!(&copy[..copy_len], &out[..len]);
    }

    /// Writes `levels` nested single-item lists around a null.
    fn nested_lists(levels: usize, out: &mut [u8]) -> usize {
        let mut writer = Writer::new(out);
        for _ in 0..levels {
            writer.list(1).unwrap();
        }
        writer.null().unwrap();
        writer.len()
    }

    #[test]
    fn depth_limit() {
        let mut out = [0u8; 128];
        // 14 lists around a scalar is depth 15, the maximum.
        let len = nested_lists(MAX_DEPTH - 1, &mut out);
        assert!(decode(&out[..len]).is_ok());
        // 15 lists around a scalar is depth 16.
        let len = nested_lists(MAX_DEPTH, &mut out);
        assert_eq!(decode(&out[..len]), Err(ObjectError::TooDeep));
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        assert_eq!(
            decode(&[0, 0, 0]),
            Err(ObjectError::TrailingBytes { count: 2 })
        );
    }

    #[test]
    fn decode_rejects_length_past_end() {
        assert_eq!(
            decode(&[4, 5, 0, 0, 0, b'a']),
            Err(ObjectError::LengthOverrun)
        );
        assert_eq!(decode(&[5, 2, 0, 0, 0, 0]), Err(ObjectError::LengthOverrun));
        assert_eq!(
            decode(&[6, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(ObjectError::LengthOverrun)
        );
        assert_eq!(
            decode(&[6, 1, 0, 0, 0, 9, 0, 0, 0, 0]),
            Err(ObjectError::LengthOverrun)
        );
    }

    #[test]
    fn decode_rejects_truncation() {
        assert_eq!(
            decode(&[]),
            Err(ObjectError::Truncated {
                offset: 0,
                needed: 1
            })
        );
        assert_eq!(
            decode(&[2, 0, 0]),
            Err(ObjectError::Truncated {
                offset: 1,
                needed: 8
            })
        );
        assert_eq!(
            decode(&[5, 1, 0, 0, 0, 2]),
            Err(ObjectError::Truncated {
                offset: 6,
                needed: 8
            })
        );
    }

    #[test]
    fn decode_rejects_unknown_tag() {
        assert_eq!(decode(&[7]), Err(ObjectError::UnknownTag(7)));
        assert_eq!(
            decode(&[5, 1, 0, 0, 0, 0xFF]),
            Err(ObjectError::UnknownTag(0xFF))
        );
    }

    #[test]
    fn decode_rejects_invalid_bool() {
        assert_eq!(decode(&[1, 2]), Err(ObjectError::InvalidBool(2)));
    }

    #[test]
    fn writer_rejects_small_buffer() {
        let mut out = [0u8; 6];
        let mut writer = Writer::new(&mut out);
        writer.null().unwrap();
        assert_eq!(
            writer.i64(1),
            Err(ObjectError::BufferTooSmall { needed: 10 })
        );
        assert_eq!(writer.len(), 1);
        assert_eq!(
            writer.buf(b"abcd"),
            Err(ObjectError::BufferTooSmall { needed: 10 })
        );
        writer.bool(true).unwrap();
        assert_eq!(writer.written(), &[0, 1, 1]);
        assert_eq!(
            encode(&Object::Buf(b"0123456789"), &mut out),
            Err(ObjectError::BufferTooSmall { needed: 15 })
        );
    }

    #[test]
    fn type_names() {
        assert_eq!(Object::Null.type_name(), "null");
        assert_eq!(Object::Bool(true).type_name(), "boolean");
        assert_eq!(Object::I64(0).type_name(), "i64");
        assert_eq!(Object::F64(0.0).type_name(), "f64");
        assert_eq!(Object::Buf(b"").type_name(), "buffer");
        assert_eq!(decode(&[5, 0, 0, 0, 0]).unwrap().type_name(), "list");
        assert_eq!(decode(&[6, 0, 0, 0, 0]).unwrap().type_name(), "map");
    }
}

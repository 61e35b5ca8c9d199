//! Fuzzes the core-bus object decoder.
//!
//! An object that decodes must re-encode to the same bytes twice over: with
//! `object::encode`, which copies the validated bodies of lists and maps, and
//! rebuilt item by item through the `Writer`, which checks that the lazy
//! iterators yield every item. Its depth must be within `MAX_DEPTH`, and one
//! byte less of output space must be an error.
#![no_main]

use fleet_provisioning_core::corebus;
use fleet_provisioning_core::object::{self, Object, ObjectError, Writer, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = object::decode(data) else {
        return;
    };
    assert!(
        depth(&value) <= MAX_DEPTH,
        "decoded object exceeds MAX_DEPTH"
    );

    let mut copied = vec![0u8; data.len()];
    let len = object::encode(&value, &mut copied).expect("a decoded object must re-encode");
    assert_eq!(&copied[..len], data, "object::encode output differs");

    let mut rebuilt = vec![0u8; data.len()];
    let mut writer = Writer::new(&mut rebuilt);
    write_item_by_item(&mut writer, &value).expect("a decoded object must rebuild");
    assert_eq!(writer.written(), data, "rebuilt object differs");

    if let Some(short_len) = data.len().checked_sub(1) {
        let mut short = vec![0u8; short_len];
        assert!(matches!(
            object::encode(&value, &mut short),
            Err(ObjectError::BufferTooSmall { .. })
        ));
    }

    let _ = corebus::parse_mqtt_event(&value);
});

/// Returns the nesting depth: 1 for a scalar or an empty collection.
fn depth(value: &Object<'_>) -> usize {
    match value {
        Object::List(list) => 1 + list.iter().map(|item| depth(&item)).max().unwrap_or(0),
        Object::Map(map) => 1 + map.iter().map(|(_, item)| depth(&item)).max().unwrap_or(0),
        _ => 1,
    }
}

fn write_item_by_item(writer: &mut Writer<'_>, value: &Object<'_>) -> Result<(), ObjectError> {
    match value {
        Object::Null => writer.null(),
        Object::Bool(flag) => writer.bool(*flag),
        Object::I64(number) => writer.i64(*number),
        Object::F64(number) => writer.f64(*number),
        Object::Buf(bytes) => writer.buf(bytes),
        Object::List(list) => {
            let items: Vec<Object<'_>> = list.iter().collect();
            assert_eq!(items.len(), list.len(), "list iterator count");
            writer.list(items.len() as u32)?;
            items
                .iter()
                .try_for_each(|item| write_item_by_item(writer, item))
        }
        Object::Map(map) => {
            let pairs: Vec<(&[u8], Object<'_>)> = map.iter().collect();
            assert_eq!(pairs.len(), map.len(), "map iterator count");
            writer.map(pairs.len() as u32)?;
            pairs.iter().try_for_each(|(key, item)| {
                writer.key(key)?;
                write_item_by_item(writer, item)
            })
        }
    }
}

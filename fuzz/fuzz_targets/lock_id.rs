//! Lock ids and record ids from clients: parsing never panics, and what
//! parses prints back to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stocklock::domain::{LockId, RecordKey, Sku};

fuzz_target!(|text: &str| {
    if let Ok(id) = LockId::parse(text, "lock_id") {
        let printed = id.to_string();
        assert_eq!(LockId::parse(&printed, "lock_id").expect("a printed id parses"), id);
    }
    if let Some(record) = RecordKey::parse_id(text) {
        assert_eq!(RecordKey::parse_id(&record.to_string()), Some(record));
    }
    if let Ok(sku) = Sku::parse(text, "sku") {
        assert!(!sku.as_str().contains(['{', '}', '|']), "{text:?} would break a key or an id");
    }
});

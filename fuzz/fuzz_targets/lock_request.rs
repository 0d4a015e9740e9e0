//! Whole requests off the wire: any bytes either fail to decode, or decode
//! to a request whose fields each validate or are refused with the field
//! named; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use stocklock::domain::{Error, Holder, OrderId, Quantity, RecordKey, RequestId, Sku, WarehouseId};
use stocklock::pb;

fn named(result: Result<impl Sized, Error>, field: &str) {
    if let Err(error) = result {
        match error {
            Error::InvalidArgument { field: named, .. } => assert_eq!(named, field),
            other => panic!("{field}: not an argument error: {other:?}"),
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = pb::LockRequest::decode(bytes) {
        named(Sku::parse(&request.sku, "sku"), "sku");
        named(WarehouseId::parse(&request.warehouse_id, "warehouse_id"), "warehouse_id");
        named(Quantity::parse(&request.quantity, "quantity"), "quantity");
        named(OrderId::parse(&request.order_id, "order_id"), "order_id");
        named(Holder::parse(&request.holder, "holder"), "holder");
        named(RequestId::parse(&request.request_id, "request_id"), "request_id");
        if let (Ok(sku), Ok(warehouse)) = (Sku::parse(&request.sku, "sku"), WarehouseId::parse(&request.warehouse_id, "w")) {
            let record = RecordKey::new(sku, warehouse);
            assert_eq!(RecordKey::parse_id(&record.to_string()), Some(record));
        }
    }
    if let Ok(batch) = pb::BatchLockRequest::decode(bytes) {
        for (i, line) in batch.lines.iter().enumerate() {
            let field = format!("lines[{i}].quantity");
            named(Quantity::parse(&line.quantity, &field), &field);
        }
    }
});

//! The hot paths on their own: request validation and decimal scaling, key
//! building, error-to-status mapping, and one real Lock round trip against a
//! local redis-server (started here).
//!
//! `cargo bench --bench hot_paths`

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stocklock::domain::{
    Error, Holder, LockCommand, LockId, LockLine, OrderId, Quantity, RecordKey, RequestId, ScaledStock,
    SetStockCommand, Shortage, Signed, Sku, StockStore, UnitScale, WarehouseId,
};
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::store::redis::{Keys, RedisSettings, RedisStore};

fn validation(c: &mut Criterion) {
    c.bench_function("validate a Lock request's ids and quantity", |b| {
        b.iter(|| {
            let sku = Sku::parse(black_box("SKU-123456"), "sku").unwrap();
            let warehouse = WarehouseId::parse(black_box("WH-EU-1"), "warehouse_id").unwrap();
            let quantity = Quantity::parse(black_box("2.5"), "quantity").unwrap();
            let holder = Holder::parse(black_box("checkout"), "holder").unwrap();
            let request = RequestId::parse(black_box("req-0123456789"), "request_id").unwrap();
            black_box((sku, warehouse, quantity, holder, request))
        })
    });
    c.bench_function("parse a lock id", |b| {
        b.iter(|| LockId::parse(black_box("SKU-123456|WH-EU-1|4711-1a2b3c4d"), "lock_id").unwrap())
    });
    let unit = UnitScale::new(3, "unit_scale").unwrap();
    c.bench_function("decimal to scaled integer", |b| {
        b.iter(|| Signed::parse(black_box("1234.5"), "q").unwrap().to_scaled(unit, "q").unwrap())
    });
}

fn keys(c: &mut Criterion) {
    let keys = Keys::new("sl", 1);
    let record = RecordKey::new(Sku::parse("SKU-123456", "sku").unwrap(), WarehouseId::parse("WH-EU-1", "w").unwrap());
    c.bench_function("build a record's keys", |b| b.iter(|| keys.record(black_box(&record), black_box(7))));
}

fn status_mapping(c: &mut Criterion) {
    let record = RecordKey::new(Sku::parse("SKU-1", "sku").unwrap(), WarehouseId::parse("WH-A", "w").unwrap());
    c.bench_function("map INSUFFICIENT_STOCK to a status with details", |b| {
        b.iter(|| {
            let error = Error::InsufficientStock {
                shortages: vec![Shortage {
                    line: 0,
                    record: record.clone(),
                    requested: "5".into(),
                    available: "2".into(),
                    exists: true,
                }],
            };
            black_box(tonic::Status::from(error))
        })
    });
}

fn lock_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (redis, store) = runtime.block_on(async {
        let redis = EmbeddedRedis::start(Path::new("redis-server")).await.expect("redis-server");
        let settings = RedisSettings {
            topology: stocklock::store::redis::Topology::Standalone { url: redis.url() },
            durability: None,
            timeout: Duration::from_secs(1),
            max_hold: Duration::from_secs(3600),
            retention: Duration::from_secs(600),
            key_prefix: "sl".into(),
            partitions: 1,
            request_id_claims: true,
            audit_max_events: 1000,
            force_unlock_ttl: Duration::from_secs(60),
        };
        let store = RedisStore::connect(&settings).await.unwrap();
        let unit = UnitScale::new(0, "unit_scale").unwrap();
        store
            .set_stock(SetStockCommand {
                record: RecordKey::parse_id("BENCH|WH").unwrap(),
                physical: ScaledStock::parse("9000000000000", unit, "physical").unwrap(),
                reserved: ScaledStock(0),
                in_transit: ScaledStock(0),
                unit_scale: unit,
                source_version: 1,
                request_id: None,
                actor: "bench".into(),
            })
            .await
            .unwrap();
        (redis, store)
    });
    let counter = AtomicU64::new(0);
    let line = LockLine::new(RecordKey::parse_id("BENCH|WH").unwrap(), Quantity::parse("1", "q").unwrap());
    c.bench_function("Lock round trip to Redis (lock.lua)", |b| {
        b.to_async(&runtime).iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let cmd = LockCommand {
                policy: Default::default(),
                lines: vec![line.clone()],
                ttl: Duration::from_secs(60),
                order_id: OrderId::parse("o", "order_id").unwrap(),
                holder: Holder::parse("bench", "holder").unwrap(),
                request_id: RequestId::parse(&format!("bench-{n}"), "request_id").unwrap(),
                batch_id: None,
                session: None,
            };
            let store = &store;
            async move { store.lock(&cmd).await.unwrap() }
        })
    });
    drop(redis);
}

criterion_group!(benches, validation, keys, status_mapping, lock_round_trip);
criterion_main!(benches);

//! Hourly lock-health counters in Redis: one hash per hour,
//! `<warehouse>|<reason>` -> count, so every replica contributes and the
//! figures survive restarts. Counts are batched in memory and written by
//! `crate::workers::lock_health` about once a second, off the request path;
//! a crash loses at most that second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RedisStore;
use crate::domain::{Error, LockHealthCell};

/// One hour in ms.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// Counts not yet written: (hour start ms, warehouse, reason) -> count.
#[derive(Default)]
pub(super) struct Pending(Mutex<HashMap<(i64, String, &'static str), u64>>);

fn hour_now() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    ms - ms.rem_euclid(HOUR_MS)
}

impl Pending {
    pub(super) fn add(&self, outcomes: &[(&str, &'static str)]) {
        let hour = hour_now();
        let mut pending = self.0.lock().expect("lock poisoned");
        for (warehouse, reason) in outcomes {
            *pending.entry((hour, (*warehouse).to_owned(), *reason)).or_default() += 1;
        }
    }

    fn take(&self) -> HashMap<(i64, String, &'static str), u64> {
        std::mem::take(&mut *self.0.lock().expect("lock poisoned"))
    }

    fn put_back(&self, counts: HashMap<(i64, String, &'static str), u64>) {
        let mut pending = self.0.lock().expect("lock poisoned");
        for (key, count) in counts {
            *pending.entry(key).or_default() += count;
        }
    }
}

impl RedisStore {
    /// Writes the pending counts in one round trip; on failure they are
    /// kept for the next flush.
    pub(super) async fn write_lock_outcomes(&self, retention: Duration) -> Result<(), Error> {
        let counts = self.health.take();
        if counts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for ((hour, warehouse, reason), count) in &counts {
            let key = self.keys.lock_health(*hour);
            pipe.hincr(&key, format!("{warehouse}|{reason}"), *count).ignore();
            pipe.pexpire(&key, retention.as_millis() as i64 + HOUR_MS).ignore();
        }
        let written: Result<(), Error> = self.query_pipe(&pipe).await;
        if written.is_err() {
            self.health.put_back(counts);
        }
        written
    }

    pub(super) async fn read_lock_health(
        &self,
        from_ms: i64,
        to_ms: i64,
        warehouse: Option<&str>,
    ) -> Result<Vec<LockHealthCell>, Error> {
        let first = from_ms - from_ms.rem_euclid(HOUR_MS);
        let hours: Vec<i64> = (0..).map(|i| first + i * HOUR_MS).take_while(|h| *h <= to_ms).take(24 * 366).collect();
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for hour in &hours {
            pipe.hgetall(self.keys.lock_health(*hour));
        }
        let mut conn = self.link.conn();
        let hashes: Vec<HashMap<String, u64>> = self.bounded(pipe.query_async(&mut conn)).await?;
        let mut cells = Vec::new();
        for (hour, hash) in hours.iter().zip(hashes) {
            let mut by_warehouse: std::collections::BTreeMap<String, LockHealthCell> = Default::default();
            for (field, count) in hash {
                let Some((wh, reason)) = field.rsplit_once('|') else { continue };
                if warehouse.is_some_and(|w| w != wh) {
                    continue;
                }
                let cell = by_warehouse.entry(wh.to_owned()).or_insert_with(|| LockHealthCell {
                    warehouse: wh.to_owned(),
                    hour_start_ms: *hour,
                    ..Default::default()
                });
                cell.by_reason.insert(reason.to_owned(), count);
            }
            cells.extend(by_warehouse.into_values());
        }
        Ok(cells)
    }
}

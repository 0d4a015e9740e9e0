//! Hourly lock-health counters in Redis: one hash per hour,
//! `<warehouse>|<reason>` -> count, so every replica contributes and the
//! figures survive restarts. Counts are batched in memory and written by
//! `crate::workers::lock_health` about once a second, off the request path;
//! a crash loses at most that second.
//!
//! Hours are Redis's, as every other time of the service: a count is
//! bucketed by this host's clock corrected by its offset from Redis's,
//! which each flush measures (TIME), so replicas whose clocks disagree
//! still count an outcome in the same hour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RedisStore;
use crate::domain::{Error, LockHealthCell};

/// One hour in ms.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// Counts not yet written: (hour start ms, warehouse, reason) -> count;
/// and Redis's clock minus this host's, in ms, as last measured.
#[derive(Default)]
pub(super) struct Pending {
    counts: Mutex<HashMap<(i64, String, &'static str), u64>>,
    redis_ahead_ms: AtomicI64,
}

fn host_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// The start of the hour `host_ms` falls in by a clock `ahead_ms` ahead of this host's.
fn hour_of(host_ms: i64, ahead_ms: i64) -> i64 {
    let ms = host_ms + ahead_ms;
    ms - ms.rem_euclid(HOUR_MS)
}

impl Pending {
    pub(super) fn add(&self, outcomes: &[(&str, &'static str)]) {
        let hour = hour_of(host_ms(), self.redis_ahead_ms.load(Ordering::Relaxed));
        let mut pending = self.counts.lock().expect("lock poisoned");
        for (warehouse, reason) in outcomes {
            *pending.entry((hour, (*warehouse).to_owned(), *reason)).or_default() += 1;
        }
    }

    fn take(&self) -> HashMap<(i64, String, &'static str), u64> {
        std::mem::take(&mut *self.counts.lock().expect("lock poisoned"))
    }

    fn put_back(&self, counts: HashMap<(i64, String, &'static str), u64>) {
        let mut pending = self.counts.lock().expect("lock poisoned");
        for (key, count) in counts {
            *pending.entry(key).or_default() += count;
        }
    }
}

impl RedisStore {
    /// Writes the pending counts in one round trip; on failure they are
    /// kept for the next flush.
    pub(super) async fn write_lock_outcomes(&self, retention: Duration) -> Result<(), Error> {
        // Redis's clock against this host's, halfway through the round trip.
        let sent = host_ms();
        let (secs, micros): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        let midway = sent + (host_ms() - sent) / 2;
        self.health.redis_ahead_ms.store(secs * 1000 + micros / 1000 - midway, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_follow_the_redis_clock() {
        // 10:59:30 on this host, Redis a minute ahead: Redis's 11:00 hour.
        let host = 10 * HOUR_MS + 59 * 60_000 + 30_000;
        assert_eq!(hour_of(host, 0), 10 * HOUR_MS);
        assert_eq!(hour_of(host, 60_000), 11 * HOUR_MS);
        assert_eq!(hour_of(host, -HOUR_MS), 9 * HOUR_MS);
    }
}

//! `lua/get_stock.lua`: records as of now, counting live locks only.

use super::call::Invocation;
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordKey, StockView};

/// Records read per script: each names its 50 keys and may look into its 16
/// lock shards for expired locks, so a long list is read in several calls,
/// none holding Redis for long.
const RECORDS_PER_CALL: usize = 32;

impl RedisStore {
    /// Reads `records`, all in one partition, 32 to a script, the scripts at once.
    pub(super) async fn get_stock_group(&self, records: &[RecordKey]) -> Result<Vec<Option<StockView>>, Error> {
        let chunks =
            futures_util::future::try_join_all(records.chunks(RECORDS_PER_CALL).map(|c| self.get_stock_chunk(c)));
        Ok(chunks.await?.into_iter().flatten().collect())
    }

    async fn get_stock_chunk(&self, records: &[RecordKey]) -> Result<Vec<Option<StockView>>, Error> {
        let mut inv = Invocation::new(&scripts::GET_STOCK);
        for record in records {
            self.add_whole_record(&mut inv, record);
        }
        let mut reply = self.run_script("get_stock", &inv).await?;
        let mut views = Vec::with_capacity(records.len());
        for record in records {
            let exists = reply.text()? == "1";
            views.push(if exists { Some(reply.record(record.clone())?) } else { None });
        }
        Ok(views)
    }
}

//! `lua/get_stock.lua`: records as of now, counting live locks only.

use super::call::Invocation;
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordKey, StockView};

impl RedisStore {
    /// Reads `records`, all in one partition, in one script.
    pub(super) async fn get_stock_group(&self, records: &[RecordKey]) -> Result<Vec<Option<StockView>>, Error> {
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

//! Behind the API: raw connections to the service's Redis.

use super::*;

/// Appends an entry to a stream of the service's Redis.
pub async fn xadd(svc: &TestService, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut conn = svc.redis_conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// The entries of the ingestion dead-letter stream (the stream channel's
/// and the binlog follower's), as field maps, oldest first.
pub async fn dead_letters(svc: &TestService) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = svc.redis_conn().await;
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg("{sl:ingest}:dead").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    entries.into_iter().map(|(_, flat)| flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()).collect()
}

/// A raw connection to one Redis or to a cluster.
#[derive(Clone)]
pub enum RawConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

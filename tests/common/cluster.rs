//! A Redis Cluster per test.

use super::*;

/// A Redis Cluster of `redis-server --cluster-enabled yes` nodes on
/// loopback, made with `redis-cli --cluster create`; stopped on drop.
pub struct Cluster {
    pub nodes: Vec<EmbeddedRedis>,
}

impl Cluster {
    /// `primaries` primaries with the slots split evenly, each with
    /// `replicas` replicas that the cluster promotes when it fails.
    pub async fn start(primaries: usize, replicas: usize) -> Self {
        let mut nodes = Vec::with_capacity(primaries * (1 + replicas));
        while nodes.len() < primaries * (1 + replicas) {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = format!("stocklock-nodes-{port}-{}.conf", std::process::id());
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "2000",
                // Replicas sync at once, not after the default 5 s wait for company.
                "--repl-diskless-sync-delay",
                "0",
            ];
            // A port taken between the probe and the bind: try another.
            if let Ok(node) = EmbeddedRedis::start_on(Path::new("redis-server"), port, &args).await {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let output = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let port = node.port();
            let ok = eventually(Duration::from_secs(20), || async move {
                let info = node_command(port, redis::cmd("CLUSTER").arg("INFO")).await;
                matches!(info, Ok(redis::Value::VerbatimString { ref text, .. }) if text.contains("cluster_state:ok"))
                    || matches!(info, Ok(redis::Value::BulkString(ref b)) if String::from_utf8_lossy(b).contains("cluster_state:ok"))
            })
            .await;
            assert!(ok, "cluster node {port} did not reach cluster_state:ok");
        }
        cluster
    }

    /// The nodes' URLs, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(EmbeddedRedis::url).collect::<Vec<_>>().join(",")
    }

    /// The port of the node that serves `slot`.
    /// (As the first node that answers sees it: a test may have killed some.)
    pub async fn owner_of(&self, slot: u16) -> u16 {
        for node in &self.nodes {
            let Ok(slots) = node_command(node.port(), redis::cmd("CLUSTER").arg("SLOTS")).await else { continue };
            let ranges: Vec<(u16, u16, (String, u16))> = redis::from_redis_value(trim_slots(slots)).unwrap();
            return ranges
                .into_iter()
                .find(|(low, high, _)| (*low..=*high).contains(&slot))
                .map(|(_, _, (_, port))| port)
                .unwrap();
        }
        panic!("no cluster node answers");
    }
}

/// CLUSTER SLOTS entries cut to (low, high, (host, port)) of the primary.
fn trim_slots(slots: redis::Value) -> redis::Value {
    let redis::Value::Array(entries) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
    redis::Value::Array(
        entries
            .into_iter()
            .map(|entry| {
                let redis::Value::Array(mut fields) = entry else { panic!("CLUSTER SLOTS entry") };
                let redis::Value::Array(mut primary) = fields.remove(2) else { panic!("CLUSTER SLOTS primary") };
                primary.truncate(2);
                fields.truncate(2);
                fields.push(redis::Value::Array(primary));
                redis::Value::Array(fields)
            })
            .collect(),
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
                "stocklock-nodes-{}-{}.conf",
                node.port(),
                std::process::id()
            )));
        }
    }
}

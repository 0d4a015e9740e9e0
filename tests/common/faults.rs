//! Faults: commands to one node, and signals to a redis-server.

/// One command to one node, outside the cluster client.
pub async fn node_command(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

/// Sends `sig` (e.g. "-STOP", "-KILL") to process `pid`, such as a test's redis-server.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A TCP proxy in front of a Redis that can be pointed at another one,
/// dropping every open connection: a Redis swapped behind the same address
/// (a virtual IP, a DNS name, a proxy that fails over on its own).
pub struct SwitchingProxy {
    /// Where clients connect.
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl SwitchingProxy {
    /// A proxy to the Redis on `target`.
    pub async fn start(target: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (target, links) = (target.clone(), links.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let to = target.load(Ordering::SeqCst);
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        });
        Self { port, target, links, accept }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Points new connections at the Redis on `to` and drops the open ones.
    pub fn switch(&self, to: u16) {
        self.target.store(to, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for SwitchingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

/// A fresh directory for a redis-server's data files, and its path as an argument.
pub fn data_dir(tag: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("stocklock-{tag}-{}-{}", std::process::id(), rand_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let arg = dir.to_str().unwrap().to_owned();
    (dir, arg)
}

fn rand_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

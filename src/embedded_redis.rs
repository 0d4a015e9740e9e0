//! A private `redis-server` child process on a free loopback port, with no
//! persistence: the default when no Redis URL is configured, and the Redis of
//! every integration test. The child is killed when this value is dropped.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long a fresh redis-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running redis-server child.
pub struct EmbeddedRedis {
    child: Child,
    port: u16,
}

impl EmbeddedRedis {
    /// Starts `bin` on a free port with persistence off.
    pub async fn start(bin: &Path) -> io::Result<Self> {
        Self::start_with(bin, &[]).await
    }

    /// Starts `bin` with extra `redis-server` arguments (e.g. `--maxmemory`).
    pub async fn start_with(bin: &Path, extra_args: &[&str]) -> io::Result<Self> {
        let mut last_error = None;
        // Another process can take the free port between our probe and the
        // child's bind; a few attempts on fresh ports make that harmless.
        for _ in 0..5 {
            let port = free_port()?;
            match Self::start_on(bin, port, extra_args).await {
                Ok(redis) => return Ok(redis),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// Starts `bin` on `port` (to restart a server where clients expect it).
    pub async fn start_on(bin: &Path, port: u16, extra_args: &[&str]) -> io::Result<Self> {
        let port_arg = port.to_string();
        let mut child = Command::new(bin)
            .args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // Replication still writes an RDB file: keep it out of the working
            // directory, under a name no other server would load at start.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .arg("--dbfilename")
            .arg(format!("stocklock-{port}-{}.rdb", std::process::id()))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start {}: {e}. Install Redis (apt-get install redis-server) or pass --redis-url",
                        bin.display()
                    ),
                )
            })?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("redis-server on port {port} exited at start: {status}")));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                // Another process may have taken the port first: then the
                // child fails to bind, and whoever answers is not ours.
                return match server_pid(port).await {
                    Some(pid) if Some(pid) == child.id() => Ok(Self { child, port }),
                    _ => {
                        let _ = child.kill().await;
                        Err(io::Error::new(io::ErrorKind::AddrInUse, format!("port {port} is taken by another server")))
                    }
                };
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "redis-server did not accept connections in time"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's process id, for tests that pause or kill it.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the server and waits for it to exit.
    pub async fn stop(mut self) -> io::Result<()> {
        self.child.kill().await
    }
}

/// The process id of the Redis answering on `port`.
async fn server_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let info = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO").arg("server").query_async::<String>(&mut conn).await.ok()
    };
    let info = tokio::time::timeout(Duration::from_secs(2), info).await.ok()??;
    info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse().ok())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

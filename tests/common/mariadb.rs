//! A warehouse database for the binlog follower's tests: a real MariaDB
//! (`mariadbd` from Debian's mariadb-server, installed by
//! `scripts/install-deps.sh test`), with a data directory of its own, on a
//! free port, writing a row-format binlog with column names, as the README
//! asks of a warehouse's server. Dropping it kills the server and removes
//! its data.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mysql_async::prelude::Queryable;

/// The follower's user, with the privileges the README lists and no more.
pub const CDC_USER: &str = "stocklock";
const CDC_PASSWORD: &str = "cdc-secret";

pub struct MariaDb {
    dir: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl MariaDb {
    /// A fresh server with a `shop` database and the follower's user.
    pub async fn start() -> Self {
        let (dir, _) = super::data_dir("mariadb");
        let installed = tokio::process::Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("mariadb-install-db runs (is mariadb-server installed? scripts/install-deps.sh test)");
        assert!(installed.success(), "mariadb-install-db failed in {}", dir.display());
        let mut db = Self { dir, port: 0, child: None };
        db.launch().await;
        db.root()
            .await
            .query_drop(format!(
                "CREATE DATABASE shop; \
                 CREATE USER '{CDC_USER}'@'%' IDENTIFIED BY '{CDC_PASSWORD}'; \
                 GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{CDC_USER}'@'%'; \
                 GRANT SELECT ON shop.* TO '{CDC_USER}'@'%'"
            ))
            .await
            .unwrap();
        db
    }

    /// Starts `mariadbd` on the data directory: on a free port the first
    /// time, on the same port after a stop.
    async fn launch(&mut self) {
        let first = self.port == 0;
        for _ in 0..5 {
            if self.port == 0 {
                self.port = free_port();
            }
            let data = self.dir.join("data");
            let mut child = tokio::process::Command::new(server_binary())
                .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-name-resolve"])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={}", self.port))
                .arg(format!("--socket={}", self.dir.join("mariadb.sock").display()))
                .arg(format!("--pid-file={}", self.dir.join("mariadb.pid").display()))
                .arg(format!("--log-error={}", self.dir.join("error.log").display()))
                .arg(format!("--log-bin={}", data.join("binlog").display()))
                .args(["--server-id=1", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"])
                .args(["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"])
                .kill_on_drop(true)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mariadbd starts");
            for _ in 0..400 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(conn) = mysql_async::Conn::new(self.root_opts()).await {
                    let _ = conn.disconnect().await;
                    self.child = Some(child);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill().await;
            if first {
                // The port was taken meanwhile: another.
                self.port = 0;
            }
        }
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        panic!("mariadbd did not start in {}:\n{log}", self.dir.display());
    }

    fn root_opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default().ip_or_hostname("127.0.0.1").tcp_port(self.port).user(Some("root")).into()
    }

    /// A root connection.
    pub async fn root(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.root_opts()).await.expect("root connects")
    }

    /// Runs statements as root, in the `shop` database.
    pub async fn sql(&self, statements: &str) {
        let mut conn = self.root().await;
        conn.query_drop(format!("USE shop; {statements}")).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
        conn.disconnect().await.unwrap();
    }

    /// The follower's URL (its user, the `shop` database).
    pub fn url(&self) -> String {
        format!("mysql://{CDC_USER}:{CDC_PASSWORD}@127.0.0.1:{}/shop", self.port)
    }

    /// Shuts the server down cleanly and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and silent,
    /// as behind a network that dropped them without a word.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(|child| child.id()).expect("the server runs");
        let sent = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Starts it again, on the same port and data.
    pub async fn restart(&mut self) {
        self.launch().await;
    }
}

/// `mariadbd`: on the PATH, or where Debian puts it (/usr/sbin is not on
/// every user's PATH).
fn server_binary() -> &'static str {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("mariadbd").is_file()));
    if on_path { "mariadbd" } else { "/usr/sbin/mariadbd" }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A frozen server dies only once it runs again.
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
            }
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The `stocklock` binary: parses the configuration, sets up logging, and
//! hands over to [`stocklock::server::run`].

use anyhow::Context;
use clap::{CommandFactory, Parser};
use stocklock::config::{Cli, Command, ServeConfig};

/// mimalloc rather than the system's malloc: under load glibc's malloc and
/// free (with its fastbin consolidation on the response buffers) took a
/// fifth of the service's CPU per Lock (`perf`; see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(*config),
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::process::exit(runtime.block_on(stocklock::cli::run(*args)));
        }
        Command::Openapi => print(stocklock::http::openapi().to_pretty_json()?.into_bytes()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "stocklock", &mut script);
            print(script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print(page)
        }
    }
}

/// Writes a generated document to stdout; a reader that stops early (`| head`)
/// is not an error.
fn print(mut document: Vec<u8>) -> anyhow::Result<()> {
    use std::io::Write as _;
    if !document.ends_with(b"\n") {
        document.push(b'\n');
    }
    match std::io::stdout().write_all(&document) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    if let Err(message) = config.validate() {
        eprintln!("stocklock: invalid configuration: {message}");
        std::process::exit(2);
    }
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(async {
        let _telemetry = stocklock::edge::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
        let listeners = stocklock::server::Listeners::bind(&config).await.context("binding the listeners")?;
        match stocklock::server::run(config, listeners, shutdown_signal()).await {
            Err(stocklock::server::RunError::Config(message)) => {
                tracing::error!("invalid configuration: {message}");
                eprintln!("stocklock: invalid configuration: {message}");
                std::process::exit(2);
            }
            ended => Ok(ended?),
        }
    })
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

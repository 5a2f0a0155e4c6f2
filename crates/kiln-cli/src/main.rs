//! `kiln`: serve the samples (`kiln serve`) and talk to a running server.

mod bench;
mod config;
mod remote;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Durable orchestrations behind an asynchronous HTTP API")]
struct Cli {
    /// Server to talk to (client commands): its management listener needs no key.
    #[arg(long, global = true, env = "KILN_URL", default_value = "http://127.0.0.1:7072")]
    url: String,
    /// System key, when talking to the public listener.
    #[arg(long, global = true, env = "KILN_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the samples over HTTP on the embedded SQLite store.
    Serve {
        /// Config file (default: ./kiln.toml if present).
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<config::ServeSettings>,
    },
    /// Load running servers and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Start an orchestration.
    Start {
        /// Orchestration name.
        name: String,
        /// Input as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// Instance id (random if not given).
        #[arg(long)]
        id: Option<String>,
        /// Follow the instance, showing its custom status, until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Show an instance's status.
    Status {
        /// Instance id.
        id: String,
    },
    /// List instances.
    List {
        /// Only these runtime statuses (repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Only ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show an instance's history.
    History {
        /// Instance id.
        id: String,
    },
    /// Raise an external event.
    Raise {
        /// Instance id.
        id: String,
        /// Event name.
        event: String,
        /// Event data as JSON.
        data: String,
    },
    /// Terminate an instance.
    Terminate {
        /// Instance id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Purge a finished instance, or finished instances created before a time.
    Purge {
        /// Instance id.
        id: Option<String>,
        /// Purge finished instances created before this RFC 3339 time.
        #[arg(long, conflicts_with = "id")]
        created_before: Option<String>,
        /// With --created-before: only these statuses (repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let remote = || remote::Remote::new(&cli.url, cli.key.clone());
    match &cli.command {
        Command::Serve { config, settings } => {
            let config = config::load(config.as_deref(), (**settings).clone())?;
            init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve::run(config))?;
            Ok(true)
        }
        Command::Bench(args) => bench::run(args).map(|()| true),
        Command::Start { name, input, id, wait } => remote().start(name, input, id.as_deref(), *wait),
        Command::Status { id } => remote().status(id).map(|()| true),
        Command::List { statuses, prefix } => remote().list(statuses, prefix.as_deref()).map(|()| true),
        Command::History { id } => remote().history(id).map(|()| true),
        Command::Raise { id, event, data } => remote().raise(id, event, data).map(|()| true),
        Command::Terminate { id, reason } => remote().terminate(id, reason.as_deref()).map(|()| true),
        Command::Purge { id, created_before, statuses } => {
            remote().purge(id.as_deref(), created_before.as_deref(), statuses).map(|()| true)
        }
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colors).with_writer(std::io::stderr).init();
}

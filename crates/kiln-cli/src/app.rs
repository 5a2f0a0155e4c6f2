//! [`App`]: the whole `kiln` command line around an application's own orchestrations and
//! starters — `serve`, the client commands and `bench`.

use crate::{bench, config, remote, serve};
use axum::Router;
use axum::routing::MethodRouter;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kiln::KilnBuilder;
use kiln_http::KilnHttp;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Registers an application's orchestrations and activities on a runtime being built.
type Registration = Box<dyn Fn(KilnBuilder) -> KilnBuilder + Send + Sync>;

/// A Kiln application's command line: `serve` (SQLite or PostgreSQL, `kiln.toml` / `KILN_*` /
/// flags, the public and loopback management listeners, graceful drain), the client commands
/// (`start`, `status`, `list`, `history`, `raise`, `terminate`, `purge`) and `bench`.
///
/// ```no_run
/// use axum::routing::post;
/// # async fn start_greeting() {}
/// # fn register(kiln: kiln::KilnBuilder) -> kiln::KilnBuilder { kiln }
/// fn main() -> std::process::ExitCode {
///     kiln_cli::App::new("hello-app").register(register).starter("/api/greetings", post(start_greeting)).run()
/// }
/// ```
#[must_use]
pub struct App {
    name: &'static str,
    about: &'static str,
    version: Option<&'static str>,
    registrations: Vec<Registration>,
    starters: Router<KilnHttp>,
    starter_paths: Vec<String>,
    openapi: utoipa::openapi::OpenApi,
}

impl App {
    /// An application called `name` (as its binary is), with nothing registered yet.
    pub fn new(name: &'static str) -> App {
        App {
            name,
            about: "Durable orchestrations behind an asynchronous HTTP API",
            version: None,
            registrations: Vec::new(),
            starters: Router::new(),
            starter_paths: Vec::new(),
            openapi: utoipa::openapi::OpenApiBuilder::new().build(),
        }
    }

    /// The one-line description `--help` shows.
    pub fn about(mut self, about: &'static str) -> App {
        self.about = about;
        self
    }

    /// The version `--version` shows (e.g. `env!("CARGO_PKG_VERSION")`); Kiln's by default.
    pub fn version(mut self, version: &'static str) -> App {
        self.version = Some(version);
        self
    }

    /// Registers orchestrations and activities: `register` gets the runtime's builder and
    /// returns it with its own `.orchestration(…)` and `.activity(…)` calls added.
    pub fn register(mut self, register: impl Fn(KilnBuilder) -> KilnBuilder + Send + Sync + 'static) -> App {
        self.registrations.push(Box::new(register));
        self
    }

    /// Serves one starter at `path` on the public listener: an axum handler with
    /// `State<KilnHttp>` that validates its body and answers with [`KilnHttp::accept`].
    pub fn starter(mut self, path: &str, route: MethodRouter<KilnHttp>) -> App {
        self.starters = self.starters.route(path, route);
        self.starter_paths.push(path.to_owned());
        self
    }

    /// Serves a router of starters, documented by `openapi` (merged into `/openapi.json`).
    pub fn starters(mut self, routes: Router<KilnHttp>, openapi: utoipa::openapi::OpenApi) -> App {
        self.starters = self.starters.merge(routes);
        self.starter_paths.extend(openapi.paths.paths.keys().cloned());
        self.openapi.merge(openapi);
        self
    }

    /// Parses the process's arguments and runs the command; the exit code says how it went.
    pub fn run(self) -> ExitCode {
        self.run_with(std::env::args_os())
    }

    /// Runs the command given by `args` (the first is the program's name).
    pub fn run_with<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Cli::command().name(self.name).bin_name(self.name).about(self.about);
        if let Some(version) = self.version {
            command = command.version(version);
        }
        let cli = match command.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
            Ok(cli) => cli,
            Err(err) => err.exit(),
        };
        match self.dispatch(cli) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }

    /// A runtime builder with every registration applied.
    pub(crate) fn registered(&self, builder: KilnBuilder) -> KilnBuilder {
        self.registrations.iter().fold(builder, |builder, register| register(builder))
    }

    /// The starters, their paths and their OpenAPI document, for `serve`.
    pub(crate) fn starters_parts(&self) -> (Router<KilnHttp>, &[String], utoipa::openapi::OpenApi) {
        (self.starters.clone(), &self.starter_paths, self.openapi.clone())
    }

    /// The application's name.
    pub(crate) fn name(&self) -> &str {
        self.name
    }

    fn dispatch(self, cli: Cli) -> anyhow::Result<bool> {
        let remote = || remote::Remote::new(&cli.url, cli.key.clone());
        match &cli.command {
            Command::Serve { config, settings } => {
                let config = config::load(config.as_deref(), (**settings).clone())?;
                init_logging(&config.log);
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                runtime.block_on(serve::run(&self, config))?;
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
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colors).with_writer(std::io::stderr).init();
}

#[derive(Parser)]
#[command(name = "kiln", version)]
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
    /// Serve the application over HTTP (embedded SQLite by default, or PostgreSQL).
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

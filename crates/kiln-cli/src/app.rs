//! [`App`]: the whole `kiln` command line around an application's own orchestrations and
//! starters — `serve`, the client commands and `bench`.

use crate::{bench, config, remote, serve};
use axum::Router;
use axum::handler::Handler;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kiln::{Kiln, KilnBuilder, RuntimeConfig};
use kiln_http::KilnHttp;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{Content, ObjectBuilder, Response};

/// Registers an application's orchestrations and activities on a runtime being built.
type Registration = Box<dyn Fn(KilnBuilder) -> KilnBuilder + Send + Sync>;

/// A Kiln application's command line: `serve` (SQLite or PostgreSQL, `kiln.toml` / `KILN_*` /
/// flags, the public and loopback management listeners, graceful drain), the client commands
/// (`start`, `status`, `list`, `history`, `raise`, `terminate`, `purge`, `bulk`) and `bench`.
///
/// [`App::run`] starts its own Tokio runtime: call it from a plain (not `#[tokio::main]`) `main`.
///
/// ```no_run
/// # async fn start_greeting() {}
/// # fn register(kiln: kiln::KilnBuilder) -> kiln::KilnBuilder { kiln }
/// fn main() -> std::process::ExitCode {
///     kiln_cli::App::new("hello-app").register(register).starter("/api/greetings", start_greeting).run()
/// }
/// ```
#[must_use]
pub struct App {
    name: &'static str,
    about: &'static str,
    version: Option<&'static str>,
    runtime: RuntimeConfig,
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
            runtime: RuntimeConfig::default(),
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

    /// Adds `--version`, showing this (e.g. `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: &'static str) -> App {
        self.version = Some(version);
        self
    }

    /// The runtime's settings (concurrency, cache, limits, …); `serve` sets the lease from its
    /// own configuration (`lease_seconds`), and what its configuration sets besides
    /// (`activity_concurrency`, activity limits, `shutdown_grace_seconds`).
    pub fn runtime_config(mut self, config: RuntimeConfig) -> App {
        self.runtime = config;
        self
    }

    /// Registers orchestrations and activities: `register` gets the runtime's builder and
    /// returns it with its own `.orchestration(…)` and `.activity(…)` calls added. The store
    /// and the runtime's settings are `serve`'s and [`App::runtime_config`]'s to choose.
    pub fn register(mut self, register: impl Fn(KilnBuilder) -> KilnBuilder + Send + Sync + 'static) -> App {
        self.registrations.push(Box::new(register));
        self
    }

    /// Serves a starter as `POST path` on the public listener: an axum handler with
    /// `State<KilnHttp>` that validates its body and answers with [`KilnHttp::accept`]. It is
    /// listed in `/openapi.json` without a body schema; [`App::starters`] takes a full document.
    pub fn starter<H, T>(mut self, path: &str, handler: H) -> App
    where
        H: Handler<T, KilnHttp>,
        T: 'static,
    {
        self.starters = self.starters.route(path, axum::routing::post(handler));
        self.starter_paths.push(path.to_owned());
        self.openapi.paths.add_path_operation(path, vec![HttpMethod::Post], starter_operation());
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
            // `--help` and `--version` end here too, successfully.
            Err(err) => {
                let _ = err.print();
                return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
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

    /// A runtime builder with every registration applied and the runtime's settings, its
    /// claims lasting `lease`.
    pub(crate) fn runtime_builder(&self, serve: &config::ServeConfig) -> KilnBuilder {
        let mut config = RuntimeConfig { lease_duration: serve.lease, ..self.runtime.clone() };
        if let Some(grace) = serve.shutdown_grace {
            config.shutdown_grace = grace;
        }
        if let Some(concurrency) = serve.activity_concurrency {
            config.activity_concurrency = concurrency;
        }
        if let Some(limit) = serve.activity_limit_per_name {
            config.activity_limit_per_name = Some(limit);
        }
        config.activity_limits.extend(serve.activity_limits.clone());
        config.retention = serve.retention.clone();
        self.registrations.iter().fold(Kiln::builder(), |builder, register| register(builder)).config(config)
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
                crate::logging::init(&config.log, config.log_format);
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                runtime.block_on(serve::run(&self, config))?;
                Ok(true)
            }
            Command::Bench(args) => bench::run(args).map(|()| true),
            Command::Keys(KeysCommand::NewApiKey { name, scopes }) => {
                let made = kiln_http::auth::api_keys::new_api_key(name, scopes)?;
                println!("API key (shown once; give it to the caller, keep it nowhere else):\n  {}\n", made.key);
                println!("Add this line to the api_keys_file (or KILN_API_KEYS):\n  {}", made.line);
                Ok(true)
            }
            Command::Keys(KeysCommand::Rotate) => remote().rotate_token_secret().map(|()| true),
            Command::Start { name, input, id, labels, wait } => {
                remote().start(name, input, id.as_deref(), labels, *wait)
            }
            Command::Status { id } => remote().status(id).map(|()| true),
            Command::List { statuses, prefix, labels } => {
                remote().list(statuses, prefix.as_deref(), labels).map(|()| true)
            }
            Command::History { export: Some(HistoryCommand::Export { id }), .. } => {
                remote().export_history(id).map(|()| true)
            }
            Command::History { id, .. } => remote().history(id.as_deref().unwrap_or_default()).map(|()| true),
            Command::Raise { id, event, data } => remote().raise(id, event, data).map(|()| true),
            Command::Terminate { id, reason } => remote().terminate(id, reason.as_deref()).map(|()| true),
            Command::Purge { id: Some(id), .. } => remote().purge(id).map(|()| true),
            Command::Purge { id: None, created_before, finished_before, name, statuses, dry_run } => {
                let filter = remote::InstanceFilter {
                    created_before: created_before.as_deref(),
                    finished_before: finished_before.as_deref(),
                    name: name.as_deref(),
                    statuses,
                    ..Default::default()
                };
                remote().purge_many(&filter, *dry_run).map(|()| true)
            }
            Command::Bulk { action, created_after, created_before, name, statuses, reason, dry_run, wait } => {
                let filter = remote::InstanceFilter {
                    created_after: created_after.as_deref(),
                    created_before: created_before.as_deref(),
                    name: name.as_deref(),
                    statuses,
                    ..Default::default()
                };
                remote().bulk(action, &filter, reason.as_deref(), *dry_run, *wait)
            }
        }
    }
}

/// The OpenAPI operation of a starter added with [`App::starter`]: what every starter answers.
fn starter_operation() -> utoipa::openapi::path::Operation {
    let json_body = Content::new(Some(ObjectBuilder::new().build()));
    OperationBuilder::new()
        .tag("starters")
        .summary(Some("Starts an orchestration"))
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json_body)
                .required(Some(utoipa::openapi::Required::True))
                .build(),
        ))
        .response("202", Response::new("Accepted; poll `Location` (also `statusQueryGetUri`)"))
        .response("400", Response::new("Invalid body (field paths in `errors`)"))
        .response("413", Response::new("Body too large"))
        .response("415", Response::new("Not application/json"))
        .build()
}

#[derive(Parser)]
#[command(name = "kiln")]
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
    /// Make credentials for the starters.
    #[command(subcommand)]
    Keys(KeysCommand),
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
        /// A label to attach, `KEY:VALUE` (repeatable).
        #[arg(long = "label", value_name = "KEY:VALUE")]
        labels: Vec<String>,
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
        /// Only instances with this label, `KEY:VALUE` (repeatable: all of them).
        #[arg(long = "label", value_name = "KEY:VALUE")]
        labels: Vec<String>,
    },
    /// Show an instance's history (`kiln history ID`), or export it for
    /// `kiln::replay_history` (`kiln history export ID > h.json`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    History {
        #[command(subcommand)]
        export: Option<HistoryCommand>,
        /// Instance id.
        #[arg(required = true)]
        id: Option<String>,
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
    /// Purge a finished instance, or the finished instances a filter selects (`--dry-run`
    /// lists them instead).
    Purge {
        /// Instance id.
        id: Option<String>,
        /// Only instances created before this RFC 3339 time.
        #[arg(long, conflicts_with = "id")]
        created_before: Option<String>,
        /// Only instances that finished before this RFC 3339 time.
        #[arg(long, conflicts_with = "id")]
        finished_before: Option<String>,
        /// Only instances of this orchestration.
        #[arg(long, conflicts_with = "id")]
        name: Option<String>,
        /// Only these statuses (repeatable).
        #[arg(long = "status", conflicts_with = "id")]
        statuses: Vec<String>,
        /// Delete nothing: count what the filter selects and list the first 100.
        #[arg(long, conflicts_with = "id")]
        dry_run: bool,
    },
    /// Terminate, purge or rewind every instance a filter selects, as a durable operation whose
    /// status shows its progress (instances created after it starts are left alone).
    Bulk {
        /// `terminate` (unfinished instances), `purge` (finished ones) or `rewind` (failed ones).
        #[arg(value_parser = ["terminate", "purge", "rewind"])]
        action: String,
        /// Only instances created after this RFC 3339 time.
        #[arg(long)]
        created_after: Option<String>,
        /// Only instances created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
        /// Only instances of this orchestration.
        #[arg(long)]
        name: Option<String>,
        /// Only these statuses (repeatable; default: all the action applies to).
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Why (recorded with each termination or rewind).
        #[arg(long)]
        reason: Option<String>,
        /// Act on nothing: count what the filter selects and list the first 100.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        /// Follow the operation's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Print the current execution's history, event for event, as JSON: what
    /// `kiln::replay_history` replays against new code.
    Export {
        /// Instance id.
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the stored secret that signs status tokens, on a running server (every node
    /// reloads it); status URLs handed out before stay valid until they expire.
    Rotate,
    /// Make a new random API key; prints the key once and the hashed line to list it by.
    NewApiKey {
        /// Who the key is for (a name for logs and rate limits).
        name: String,
        /// A scope the key grants (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start_nothing() {}

    #[test]
    fn help_version_and_bad_arguments_return_exit_codes_without_exiting() {
        let app = || App::new("my-app").version("1.2.3");
        assert_eq!(app().run_with(["my-app", "--help"]), ExitCode::SUCCESS);
        assert_eq!(app().run_with(["my-app", "--version"]), ExitCode::SUCCESS);
        assert_eq!(app().run_with(["my-app", "no-such-command"]), ExitCode::from(2));
        assert_eq!(App::new("my-app").run_with(["my-app", "--version"]), ExitCode::from(2), "no version given");
        let help = Cli::command().name("my-app").bin_name("my-app").render_help().to_string();
        assert!(help.contains("serve") && help.contains("bench") && help.contains("start"), "{help}");
    }

    #[test]
    fn starters_are_routed_documented_and_listed() {
        let mut documented = utoipa::openapi::OpenApiBuilder::new().build();
        documented.paths.add_path_operation("/api/b", vec![HttpMethod::Post], starter_operation());
        let app = App::new("my-app").starter("/api/a", start_nothing).starters(Router::new(), documented);
        let (_, paths, openapi) = app.starters_parts();
        assert_eq!(paths, ["/api/a", "/api/b"]);
        assert!(openapi.paths.paths.get("/api/a").is_some_and(|item| item.post.is_some()));
        assert!(openapi.paths.paths.contains_key("/api/b"));
    }
}

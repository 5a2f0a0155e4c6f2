//! `serve`: an application's orchestrations on the embedded SQLite store or PostgreSQL, behind
//! the public and loopback management listeners, until SIGINT or SIGTERM.

use crate::App;
use crate::bench::workloads;
use crate::config::ServeConfig;
use crate::listener::{self, ConnectionLimits};
use anyhow::Context;

use kiln_http::{Access, HttpOptions, KilnHttp};
use kiln_postgres::{PostgresOptions, PostgresStore};
use std::io::Write;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs until SIGINT or SIGTERM, then drains in-flight requests and work.
pub async fn run(app: &App, config: ServeConfig) -> anyhow::Result<()> {
    let mut builder = app.runtime_builder(&config);
    if config.bench_workloads {
        builder = workloads::register(builder);
    }
    let (builder, store_name) = match &config.database_url {
        Some(url) => {
            let mut options = PostgresOptions::new(url.clone());
            options.schema = config.database_schema.clone();
            let store = PostgresStore::connect(options).await.context("cannot open the PostgreSQL store")?;
            (
                builder.store(Arc::new(store)),
                format!(
                    "PostgreSQL{}",
                    config.database_schema.as_deref().map(|s| format!(", schema {s}")).unwrap_or_default()
                ),
            )
        }
        None => (builder.sqlite(&config.database), config.database.display().to_string()),
    };
    let kiln = builder.start().await.map_err(|err| match err {
        kiln::StartError::Sqlite(_) => anyhow::Error::new(err).context(format!("cannot open the store {store_name}")),
        other => anyhow::Error::new(other).context("invalid configuration"),
    })?;
    let options = HttpOptions {
        public_base_url: config.public_base_url.clone(),
        allowed_hosts: config.allowed_hosts.clone(),
        fallback_base_url: format!("http://{}", config.listen),
        token_ttl: config.token_ttl,
        idempotency_retention: config.idempotency_retention,
        max_body_bytes: config.max_body_bytes,
        system_key: config.system_key.clone(),
        token_secret: config.token_secret.clone(),
        previous_token_secrets: config.previous_token_secrets.clone(),
        max_long_polls: config.max_long_polls,
        starter_auth: config.starter_auth.clone(),
        starter_rate_limit: config.starter_rate_limit,
        trust_forwarded_for: config.trust_forwarded_for,
        metrics_key: config.metrics_key.clone(),
        list_page_size: config.list_page_size,
    };
    let http = KilnHttp::new(kiln.client(), options).await.context("cannot set up the HTTP layer")?;
    write_key_file(&config, http.system_key())?;
    let public =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let management = TcpListener::bind(config.management_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.management_listen))?;
    let (mut starters, starter_paths, starters_doc) = app.starters_parts();
    let mut starter_paths = starter_paths.to_vec();
    if config.bench_workloads {
        starters = starters.merge(workloads::starters());
        starter_paths.extend(workloads::STARTER_PATHS.map(str::to_owned));
    }
    print_banner(app.name(), &store_name, &starter_paths, &config);
    warn_of_open_starters(app.name(), &starter_paths, &config);
    if !config.listen.ip().is_loopback() && config.public_base_url.is_none() && config.allowed_hosts.is_empty() {
        tracing::warn!(
            listen = %config.listen,
            "links (Location, statusQueryGetUri) name the listen address for any Host but loopback names: \
             set public_base_url or allowed_hosts to the name clients use"
        );
    }
    let _ = std::io::stdout().flush();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grace = kiln.shutdown_grace();
    let (public_cap, management_cap) = listener::connection_caps(config.max_connections);
    let limits = |max_connections| ConnectionLimits {
        max_connections,
        header_read_timeout: config.read_timeout,
        body_read_timeout: config.read_timeout,
        drain_timeout: grace,
    };
    let public_router = http.public_router(starters, starters_doc);
    let public_server = listener::serve(public, public_router, limits(public_cap), wait_for(stopped.clone()));
    let management_router = http.management_router();
    let management_server = listener::serve(management, management_router, limits(management_cap), wait_for(stopped));
    let (draining, delay, runtime) = (http.clone(), config.shutdown_delay, &kiln);
    let signals = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: answering long polls, draining requests and work");
        // First: not ready, and every long poll answered, so no request holds the exit; the
        // listeners close once load balancers have seen it.
        draining.begin_shutdown();
        tokio::time::sleep(delay).await;
        // Then requests in progress and running activities share one grace period: the exit
        // comes within the delay plus the grace, not the delay plus twice the grace.
        let _ = stop.send(true);
        runtime.stop_taking_work();
    };
    let (public_result, management_result, ()) = tokio::join!(public_server, management_server, signals);
    public_result.context("public listener failed")?;
    management_result.context("management listener failed")?;
    kiln.shutdown().await;
    Ok(())
}

/// Says where everything is served.
fn print_banner(name: &str, store_name: &str, starter_paths: &[String], config: &ServeConfig) {
    println!("{name} is serving (store: {store_name})");
    for path in starter_paths {
        let access = config.starter_auth.access_for(path);
        println!("  starter:     POST http://{}{path}  ({access})", config.listen);
    }
    println!("  status:      GET  http://{}/api/status/{{id}}?token=…  (the Location of each 202)", config.listen);
    println!("  API docs:    http://{0}/docs   (OpenAPI: http://{0}/openapi.json)", config.listen);
    println!("  management:  http://{}/runtime/webhooks/durabletask/ (system key required)", config.listen);
    println!("               http://{}/runtime/webhooks/durabletask/ (loopback, no key)", config.management_listen);
    println!("  system key:  written to {}", config.key_file.display());
    println!("  retention:   {}", retention_summary(&config.retention));
}

/// How long finished instances are kept, in a line: what an operator upgrading should see.
fn retention_summary(retention: &kiln::Retention) -> String {
    if !retention.enabled {
        return "off: finished instances are kept until purged by hand".to_owned();
    }
    let keep = |keep: kiln::Keep| match keep {
        kiln::Keep::Forever => "forever".to_owned(),
        kiln::Keep::For(d) if d.as_secs() % 86_400 == 0 => format!("{}d", d.as_secs() / 86_400),
        kiln::Keep::For(d) if d.as_secs() % 3_600 == 0 => format!("{}h", d.as_secs() / 3_600),
        kiln::Keep::For(d) if d.as_secs() % 60 == 0 => format!("{}m", d.as_secs() / 60),
        kiln::Keep::For(d) => format!("{}s", d.as_secs()),
    };
    let policy = &retention.default;
    let own = match retention.orchestrations.len() {
        0 => String::new(),
        n => format!("; {n} orchestration(s) with their own"),
    };
    format!(
        "finished instances purged after completed {}, failed {}, terminated {}{own} ([retention] in kiln.toml)",
        keep(policy.completed),
        keep(policy.failed),
        keep(policy.terminated)
    )
}

/// Warns loudly when starters anyone may call listen beyond this machine: the listed ones a
/// rule leaves open, and, when the default is open, any starter without a rule.
fn warn_of_open_starters(name: &str, starter_paths: &[String], config: &ServeConfig) {
    if config.listen.ip().is_loopback() {
        return;
    }
    let auth = &config.starter_auth;
    let open: Vec<&str> =
        starter_paths.iter().filter(|path| *auth.access_for(path) == Access::Open).map(String::as_str).collect();
    let default_open = *auth.default_access() == Access::Open;
    if open.is_empty() && !default_open {
        return;
    }
    let which = match (default_open, open.is_empty()) {
        (true, true) => "every starter without a [starter_auth] rule accepts anyone".to_owned(),
        (true, false) => {
            format!("every starter without a [starter_auth] rule accepts anyone, among them {}", open.join(", "))
        }
        (false, _) => format!("these starters accept anyone: {}", open.join(", ")),
    };
    eprintln!(
        "\nWARNING: {name} listens on {} and {which}. Set [starter_auth] (API keys or JWTs, \
         docs/security.md) unless a gateway in front authenticates callers.\n",
        config.listen
    );
    tracing::warn!(listen = %config.listen, open_starters = open.join(","), default_open, "starters are open to anyone who can reach the listener");
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

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
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Writes the system key for local tools, readable by the owner only.
fn write_key_file(config: &ServeConfig, key: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(&config.key_file).with_context(|| format!("cannot write {}", config.key_file.display()))?;
    writeln!(file, "{key}").with_context(|| format!("cannot write {}", config.key_file.display()))
}

//! `kiln serve` configuration: one typed struct from `kiln.toml`, `KILN_*` environment variables
//! and flags (in rising precedence), validated before anything starts.

use crate::starter_auth::{self, AccessKind, AuthSecrets, StarterAuthSettings};
use anyhow::{Context, bail};
use kiln_http::hosts::HostAllowList;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings that may come from the file, the environment or flags.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Public listener (client surface, key-protected management API, operations).
    #[arg(long, env = "KILN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Loopback-only listener for the management API without a key (DF's `rpcBaseUrl`).
    #[arg(long, env = "KILN_MANAGEMENT_LISTEN")]
    pub management_listen: Option<SocketAddr>,
    /// SQLite database file (the default store).
    #[arg(long, env = "KILN_DATABASE")]
    pub database: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user@host:port/db`): use PostgreSQL instead of SQLite, for
    /// several nodes sharing one database.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL schema for Kiln's tables (created if missing).
    #[arg(long, env = "KILN_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
    /// Base URL for links when behind a reverse proxy (e.g. `https://api.example.com`).
    #[arg(long, env = "KILN_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Hosts (`name` or `name:port`) whose `Host` header may shape links when there is no
    /// public base URL, besides loopback names and the listen address.
    #[arg(long = "allowed-host", env = "KILN_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// Management system key (generated once and kept in the database when not set).
    #[arg(long, env = "KILN_SYSTEM_KEY", hide_env_values = true)]
    pub system_key: Option<String>,
    /// Secret that signs status tokens (generated once and kept in the database when not set).
    #[arg(long, env = "KILN_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Earlier token secrets still accepted for verification (comma-separated), during a
    /// rotation, until the tokens they signed have expired.
    #[arg(long, env = "KILN_PREVIOUS_TOKEN_SECRETS", hide_env_values = true, value_delimiter = ',')]
    pub previous_token_secrets: Option<Vec<String>>,
    /// Where to write the system key for local tools (mode 0600).
    #[arg(long, env = "KILN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// How long `Idempotency-Key`s are remembered, in hours.
    #[arg(long, env = "KILN_IDEMPOTENCY_RETENTION_HOURS")]
    pub idempotency_retention_hours: Option<u64>,
    /// How long status tokens stay valid, in hours.
    #[arg(long, env = "KILN_TOKEN_TTL_HOURS")]
    pub token_ttl_hours: Option<u64>,
    /// Largest request body, in bytes.
    #[arg(long, env = "KILN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most connections the public listener keeps open (more get `503`); default 10,000, cut
    /// to fit the open-file limit.
    #[arg(long, env = "KILN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest a client may take to send a request's headers (or, on an idle keep-alive
    /// connection, to start its next request), and pause while sending a body, in seconds.
    #[arg(long, env = "KILN_READ_TIMEOUT_SECONDS")]
    pub read_timeout_seconds: Option<u64>,
    /// A bearer token `/metrics` on the public listener requires (the loopback listener serves
    /// it without); open when not set.
    #[arg(long, env = "KILN_METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<String>,
    /// Who may call the starters (`kiln.toml` only: `[starter_auth]`, see `docs/security.md`).
    #[arg(skip)]
    pub starter_auth: Option<StarterAuthSettings>,
    /// What starters without a `[starter_auth]` route rule take (over the file's `access`).
    #[arg(long, env = "KILN_STARTER_ACCESS", value_enum)]
    pub starter_access: Option<AccessKind>,
    /// API keys the starters accept, besides `api_keys_file`: lines (or `;`-separated entries)
    /// of `NAME sha256:HEX [SCOPES]`, as `keys new-api-key` prints them.
    #[arg(long, env = "KILN_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Shared HS256 secret for JWT bearer tokens (needs `[starter_auth.jwt]`).
    #[arg(long, env = "KILN_JWT_HMAC_SECRET", hide_env_values = true)]
    pub jwt_hmac_secret: Option<String>,
    /// Requests per second each client (an authenticated caller, else an address) may make to
    /// the starters, sustained (`429` beyond); unlimited when not set.
    #[arg(long, env = "KILN_STARTER_RATE_PER_SECOND")]
    pub starter_rate_per_second: Option<f64>,
    /// Requests a client may make to the starters at once after a quiet spell (default: the
    /// rate per second, at least 1).
    #[arg(long, env = "KILN_STARTER_BURST")]
    pub starter_burst: Option<u32>,
    /// Whether a trusted reverse proxy's `X-Forwarded-For` entry names the client for rate
    /// limits (otherwise: the connection's peer).
    #[arg(long, env = "KILN_TRUST_FORWARDED_FOR", num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: Option<bool>,
    /// Most `Prefer: wait` long polls held open at once (beyond it, polls are answered at once).
    #[arg(long, env = "KILN_MAX_LONG_POLLS")]
    pub max_long_polls: Option<usize>,
    /// Page size of management list requests without `top` (default: everything in one page).
    #[arg(long, env = "KILN_LIST_PAGE_SIZE")]
    pub list_page_size: Option<usize>,
    /// How long a node's claim on work lasts before other nodes may take it over, in seconds.
    #[arg(long, env = "KILN_LEASE_SECONDS")]
    pub lease_seconds: Option<u64>,
    /// Activities running at once on this node (default 256).
    #[arg(long, env = "KILN_ACTIVITY_CONCURRENCY")]
    pub activity_concurrency: Option<usize>,
    /// Most activities of one name running at once (default: three quarters of
    /// `activity_concurrency`, so one kind of work cannot take every slot).
    #[arg(long, env = "KILN_ACTIVITY_LIMIT_PER_NAME")]
    pub activity_limit_per_name: Option<usize>,
    /// Limits of particular activity names (`kiln.toml` only: `[activity_limits]`).
    #[arg(skip)]
    pub activity_limits: Option<std::collections::HashMap<String, usize>>,
    /// On SIGTERM, how long requests in progress, then running activities, may each take to
    /// finish before connections are closed and activities' leases handed back to other nodes,
    /// in seconds (default: the application's, 10).
    #[arg(long, env = "KILN_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// On SIGTERM, how long `/readyz` answers `503` (long polls answered at once) before the
    /// listeners close, in seconds (default 0): set it to the load balancer's probe interval.
    #[arg(long, env = "KILN_SHUTDOWN_DELAY_SECONDS")]
    pub shutdown_delay_seconds: Option<u64>,
    /// How long finished instances are kept (`kiln.toml`: `[retention]`, with policies per
    /// orchestration under `[retention.orchestrations.NAME]`; see `docs/deployment.md`).
    #[command(flatten)]
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Log filter (e.g. `info`, `kiln=debug`).
    #[arg(long, env = "KILN_LOG")]
    pub log: Option<String>,
    /// Log format: `compact` lines for people (the default) or `json`, one object per line.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Also serve the `kiln bench` workloads under `/api/bench/…`.
    #[arg(long, env = "KILN_BENCH_WORKLOADS", num_args = 0..=1, default_missing_value = "true")]
    pub bench_workloads: Option<bool>,
}

/// How log lines are written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One compact line per event, for people.
    #[default]
    Compact,
    /// One JSON object per event (fields flattened), for log pipelines.
    Json,
}

/// Retention settings: how long finished instances stay, per terminal status, as `90s`, `15m`,
/// `12h`, `7d` or `forever`.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Whether the purger runs (default true; false keeps every finished instance).
    #[arg(long = "retention-enabled", env = "KILN_RETENTION_ENABLED", num_args = 0..=1, default_missing_value = "true")]
    pub enabled: Option<bool>,
    /// How long completed instances are kept (default `7d`).
    #[arg(long = "retention-completed", env = "KILN_RETENTION_COMPLETED")]
    pub completed: Option<String>,
    /// How long failed instances are kept (default `30d`).
    #[arg(long = "retention-failed", env = "KILN_RETENTION_FAILED")]
    pub failed: Option<String>,
    /// How long terminated instances are kept (default `7d`).
    #[arg(long = "retention-terminated", env = "KILN_RETENTION_TERMINATED")]
    pub terminated: Option<String>,
    /// How often the purger looks for instances past their retention, in seconds (default 60).
    #[arg(long = "retention-check-seconds", env = "KILN_RETENTION_CHECK_SECONDS")]
    pub check_seconds: Option<u64>,
    /// Policies of particular orchestrations (`kiln.toml` only); a status they leave out keeps
    /// the setting above.
    #[arg(skip)]
    pub orchestrations: Option<std::collections::BTreeMap<String, OrchestrationRetention>>,
}

/// One orchestration's retention (`[retention.orchestrations.NAME]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrationRetention {
    /// How long its completed instances are kept.
    pub completed: Option<String>,
    /// How long its failed instances are kept.
    pub failed: Option<String>,
    /// How long its terminated instances are kept.
    pub terminated: Option<String>,
}

impl RetentionSettings {
    /// Fills every unset field from `lower`.
    fn or(self, lower: RetentionSettings) -> RetentionSettings {
        RetentionSettings {
            enabled: self.enabled.or(lower.enabled),
            completed: self.completed.or(lower.completed),
            failed: self.failed.or(lower.failed),
            terminated: self.terminated.or(lower.terminated),
            check_seconds: self.check_seconds.or(lower.check_seconds),
            orchestrations: self.orchestrations.or(lower.orchestrations),
        }
    }

    /// The runtime's retention; durations that do not parse, or shorter than a minute, are
    /// refused (orchestration names are checked against the registry when the runtime starts).
    fn build(self) -> anyhow::Result<kiln::Retention> {
        let own =
            OrchestrationRetention { completed: self.completed, failed: self.failed, terminated: self.terminated };
        let default = own.policy("retention.", &kiln::RetentionPolicy::default())?;
        let mut orchestrations = std::collections::BTreeMap::new();
        for (name, own) in self.orchestrations.unwrap_or_default() {
            let policy = own.policy(&format!("retention.orchestrations.{name}."), &default)?;
            orchestrations.insert(name, policy);
        }
        let check_every = Duration::from_secs(self.check_seconds.unwrap_or(60));
        let enabled = self.enabled.unwrap_or(true);
        let retention = kiln::Retention { enabled, default, orchestrations, check_every, ..kiln::Retention::default() };
        // Names are checked when the runtime starts, against what the application registers.
        retention.validate_bounds()?;
        Ok(retention)
    }
}

impl OrchestrationRetention {
    /// The policy these settings make, `base`'s where they say nothing (`scope` names them in
    /// errors).
    fn policy(&self, scope: &str, base: &kiln::RetentionPolicy) -> anyhow::Result<kiln::RetentionPolicy> {
        let keep = |status: &str, text: &Option<String>, fallback: kiln::Keep| match text {
            None => Ok(fallback),
            Some(text) => parse_keep(text)
                .with_context(|| format!("{scope}{status} = \"{text}\": use 90s, 15m, 12h, 7d or forever")),
        };
        Ok(kiln::RetentionPolicy {
            completed: keep("completed", &self.completed, base.completed)?,
            failed: keep("failed", &self.failed, base.failed)?,
            terminated: keep("terminated", &self.terminated, base.terminated)?,
        })
    }
}

/// Parses a retention: `forever`, or a whole number of seconds, minutes, hours or days.
fn parse_keep(text: &str) -> anyhow::Result<kiln::Keep> {
    if text.eq_ignore_ascii_case("forever") {
        return Ok(kiln::Keep::Forever);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().context("not a number")?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => bail!("unknown unit '{unit}'"),
    };
    Ok(kiln::Keep::For(Duration::from_secs(number.saturating_mul(seconds))))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub management_listen: SocketAddr,
    pub database: PathBuf,
    pub database_url: Option<String>,
    pub database_schema: Option<String>,
    pub public_base_url: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub system_key: Option<String>,
    pub token_secret: Option<String>,
    pub previous_token_secrets: Vec<String>,
    pub key_file: PathBuf,
    pub idempotency_retention: Duration,
    pub token_ttl: Duration,
    pub max_body_bytes: usize,
    pub max_connections: Option<usize>,
    pub read_timeout: Duration,
    pub max_long_polls: usize,
    pub starter_auth: kiln_http::StarterAuth,
    pub starter_rate_limit: Option<kiln_http::RateLimit>,
    pub trust_forwarded_for: bool,
    pub metrics_key: Option<String>,
    pub list_page_size: Option<usize>,
    pub lease: Duration,
    pub activity_concurrency: Option<usize>,
    pub activity_limit_per_name: Option<usize>,
    pub activity_limits: std::collections::HashMap<String, usize>,
    pub shutdown_grace: Option<Duration>,
    pub shutdown_delay: Duration,
    pub retention: kiln::Retention,
    pub log: String,
    pub log_format: LogFormat,
    pub bench_workloads: bool,
}

impl ServeSettings {
    /// Fills every unset field from `lower`.
    fn or(self, lower: ServeSettings) -> ServeSettings {
        ServeSettings {
            listen: self.listen.or(lower.listen),
            management_listen: self.management_listen.or(lower.management_listen),
            database: self.database.or(lower.database),
            database_url: self.database_url.or(lower.database_url),
            database_schema: self.database_schema.or(lower.database_schema),
            public_base_url: self.public_base_url.or(lower.public_base_url),
            allowed_hosts: self.allowed_hosts.or(lower.allowed_hosts),
            system_key: self.system_key.or(lower.system_key),
            token_secret: self.token_secret.or(lower.token_secret),
            previous_token_secrets: self.previous_token_secrets.or(lower.previous_token_secrets),
            key_file: self.key_file.or(lower.key_file),
            idempotency_retention_hours: self.idempotency_retention_hours.or(lower.idempotency_retention_hours),
            token_ttl_hours: self.token_ttl_hours.or(lower.token_ttl_hours),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_connections: self.max_connections.or(lower.max_connections),
            read_timeout_seconds: self.read_timeout_seconds.or(lower.read_timeout_seconds),
            max_long_polls: self.max_long_polls.or(lower.max_long_polls),
            starter_auth: self.starter_auth.or(lower.starter_auth),
            starter_access: self.starter_access.or(lower.starter_access),
            api_keys: self.api_keys.or(lower.api_keys),
            jwt_hmac_secret: self.jwt_hmac_secret.or(lower.jwt_hmac_secret),
            starter_rate_per_second: self.starter_rate_per_second.or(lower.starter_rate_per_second),
            starter_burst: self.starter_burst.or(lower.starter_burst),
            trust_forwarded_for: self.trust_forwarded_for.or(lower.trust_forwarded_for),
            metrics_key: self.metrics_key.or(lower.metrics_key),
            list_page_size: self.list_page_size.or(lower.list_page_size),
            lease_seconds: self.lease_seconds.or(lower.lease_seconds),
            activity_concurrency: self.activity_concurrency.or(lower.activity_concurrency),
            activity_limit_per_name: self.activity_limit_per_name.or(lower.activity_limit_per_name),
            activity_limits: self.activity_limits.or(lower.activity_limits),
            shutdown_grace_seconds: self.shutdown_grace_seconds.or(lower.shutdown_grace_seconds),
            shutdown_delay_seconds: self.shutdown_delay_seconds.or(lower.shutdown_delay_seconds),
            retention: self.retention.or(lower.retention),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            bench_workloads: self.bench_workloads.or(lower.bench_workloads),
        }
    }
}

/// Reads the file (an explicit `--config`, else `./kiln.toml` if present), applies the
/// environment and flags over it, fills defaults and validates.
pub fn load(config_file: Option<&Path>, overrides: ServeSettings) -> anyhow::Result<ServeConfig> {
    let file = match config_file {
        Some(path) => read_file(path)?,
        None if Path::new("kiln.toml").exists() => read_file(Path::new("kiln.toml"))?,
        None => ServeSettings::default(),
    };
    let s = overrides.or(file);
    let hours = |h: u64| Duration::from_secs(h.saturating_mul(3600));
    let config = ServeConfig {
        listen: s.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7071))),
        management_listen: s.management_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7072))),
        database: s.database.unwrap_or_else(|| PathBuf::from("kiln.db")),
        database_url: s.database_url,
        database_schema: s.database_schema,
        public_base_url: s.public_base_url,
        allowed_hosts: s.allowed_hosts.unwrap_or_default(),
        system_key: s.system_key,
        token_secret: s.token_secret,
        previous_token_secrets: s.previous_token_secrets.unwrap_or_default(),
        key_file: s.key_file.unwrap_or_else(|| PathBuf::from("kiln.key")),
        idempotency_retention: hours(s.idempotency_retention_hours.unwrap_or(24)),
        token_ttl: hours(s.token_ttl_hours.unwrap_or(24 * 7)),
        max_body_bytes: s.max_body_bytes.unwrap_or(2 << 20),
        max_connections: s.max_connections,
        read_timeout: Duration::from_secs(s.read_timeout_seconds.unwrap_or(30)),
        max_long_polls: s.max_long_polls.unwrap_or(1_024),
        starter_auth: starter_auth::build(
            s.starter_auth.unwrap_or_default(),
            AuthSecrets { access: s.starter_access, api_keys: s.api_keys, jwt_hmac_secret: s.jwt_hmac_secret },
        )?,
        starter_rate_limit: s.starter_rate_per_second.map(|per_second| kiln_http::RateLimit {
            per_second,
            burst: s.starter_burst.unwrap_or_else(|| per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
        }),
        trust_forwarded_for: s.trust_forwarded_for.unwrap_or(false),
        metrics_key: s.metrics_key,
        list_page_size: s.list_page_size,
        lease: Duration::from_secs(s.lease_seconds.unwrap_or(30)),
        activity_concurrency: s.activity_concurrency,
        activity_limit_per_name: s.activity_limit_per_name,
        activity_limits: s.activity_limits.unwrap_or_default(),
        shutdown_grace: s.shutdown_grace_seconds.map(Duration::from_secs),
        shutdown_delay: Duration::from_secs(s.shutdown_delay_seconds.unwrap_or(0)),
        retention: s.retention.build()?,
        log: s.log.unwrap_or_else(|| "info".to_owned()),
        log_format: s.log_format.unwrap_or_default(),
        bench_workloads: s.bench_workloads.unwrap_or(false),
    };
    config.validate()?;
    Ok(config)
}

fn read_file(path: &Path) -> anyhow::Result<ServeSettings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

impl ServeConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !self.management_listen.ip().is_loopback() {
            bail!(
                "management_listen {} is not a loopback address: that listener serves the management API without a key",
                self.management_listen
            );
        }
        if self.listen == self.management_listen {
            bail!("listen and management_listen must differ (both are {})", self.listen);
        }
        if let Some(url) = &self.public_base_url
            && (!(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace))
        {
            bail!("public_base_url must be an absolute http(s) URL, not '{url}'");
        }
        if let Some(host) = self.allowed_hosts.iter().find(|h| !HostAllowList::is_valid_entry(h)) {
            bail!("allowed_hosts entries must be 'name' or 'name:port', not '{host}'");
        }
        if let Some(key) = &self.system_key
            && key.len() < 16
        {
            bail!("system_key must be at least 16 characters");
        }
        if let Some(key) = &self.metrics_key
            && key.len() < 16
        {
            bail!("metrics_key must be at least 16 characters");
        }
        if self.lease < Duration::from_secs(1) {
            bail!("lease_seconds must be at least 1");
        }
        if self.max_connections == Some(0) || self.read_timeout.is_zero() {
            bail!("max_connections and read_timeout_seconds must be at least 1");
        }
        if self.activity_concurrency == Some(0) || self.activity_limit_per_name == Some(0) {
            bail!("activity_concurrency and activity_limit_per_name must be at least 1");
        }
        if let Some((name, _)) = self.activity_limits.iter().find(|&(_, &limit)| limit == 0) {
            bail!("activity_limits.{name} must be at least 1");
        }
        if let Some(limit) = self.starter_rate_limit
            && !(limit.per_second.is_finite() && limit.per_second > 0.0 && limit.burst >= 1)
        {
            bail!("starter_rate_per_second must be a positive number and starter_burst at least 1");
        }
        if self.shutdown_grace.is_some_and(|grace| grace > Duration::from_secs(3600))
            || self.shutdown_delay > Duration::from_secs(3600)
        {
            bail!("shutdown_grace_seconds and shutdown_delay_seconds must be at most 3600");
        }
        if self.list_page_size == Some(0) {
            bail!("list_page_size must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        if self.token_ttl.is_zero() || self.idempotency_retention.is_zero() {
            bail!("token_ttl_hours and idempotency_retention_hours must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndatabase = \"a.db\"\n").unwrap();
        let flags = ServeSettings { database: Some("b.db".into()), ..Default::default() };
        let config = load(Some(&file), flags).unwrap();
        assert_eq!((config.listen.port(), config.database), (9000, PathBuf::from("b.db")));
        let public = ServeSettings { management_listen: Some("0.0.0.0:7072".parse().unwrap()), ..Default::default() };
        assert!(load(Some(&file), public).unwrap_err().to_string().contains("not a loopback address"));
        let bad_host = ServeSettings { allowed_hosts: Some(vec!["evil.example/x".into()]), ..Default::default() };
        assert!(load(Some(&file), bad_host).unwrap_err().to_string().contains("allowed_hosts"));
        std::fs::write(&file, "log_format = \"json\"\n").unwrap();
        assert_eq!(load(Some(&file), ServeSettings::default()).unwrap().log_format, LogFormat::Json);
        std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
        assert!(load(Some(&file), ServeSettings::default()).is_err());
        std::fs::write(&file, "activity_limit_per_name = 8\n[activity_limits]\nreport = 2\n").unwrap();
        let limits = load(Some(&file), ServeSettings::default()).unwrap();
        assert_eq!((limits.activity_limit_per_name, limits.activity_limits.get("report")), (Some(8), Some(&2)));
        std::fs::write(&file, "[activity_limits]\nreport = 0\n").unwrap();
        assert!(load(Some(&file), ServeSettings::default()).is_err(), "a zero limit is refused");
        std::fs::write(
            &file,
            "[retention]\ncompleted = \"2d\"\nfailed = \"forever\"\n[retention.orchestrations.report]\ncompleted = \"90m\"\n",
        )
        .unwrap();
        let flags = ServeSettings {
            retention: RetentionSettings { terminated: Some("12h".into()), ..Default::default() },
            ..Default::default()
        };
        let retention = load(Some(&file), flags).unwrap().retention;
        let (day, hour) = (Duration::from_secs(24 * 3600), Duration::from_secs(3600));
        assert_eq!(retention.default.completed, kiln::Keep::For(2 * day));
        assert_eq!(retention.default.failed, kiln::Keep::Forever);
        assert_eq!(retention.default.terminated, kiln::Keep::For(12 * hour), "the flag fills what the file left");
        let report = retention.orchestrations["report"];
        assert_eq!(report.completed, kiln::Keep::For(90 * Duration::from_secs(60)));
        assert_eq!(report.failed, kiln::Keep::Forever, "the rest from [retention]");
        assert!(retention.enabled, "on by default");
        std::fs::write(&file, "[retention]\nenabled = false\n").unwrap();
        assert!(!load(Some(&file), ServeSettings::default()).unwrap().retention.enabled);
        for (text, error) in [
            ("completed = \"30s\"", "at least a minute"),
            ("completed = \"7 days\"", "use 90s, 15m, 12h, 7d or forever"),
            ("completed = \"d\"", "use 90s"),
            ("check_seconds = 0", "check_seconds"),
            ("check_seconds = 100000", "at most a day"),
        ] {
            std::fs::write(&file, format!("[retention]\n{text}\n")).unwrap();
            let err = format!("{:#}", load(Some(&file), ServeSettings::default()).unwrap_err());
            assert!(err.contains(error), "{text}: {err}");
        }
        std::fs::write(&file, "lisen = 1\n").unwrap();
        assert!(load(Some(&file), ServeSettings::default()).is_err(), "unknown keys are refused");
    }
}

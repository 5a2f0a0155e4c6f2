//! Servers for `kiln bench`: started here (`kiln serve --bench-workloads` children on free
//! ports, on a throwaway SQLite file or a fresh PostgreSQL schema) or given by URL; and what
//! they cost, read from `/proc`.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which store self-started servers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A SQLite file in a temporary directory (`synchronous=FULL`).
    Sqlite,
    /// A fresh schema in the PostgreSQL database of `--database-url`.
    Postgres,
}

/// The servers under load.
pub struct Servers {
    /// Their public base URLs.
    pub urls: Vec<String>,
    children: Vec<Child>,
    scratch: Option<PathBuf>,
    /// The PostgreSQL schema the servers share, when they were started on PostgreSQL.
    pub schema: Option<String>,
}

impl Servers {
    /// Servers that are already running.
    pub fn external(urls: Vec<String>) -> Servers {
        Servers { urls, children: Vec::new(), scratch: None, schema: None }
    }

    /// Starts `nodes` servers and waits until each answers `/healthz`.
    pub fn start(store: StoreKind, nodes: usize, database_url: Option<&str>) -> anyhow::Result<Servers> {
        if store == StoreKind::Sqlite && nodes > 1 {
            bail!("several nodes need a shared store: use --store postgres");
        }
        let scratch = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
        let schema = (store == StoreKind::Postgres).then(|| format!("kiln_bench_{}", std::process::id()));
        let mut servers = Servers { urls: Vec::new(), children: Vec::new(), scratch: Some(scratch), schema };
        for node in 0..nodes {
            let (public, management) = (free_port()?, free_port()?);
            let dir = servers.scratch.as_deref().context("no scratch directory")?;
            let mut command = Command::new(std::env::current_exe()?);
            // Every setting is given here: none may come from the caller's `KILN_*` (a
            // production database URL, public base URL or config file must not be benched).
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("KILN_") {
                    command.env_remove(name);
                }
            }
            command
                .arg("serve")
                .arg("--bench-workloads")
                .args(["--listen", &format!("127.0.0.1:{public}")])
                .args(["--management-listen", &format!("127.0.0.1:{management}")])
                .arg("--key-file")
                .arg(dir.join(format!("node{node}.key")))
                .args(["--log", "warn"])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            match store {
                StoreKind::Sqlite => {
                    command.arg("--database").arg(dir.join("kiln.db"));
                }
                StoreKind::Postgres => {
                    let url = database_url.context("--store postgres needs --database-url")?;
                    command.args(["--database-url", url]);
                    command.args(["--database-schema", servers.schema.as_deref().unwrap_or("kiln_bench")]);
                }
            }
            servers.children.push(command.spawn().context("cannot start `kiln serve`")?);
            servers.urls.push(format!("http://127.0.0.1:{public}"));
        }
        for url in &servers.urls {
            wait_until_healthy(url)?;
        }
        Ok(servers)
    }

    /// The process ids of self-started servers (none for external ones).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until_healthy(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (authority, _) = super::http::split_url(url)?;
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(authority) {
            use std::io::{Read, Write};
            let request = format!("GET /healthz HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the server at {url} did not become healthy within 30 s")
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSample {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Peak resident memory, in bytes.
    pub peak_rss_bytes: u64,
}

/// Kernel clock ticks per second, as Linux reports CPU times in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads a process's CPU time and memory (`None` where `/proc` is unavailable).
pub fn sample(pid: Option<u32>) -> Option<ProcessSample> {
    let dir = pid.map_or_else(|| PathBuf::from("/proc/self"), |p| PathBuf::from(format!("/proc/{p}")));
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = (ticks(14)? + ticks(15)?) / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    Some(ProcessSample {
        cpu_seconds,
        rss_bytes: status_kib(&status, "VmRSS:")? * 1024,
        peak_rss_bytes: status_kib(&status, "VmHWM:")? * 1024,
    })
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
}

/// Sums samples of several processes.
pub fn sample_all(pids: &[u32]) -> Option<ProcessSample> {
    pids.iter().map(|pid| sample(Some(*pid))).try_fold(ProcessSample::default(), |total, s| {
        let s = s?;
        Some(ProcessSample {
            cpu_seconds: total.cpu_seconds + s.cpu_seconds,
            rss_bytes: total.rss_bytes + s.rss_bytes,
            peak_rss_bytes: total.peak_rss_bytes + s.peak_rss_bytes,
        })
    })
}

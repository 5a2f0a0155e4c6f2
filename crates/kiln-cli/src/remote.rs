//! Client commands against a running server, through the management API (by default the
//! loopback listener, which needs no key).

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// How the CLI reaches the server.
pub struct Remote {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
}

/// How often `start --wait` looks at the instance.
const WAIT_INTERVAL: Duration = Duration::from_millis(250);

impl Remote {
    /// A client for the server at `url` (its management API), with an optional system key.
    pub fn new(url: &str, key: Option<String>) -> Remote {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Remote { agent, base: format!("{}/runtime/webhooks/durabletask", url.trim_end_matches('/')), key }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match &self.key {
            Some(key) => request.header("x-functions-key", key),
            None => request,
        };
        let request = request.header("content-type", "application/json").body(body.unwrap_or("").to_owned())?;
        let mut response = self.agent.run(request).map_err(|e| anyhow!("cannot reach {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("cannot read the response")?;
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let detail = json.get("detail").and_then(Value::as_str).map_or_else(|| json.to_string(), str::to_owned);
            bail!("{detail} (HTTP {status})");
        }
        Ok((status, json))
    }

    /// `kiln keys rotate`: a new token secret on the server (every node reloads it); says until
    /// when the old one's tokens stay valid.
    pub fn rotate_token_secret(&self) -> anyhow::Result<()> {
        let (_, rotated) = self.call("POST", "/tokenSecret/rotate", None)?;
        let until = rotated.get("previousAcceptedUntil").and_then(Value::as_str).unwrap_or("their expiry");
        println!("token secret rotated; status URLs handed out before stay valid until {until}");
        Ok(())
    }

    /// `kiln start`: prints the instance id, or with `wait` follows it to the end.
    pub fn start(&self, name: &str, input: &str, id: Option<&str>, wait: bool) -> anyhow::Result<bool> {
        serde_json::from_str::<Value>(input).context("--input is not valid JSON")?;
        let path = match id {
            Some(id) => format!("/orchestrators/{}/{}", encode(name), encode(id)),
            None => format!("/orchestrators/{}", encode(name)),
        };
        let (_, started) = self.call("POST", &path, Some(input))?;
        let id =
            started.get("id").and_then(Value::as_str).ok_or_else(|| anyhow!("the server returned no instance id"))?;
        if !wait {
            println!("{id}");
            return Ok(true);
        }
        eprintln!("started {id}");
        self.follow(id)
    }

    /// Shows the custom status as it changes, then the output; true if the instance completed.
    fn follow(&self, id: &str) -> anyhow::Result<bool> {
        let spinner = ['|', '/', '-', '\\'];
        let interactive = std::io::stderr().is_terminal();
        let mut last_line = String::new();
        for tick in 0usize.. {
            let (_, status) = self.call("GET", &format!("/instances/{}?showInput=false", encode(id)), None)?;
            let runtime = status.get("runtimeStatus").and_then(Value::as_str).unwrap_or("Unknown").to_owned();
            let custom = status.get("customStatus").filter(|c| !c.is_null()).map(Value::to_string).unwrap_or_default();
            let line = format!("{runtime} {custom}");
            if interactive {
                eprint!("\r\x1b[2K{} {line}", spinner[tick % spinner.len()]);
                let _ = std::io::stderr().flush();
            } else if line != last_line {
                eprintln!("{line}");
            }
            last_line = line;
            if matches!(runtime.as_str(), "Completed" | "Failed" | "Terminated" | "Canceled") {
                if interactive {
                    eprintln!();
                }
                println!("{}", serde_json::to_string_pretty(&status["output"])?);
                return Ok(runtime == "Completed");
            }
            std::thread::sleep(WAIT_INTERVAL);
        }
        Ok(false)
    }

    /// `kiln status`.
    pub fn status(&self, id: &str) -> anyhow::Result<()> {
        let (_, status) = self.call("GET", &format!("/instances/{}", encode(id)), None)?;
        println!("{}", serde_json::to_string_pretty(&status)?);
        Ok(())
    }

    /// `kiln list`.
    pub fn list(&self, statuses: &[String], prefix: Option<&str>) -> anyhow::Result<()> {
        let mut query = vec!["showInput=false".to_owned()];
        if !statuses.is_empty() {
            query.push(format!("runtimeStatus={}", encode(&statuses.join(","))));
        }
        if let Some(prefix) = prefix {
            query.push(format!("instanceIdPrefix={}", encode(prefix)));
        }
        let (_, list) = self.call("GET", &format!("/instances?{}", query.join("&")), None)?;
        for item in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            println!(
                "{}\t{}\t{}\t{}",
                field("instanceId"),
                field("runtimeStatus"),
                field("name"),
                field("createdTime")
            );
        }
        Ok(())
    }

    /// `kiln history`.
    pub fn history(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("/instances/{}?showHistory=true&showHistoryOutput=true", encode(id));
        let (_, status) = self.call("GET", &path, None)?;
        println!("{}", serde_json::to_string_pretty(&status["historyEvents"])?);
        Ok(())
    }

    /// `kiln history export`: the current execution's history as Kiln records it.
    pub fn export_history(&self, id: &str) -> anyhow::Result<()> {
        let (_, exported) = self.call("GET", &format!("/instances/{}/history", encode(id)), None)?;
        println!("{}", serde_json::to_string_pretty(&exported)?);
        Ok(())
    }

    /// `kiln raise`.
    pub fn raise(&self, id: &str, event: &str, data: &str) -> anyhow::Result<()> {
        serde_json::from_str::<Value>(data).context("the event data is not valid JSON")?;
        self.call("POST", &format!("/instances/{}/raiseEvent/{}", encode(id), encode(event)), Some(data))?;
        eprintln!("raised '{event}' on {id}");
        Ok(())
    }

    /// `kiln terminate`.
    pub fn terminate(&self, id: &str, reason: Option<&str>) -> anyhow::Result<()> {
        let reason = reason.map(|r| format!("?reason={}", encode(r))).unwrap_or_default();
        self.call("POST", &format!("/instances/{}/terminate{reason}", encode(id)), None)?;
        eprintln!("terminating {id}");
        Ok(())
    }

    /// `kiln purge ID`.
    pub fn purge(&self, id: &str) -> anyhow::Result<()> {
        let (_, result) = self.call("DELETE", &format!("/instances/{}", encode(id)), None)?;
        println!("{}", result.get("instancesDeleted").cloned().unwrap_or(Value::Null));
        Ok(())
    }

    /// `kiln purge --created-before T --finished-before T --name N --status S [--dry-run]`.
    pub fn purge_many(&self, filter: &PurgeQuery<'_>, dry_run: bool) -> anyhow::Result<()> {
        if !dry_run && filter.created_before.is_none() && filter.finished_before.is_none() && filter.name.is_none() {
            bail!(
                "give an instance id, or a filter (--created-before, --finished-before, --name); --dry-run shows what it selects"
            );
        }
        let mut path = "/instances?createdTimeFrom=1970-01-01T00:00:00Z".to_owned();
        let fields = [
            ("createdTimeTo", filter.created_before),
            ("finishedTimeTo", filter.finished_before),
            ("name", filter.name),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                path.push_str(&format!("&{key}={}", encode(value)));
            }
        }
        if !filter.statuses.is_empty() {
            path.push_str(&format!("&runtimeStatus={}", encode(&filter.statuses.join(","))));
        }
        if dry_run {
            path.push_str("&dryRun=true");
        }
        let result = match self.call("DELETE", &path, None) {
            Ok((_, result)) => result,
            Err(err) if err.to_string().ends_with("(HTTP 404)") => {
                println!("0");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if !dry_run {
            println!("{}", result.get("instancesDeleted").cloned().unwrap_or(Value::Null));
            return Ok(());
        }
        let matched = result.get("matched").and_then(Value::as_u64).unwrap_or(0);
        let listed = result.get("instances").and_then(Value::as_array).cloned().unwrap_or_default();
        println!(
            "would purge {matched} instance(s), with their finished sub-orchestrations{}",
            match listed.len() {
                0 => String::new(),
                n if (n as u64) < matched => format!("; the first {n}:"),
                _ => ":".to_owned(),
            }
        );
        for instance in &listed {
            let field = |key: &str| instance.get(key).and_then(Value::as_str).unwrap_or("-").to_owned();
            println!(
                "{}\t{}\t{}\tfinished {}",
                field("instanceId"),
                field("name"),
                field("runtimeStatus"),
                field("lastUpdatedTime")
            );
        }
        Ok(())
    }
}

/// What `kiln purge` without an id selects.
pub struct PurgeQuery<'a> {
    /// Created before this RFC 3339 time.
    pub created_before: Option<&'a str>,
    /// Finished before this RFC 3339 time.
    pub finished_before: Option<&'a str>,
    /// Of this orchestration.
    pub name: Option<&'a str>,
    /// In these statuses (all terminal ones when empty).
    pub statuses: &'a [String],
}

fn encode(text: &str) -> String {
    kiln_http::urls::encode_component(text)
}

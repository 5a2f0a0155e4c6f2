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
    pub fn start(
        &self,
        name: &str,
        input: &str,
        id: Option<&str>,
        labels: &[String],
        wait: bool,
    ) -> anyhow::Result<bool> {
        serde_json::from_str::<Value>(input).context("--input is not valid JSON")?;
        let mut path = match id {
            Some(id) => format!("/orchestrators/{}/{}", encode(name), encode(id)),
            None => format!("/orchestrators/{}", encode(name)),
        };
        if !labels.is_empty() {
            path.push_str(&format!("?labels={}", encode(&labels.join(","))));
        }
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
    pub fn list(&self, statuses: &[String], prefix: Option<&str>, labels: &[String]) -> anyhow::Result<()> {
        let mut query = vec!["showInput=false".to_owned()];
        if !statuses.is_empty() {
            query.push(format!("runtimeStatus={}", encode(&statuses.join(","))));
        }
        if let Some(prefix) = prefix {
            query.push(format!("instanceIdPrefix={}", encode(prefix)));
        }
        if !labels.is_empty() {
            query.push(format!("labels={}", encode(&labels.join(","))));
        }
        let (_, list) = self.call("GET", &format!("/instances?{}", query.join("&")), None)?;
        for item in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let labels = item.get("labels").and_then(Value::as_object).into_iter().flatten();
            let labels: Vec<String> = labels.map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default())).collect();
            println!(
                "{}\t{}\t{}\t{}\t{}",
                field("instanceId"),
                field("runtimeStatus"),
                field("name"),
                field("createdTime"),
                labels.join(",")
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
    pub fn purge_many(&self, filter: &InstanceFilter<'_>, dry_run: bool) -> anyhow::Result<()> {
        if !dry_run && filter.created_before.is_none() && filter.finished_before.is_none() && filter.name.is_none() {
            bail!(
                "give an instance id, or a filter (--created-before, --finished-before, --name); --dry-run shows what it selects"
            );
        }
        let filter = InstanceFilter { created_after: filter.created_after.or(Some("1970-01-01T00:00:00Z")), ..*filter };
        let path = format!("/instances?{}{}", filter.query(), if dry_run { "&dryRun=true" } else { "" });
        match self.call("DELETE", &path, None) {
            Ok((_, result)) if dry_run => print_dry_run(&result, "purge"),
            Ok((_, result)) => println!("{}", result.get("instancesDeleted").cloned().unwrap_or(Value::Null)),
            Err(err) if err.to_string().ends_with("(HTTP 404)") => println!("0"),
            Err(err) => return Err(err),
        }
        Ok(())
    }

    /// `kiln bulk ACTION [filter] [--reason R] [--dry-run | --wait]`: prints the operation's
    /// id, or what it would act on, or with `wait` follows its progress to the end.
    pub fn bulk(
        &self,
        action: &str,
        filter: &InstanceFilter<'_>,
        reason: Option<&str>,
        dry_run: bool,
        wait: bool,
    ) -> anyhow::Result<bool> {
        let mut path = format!("/bulk/{}?{}", encode(action), filter.query());
        if let Some(reason) = reason {
            path.push_str(&format!("&reason={}", encode(reason)));
        }
        if dry_run {
            let (_, result) = self.call("POST", &format!("{path}&dryRun=true"), None)?;
            print_dry_run(&result, action);
            return Ok(true);
        }
        let (_, started) = self.call("POST", &path, None)?;
        let id =
            started.get("id").and_then(Value::as_str).ok_or_else(|| anyhow!("the server returned no operation id"))?;
        if !wait {
            println!("{id}");
            return Ok(true);
        }
        eprintln!("started {id}");
        self.follow(id)
    }
}

/// What a purge or bulk operation selects: instances created in a range, finished before a
/// time (purges only), of one orchestration, in some statuses.
#[derive(Clone, Copy, Default)]
pub struct InstanceFilter<'a> {
    /// Created after this RFC 3339 time.
    pub created_after: Option<&'a str>,
    /// Created before this RFC 3339 time.
    pub created_before: Option<&'a str>,
    /// Finished before this RFC 3339 time.
    pub finished_before: Option<&'a str>,
    /// Of this orchestration.
    pub name: Option<&'a str>,
    /// In these statuses (all those the operation applies to when empty).
    pub statuses: &'a [String],
}

impl InstanceFilter<'_> {
    /// The filter as query parameters of the management API.
    fn query(&self) -> String {
        let fields = [
            ("createdTimeFrom", self.created_after),
            ("createdTimeTo", self.created_before),
            ("finishedTimeTo", self.finished_before),
            ("name", self.name),
        ];
        let mut params: Vec<String> =
            fields.iter().filter_map(|(key, value)| value.map(|v| format!("{key}={}", encode(v)))).collect();
        if !self.statuses.is_empty() {
            params.push(format!("runtimeStatus={}", encode(&self.statuses.join(","))));
        }
        params.join("&")
    }
}

/// Prints a dry run's answer: how many instances `verb` would act on, and the first of them.
fn print_dry_run(result: &Value, verb: &str) {
    let matched = result.get("matched").and_then(Value::as_u64).unwrap_or(0);
    let at_least = if result.get("complete").and_then(Value::as_bool) == Some(false) { "at least " } else { "" };
    let listed = result.get("instances").and_then(Value::as_array).cloned().unwrap_or_default();
    let more = match listed.len() {
        0 => String::new(),
        n if (n as u64) < matched => format!("; the first {n}:"),
        _ => ":".to_owned(),
    };
    let children = if verb == "purge" { ", with their finished sub-orchestrations" } else { "" };
    println!("would {verb} {at_least}{matched} instance(s){children}{more}");
    for instance in &listed {
        let field = |key: &str| instance.get(key).and_then(Value::as_str).unwrap_or("-").to_owned();
        let (id, name, status, updated) =
            (field("instanceId"), field("name"), field("runtimeStatus"), field("lastUpdatedTime"));
        println!("{id}\t{name}\t{status}\tlast updated {updated}");
    }
}

fn encode(text: &str) -> String {
    kiln_http::urls::encode_component(text)
}

//! A lean HTTP/1.1 client for the load generator: one keep-alive connection per client and
//! server, on hyper, so that generating load costs far less CPU than serving it.

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use std::collections::HashMap;
use tokio::net::TcpStream;

/// An answer, read to the end.
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// `Retry-After` in seconds, if the server sent one.
    pub retry_after: Option<u64>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the server answered with a body that is not JSON")
    }
}

/// One client's connections, one per server (`host:port`), opened on first use and reopened
/// when the server closes them.
#[derive(Default)]
pub struct Client {
    connections: HashMap<String, SendRequest<Full<Bytes>>>,
}

impl Client {
    /// Sends a request to an absolute `http://` URL.
    pub async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let (authority, path) = split_url(url)?;
        let mut request = Request::builder().method(method).uri(path).header("host", authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
        let sender = self.connection(authority).await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                self.connections.remove(authority);
                return Err(err).with_context(|| format!("request to {authority} failed"));
            }
        };
        let status = response.status();
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = response.into_body().collect().await.context("reading an answer failed")?.to_bytes();
        Ok(Answer { status, retry_after, body })
    }

    async fn connection(&mut self, authority: &str) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let usable = match self.connections.get_mut(authority) {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = TcpStream::connect(authority).await.with_context(|| format!("cannot reach {authority}"))?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.connections.insert(authority.to_owned(), sender);
        }
        self.connections.get_mut(authority).context("connection vanished")
    }
}

/// Splits `http://host:port/path?query` into the authority and the path with its query.
pub fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs can be loaded, not '{url}'");
    };
    Ok(match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(split_url("http://127.0.0.1:7071/api/x?token=a").unwrap(), ("127.0.0.1:7071", "/api/x?token=a"));
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
        assert!(split_url("https://h/").is_err());
    }
}

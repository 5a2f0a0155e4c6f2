//! Problem details for the errors hyper answers by itself.
//!
//! A request hyper cannot parse (headers too large: `431`; a request target too long: `414`;
//! broken framing or a malformed request line: `400`) never reaches Kiln's router: hyper writes
//! a bare head (`connection: close`, `content-length: 0`, `date`) and closes. [`ProblemErrors`]
//! wraps a connection and turns that head into the same status with an RFC 9457 body, as every
//! other Kiln error has.
//!
//! Only a write that cannot hold a response of the service's is looked at: the service marks
//! each response it produces ([`ServiceResponses`]) until its body is gone and the connection
//! flushed, so no body a client chose, however much it looks like hyper's head, is rewritten.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The service's responses on one connection whose bytes may still be written.
#[derive(Debug, Default)]
pub struct ServiceResponses {
    /// Responses whose body is still alive.
    open: AtomicUsize,
    /// A body ended since the connection was last flushed: its last bytes may be unwritten.
    unflushed: AtomicBool,
}

/// A response of the service's, until its body is dropped.
#[derive(Debug)]
pub struct ResponseInFlight(Arc<ServiceResponses>);

impl ServiceResponses {
    /// Marks a response produced; keep the guard with its body.
    pub fn track(self: &Arc<Self>) -> ResponseInFlight {
        self.open.fetch_add(1, Ordering::SeqCst);
        ResponseInFlight(Arc::clone(self))
    }

    /// Whether nothing the service produced can be in the next write.
    fn all_written(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0 && !self.unflushed.load(Ordering::SeqCst)
    }
}

impl Drop for ResponseInFlight {
    fn drop(&mut self) {
        self.0.unflushed.store(true, Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// A connection whose writes pass through unchanged, except hyper's own error answers.
    pub struct ProblemErrors<S> {
        #[pin]
        inner: S,
        responses: Arc<ServiceResponses>,
        // The rewritten answer, and how much of it is written.
        pending: Vec<u8>,
        written: usize,
    }
}

impl<S> ProblemErrors<S> {
    /// Wraps a connection whose service marks its responses in `responses`.
    pub fn new(inner: S, responses: Arc<ServiceResponses>) -> ProblemErrors<S> {
        ProblemErrors { inner, responses, pending: Vec::new(), written: 0 }
    }
}

impl<S: AsyncWrite> ProblemErrors<S> {
    /// Writes what is left of a rewritten answer.
    fn poll_drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.written < this.pending.len() {
            let wrote = ready!(this.inner.as_mut().poll_write(cx, &this.pending[*this.written..]))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.written += wrote;
        }
        this.pending.clear();
        *this.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead> AsyncRead for ProblemErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> ProblemErrors<S> {
    /// Takes hyper's error head whole, rewritten (written by this and the next calls: hyper
    /// flushes after an error answer).
    fn take_rewritten(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        head: &[u8],
        status: u16,
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        this.pending.extend_from_slice(problem_answer(status, head).as_bytes());
        match self.poll_drain(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(head.len())),
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for ProblemErrors<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_drain(cx))?;
        match self.responses.all_written().then(|| hyper_error_head(buf)).flatten() {
            Some(status) => self.take_rewritten(cx, buf, status),
            None => self.project().inner.poll_write(cx, buf),
        }
    }

    /// hyper's error head is one buffer of its own (it has no body).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_drain(cx))?;
        let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
        let only = filled.next().filter(|_| filled.next().is_none());
        match only.filter(|_| self.responses.all_written()).and_then(|buf| Some((buf, hyper_error_head(buf)?))) {
            Some((buf, status)) => self.take_rewritten(cx, buf, status),
            None => self.project().inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_drain(cx))?;
        let this = self.project();
        ready!(this.inner.poll_flush(cx))?;
        if this.responses.open.load(Ordering::SeqCst) == 0 {
            this.responses.unflushed.store(false, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_drain(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

/// Longest head hyper writes for an error (its status line and three short headers).
const MAX_ERROR_HEAD: usize = 256;

/// The status, when `buf` is exactly a bodiless error head as hyper writes it:
/// `HTTP/1.1 4xx|5xx …`, then `connection: close`, `content-length: 0` and `date: …`.
fn hyper_error_head(buf: &[u8]) -> Option<u16> {
    if buf.len() > MAX_ERROR_HEAD || !buf.starts_with(b"HTTP/1.1 ") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.get(9..12)?.parse().ok()?;
    let headers: Vec<&str> = lines.collect();
    let hyper_s =
        matches!(headers.as_slice(), ["connection: close", "content-length: 0", date] if date.starts_with("date: "));
    (hyper_s && status >= 400).then_some(status)
}

/// The same answer with a problem+json body (and hyper's `date`).
fn problem_answer(status: u16, head: &[u8]) -> String {
    let code = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let title = code.canonical_reason().unwrap_or("Error");
    let detail = match status {
        400 => "the request is not valid HTTP/1.1 (a malformed request line or header, or broken framing)",
        414 => "the request target (URL) is too long",
        431 => "the request's headers are too large",
        _ => title,
    };
    let body =
        serde_json::json!({ "type": "about:blank", "title": title, "status": status, "detail": detail }).to_string();
    let date = std::str::from_utf8(head)
        .ok()
        .and_then(|head| head.split("\r\n").find(|line| line.to_ascii_lowercase().starts_with("date: ")))
        .map(|line| format!("{line}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\nconnection: close\r\n\
         content-length: {}\r\n{date}\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HYPER_431: &str = "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\
                             date: Fri, 27 Nov 2026 06:35:42 GMT\r\n\r\n";

    fn connection() -> (ProblemErrors<Vec<u8>>, Arc<ServiceResponses>) {
        let responses = Arc::new(ServiceResponses::default());
        (ProblemErrors::new(Vec::new(), Arc::clone(&responses)), responses)
    }

    async fn written(chunks: &[&str]) -> String {
        let (mut out, _) = connection();
        for chunk in chunks {
            out.write_all(chunk.as_bytes()).await.unwrap();
        }
        out.flush().await.unwrap();
        String::from_utf8(out.inner).unwrap()
    }

    #[tokio::test]
    async fn hyper_s_bare_error_heads_get_a_problem_body() {
        let answer = written(&[HYPER_431]).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("content-type: application/problem+json") && head.contains("date: Fri, 27 Nov"));
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (problem["status"].as_u64(), problem["title"].as_str()),
            (Some(431), Some("Request Header Fields Too Large"))
        );
        let (mut out, _) = connection();
        let taken = out.write_vectored(&[io::IoSlice::new(b""), io::IoSlice::new(HYPER_431.as_bytes())]).await.unwrap();
        assert_eq!(taken, HYPER_431.len());
        out.flush().await.unwrap();
        assert!(String::from_utf8(out.inner).unwrap().contains("\"status\":431"), "vectored too");
    }

    /// A body a client chose (an echo) may look exactly like hyper's head: while the service's
    /// response is being written, and until the connection is flushed after it, nothing is
    /// rewritten.
    #[tokio::test]
    async fn nothing_the_service_answers_is_rewritten() {
        let (mut out, responses) = connection();
        let response = responses.track();
        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 110\r\n\r\n").await.unwrap();
        drop(response);
        out.write_all(HYPER_431.as_bytes()).await.unwrap();
        out.flush().await.unwrap();
        let written = String::from_utf8(out.inner.clone()).unwrap();
        assert!(written.ends_with(HYPER_431) && !written.contains("problem"), "{written}");
        out.write_all(HYPER_431.as_bytes()).await.unwrap();
        out.flush().await.unwrap();
        assert!(
            String::from_utf8(out.inner)
                .unwrap()
                .ends_with("\"status\":431,\"title\":\"Request Header Fields Too Large\",\"type\":\"about:blank\"}")
        );
    }

    #[tokio::test]
    async fn every_other_answer_passes_unchanged() {
        let answers = [
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 5\r\n\r\nlater",
            "half of a head: HTTP/1.1 400 Bad",
        ];
        for answer in answers {
            assert_eq!(written(&[answer]).await, answer);
        }
        let pipelined = format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n{HYPER_431}");
        assert_eq!(written(&[&pipelined]).await, pipelined, "not alone in its write: left as it is");
    }
}

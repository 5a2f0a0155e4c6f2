//! Problem details for the errors hyper answers by itself.
//!
//! A request hyper cannot parse (headers too large: `431`; a request target too long: `414`;
//! broken framing or a malformed request line: `400`) never reaches Kiln's router: hyper writes
//! a bare head (`connection: close`, `content-length: 0`, `date`) and closes. [`ProblemErrors`]
//! wraps a connection and turns that head, and only that head, into the same status with an
//! RFC 9457 body, as every other Kiln error has. Kiln's own error responses always carry a
//! `content-type`, so they never look like hyper's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// A connection whose writes pass through unchanged, except hyper's own error answers.
    pub struct ProblemErrors<S> {
        #[pin]
        inner: S,
        // The rewritten answer, and how much of it is written.
        pending: Vec<u8>,
        written: usize,
    }
}

impl<S> ProblemErrors<S> {
    /// Wraps a connection.
    pub fn new(inner: S) -> ProblemErrors<S> {
        ProblemErrors { inner, pending: Vec::new(), written: 0 }
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
    /// Takes `before` and the rewritten error head `head` whole (written by this and the next
    /// calls: hyper flushes after an error answer).
    fn take_rewritten(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        before: &[&[u8]],
        head: &[u8],
        status: u16,
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        before.iter().for_each(|part| this.pending.extend_from_slice(part));
        this.pending.extend_from_slice(problem_answer(status, head).as_bytes());
        let taken = before.iter().map(|part| part.len()).sum::<usize>() + head.len();
        match self.poll_drain(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(taken)),
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for ProblemErrors<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_drain(cx))?;
        match hyper_error_head(buf) {
            Some((start, status)) => self.take_rewritten(cx, &[&buf[..start]], &buf[start..], status),
            None => self.project().inner.poll_write(cx, buf),
        }
    }

    /// An error head is the last buffer hyper queues (it has no body): only then is the whole
    /// write taken and rewritten.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_drain(cx))?;
        let last = bufs.iter().rposition(|buf| !buf.is_empty());
        match last.and_then(|at| hyper_error_head(&bufs[at]).map(|found| (at, found))) {
            Some((at, (start, status))) => {
                let mut before: Vec<&[u8]> = bufs[..at].iter().map(|buf| &**buf).collect();
                before.push(&bufs[at][..start]);
                self.take_rewritten(cx, &before, &bufs[at][start..], status)
            }
            None => self.project().inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_drain(cx))?;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_drain(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

/// Where a bodiless error head as hyper writes it ends `buf`, and its status: the last message
/// in the buffer is `HTTP/1.x 4xx|5xx …`, with no headers but `connection`, `content-length: 0`
/// and `date`.
fn hyper_error_head(buf: &[u8]) -> Option<(usize, u16)> {
    let start = buf.windows(7).rposition(|w| w == b"HTTP/1.")?;
    let head = std::str::from_utf8(&buf[start..]).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.get(9..12)?.parse().ok()?;
    let mut bodiless = false;
    for line in lines {
        match line.to_ascii_lowercase().as_str() {
            "content-length: 0" => bodiless = true,
            "connection: close" => {}
            other if other.starts_with("date: ") => {}
            _ => return None,
        }
    }
    (bodiless && status >= 400).then_some((start, status))
}

/// The same answer with a problem+json body (and hyper's `date`).
fn problem_answer(status: u16, head: &[u8]) -> String {
    let code = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let title = code.canonical_reason().unwrap_or("Error");
    let detail = match status {
        400 => "the request is not valid HTTP/1.1 (a malformed request line or header, or broken framing)",
        414 => "the request target (URL) is too long",
        431 => "the request's headers are too large",
        505 => "only HTTP/1.1 (and HTTP/1.0) are spoken here",
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

    async fn written(chunks: &[&str]) -> String {
        let mut out = ProblemErrors::new(Vec::new());
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
        // After a pipelined answer in the same buffer.
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let both =
            written(&[&format!("{ok}{}", HYPER_431.replace("431 Request Header Fields Too Large", "400 Bad Request"))])
                .await;
        assert!(both.starts_with(ok) && both.contains("\"status\":400"), "{both}");
    }

    #[tokio::test]
    async fn vectored_writes_are_rewritten_when_their_last_buffer_is_an_error_head() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let mut out = ProblemErrors::new(Vec::new());
        let bufs = [io::IoSlice::new(ok.as_bytes()), io::IoSlice::new(b"{}"), io::IoSlice::new(HYPER_431.as_bytes())];
        let taken = out.write_vectored(&bufs).await.unwrap();
        assert_eq!(taken, ok.len() + 2 + HYPER_431.len());
        out.flush().await.unwrap();
        let written = String::from_utf8(out.inner).unwrap();
        assert!(
            written.starts_with(&format!("{ok}{{}}HTTP/1.1 431 ")) && written.contains("\"status\":431"),
            "{written}"
        );
        let mut plain = ProblemErrors::new(Vec::new());
        assert_eq!(plain.write_vectored(&bufs[..2]).await.unwrap(), ok.len() + 2);
        assert_eq!(String::from_utf8(plain.inner).unwrap(), format!("{ok}{{}}"));
    }

    #[tokio::test]
    async fn every_other_answer_passes_unchanged() {
        let answers = [
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 5\r\n\r\nlater",
            "half of a head: HTTP/1.1 400 Bad",
        ];
        for answer in answers {
            assert_eq!(written(&[answer]).await, answer);
        }
        assert_eq!(
            written(&["HTTP/1.1 200 OK\r\n", "content-length: 0\r\n\r\n"]).await,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        );
    }
}

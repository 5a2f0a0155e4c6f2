//! The accept loop behind both listeners, with the limits a public HTTP server needs: a cap on
//! open connections (beyond it, new ones get `503` + `Retry-After` and are closed), timeouts
//! for reading a request's headers, for an idle keep-alive connection and between the chunks of
//! a body, graceful shutdown, and problem details for the errors hyper answers by itself.

use crate::protocol_errors::{ProblemErrors, ServiceResponses};
use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, and to start the next request on
    /// an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// Longest a client may pause while sending a request body.
    pub body_read_timeout: Duration,
    /// Longest requests in progress may take to finish once the listener stops accepting.
    pub drain_timeout: Duration,
}

/// The body of the answer to a connection beyond the cap.
const SHED_BODY: &str = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"too many open connections; retry in a second"}"#;

/// The whole answer to a connection beyond the cap.
fn shed_response() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{SHED_BODY}",
        SHED_BODY.len()
    )
}

/// File descriptors kept out of the connection caps: the store's connections and files, the
/// listeners, logs.
const RESERVED_FILES: u64 = 128;

/// The connection caps of the public and the management listener: `max_connections` (or
/// 10,000) and 256, each cut to fit the process's open-file limit, which is first raised to its
/// hard limit. (Past that limit, `accept` fails and new clients hang instead of getting `503`.)
pub fn connection_caps(max_connections: Option<usize>) -> (usize, usize) {
    let files = raise_open_file_limit().unwrap_or(1024).saturating_sub(RESERVED_FILES).max(8);
    let fit = |share: u64, wanted: usize| usize::try_from(files * share / 4).unwrap_or(usize::MAX).min(wanted).max(1);
    (fit(3, max_connections.unwrap_or(10_000)), fit(1, 256))
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.or(Some(u64::MAX));
        }
    }
    limit.current.or(Some(u64::MAX))
}

/// Most connections beyond the cap being answered `503` at once.
const MAX_SHEDDING: usize = 64;

/// How long the accept loop pauses after an accept error (e.g. out of file descriptors), so
/// that it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let shedding = Arc::new(Semaphore::new(MAX_SHEDDING));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Answering takes a file descriptor for up to a second: beyond a few at once, the
            // connection is just closed.
            if let Ok(answering) = Arc::clone(&shedding).try_acquire_owned() {
                tokio::spawn(async move {
                    shed(stream).await;
                    drop(answering);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_read_timeout;
        let responses = Arc::new(ServiceResponses::default());
        let service_responses = Arc::clone(&responses);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(|body| Body::new(PausingBody::new(body, body_timeout)));
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let answered = tower::ServiceExt::oneshot(router.clone(), request);
            let responses = Arc::clone(&service_responses);
            async move {
                let response = answered.await?;
                let in_flight = responses.track();
                // The guard lives as long as the body: until hyper has taken all of it.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        });
        let io = TokioIo::new(ProblemErrors::new(stream, responses));
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            // A client that went away or broke the protocol: nothing to do but close.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "requests still in progress at shutdown are cut off");
    }
    Ok(())
}

/// The most a connection buffers while reading a request's head (hyper's default is about
/// 400 KiB). Bigger heads are refused `431`. hyper checks the limit only while a head is still
/// incomplete, and one read may take in more than the limit: with the default, a 500 KB header
/// that arrived whole was served (seen under load). A third of that default keeps the refusal
/// certain for such heads and still takes a 100 KB request target whole, which is then refused
/// `414`.
const MAX_REQUEST_HEAD: usize = 128 * 1024;

/// Answers a connection beyond the cap with `503` and closes it. What the client has sent so
/// far is read first (without waiting for more): closing with unread input would reset the
/// connection, and the client might not see the answer.
async fn shed(mut stream: tokio::net::TcpStream) {
    let answer = async {
        stream.write_all(shed_response().as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0; 4096];
        while stream.try_read(&mut sink).is_ok_and(|read| read > 0) {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

pin_project_lite::pin_project! {
    /// A request body that fails when the client pauses longer than `limit` between chunks
    /// (counted from the handler's first read).
    struct PausingBody {
        #[pin]
        inner: Incoming,
        #[pin]
        deadline: tokio::time::Sleep,
        limit: Duration,
        reading: bool,
    }
}

impl PausingBody {
    fn new(inner: Incoming, limit: Duration) -> PausingBody {
        PausingBody { inner, deadline: tokio::time::sleep(limit), limit, reading: false }
    }
}

/// The client paused too long while sending a body.
#[derive(Debug, thiserror::Error)]
#[error("the client paused longer than {0:?} while sending the request body")]
struct BodyReadTimeout(Duration);

impl hyper::body::Body for PausingBody {
    type Data = hyper::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if !*this.reading {
            *this.reading = true;
            this.deadline.as_mut().reset(tokio::time::Instant::now() + *this.limit);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.as_mut().reset(tokio::time::Instant::now() + *this.limit);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyReadTimeout(*this.limit).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

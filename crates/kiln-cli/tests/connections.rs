//! Connection hygiene of a real `kiln serve`: idle connections cannot exhaust it, slow clients
//! are cut off, and an announced oversized body is refused before it is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, free_port, log_path, wait_ready};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed when dropped (also when a test fails).
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kiln serve` with at most `files` open files (soft and hard: it cannot raise the limit).
fn serve_with_file_limit(dir: &std::path::Path, ports: (u16, u16), files: u32, args: &[&str]) -> Serving {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(ports.0)).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--management-listen", &format!("127.0.0.1:{}", ports.1)])
        .args(args)
        .current_dir(dir)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let serving = Serving(child);
    wait_ready(&format!("http://127.0.0.1:{}", ports.0));
    serving
}

/// Sends `request` on a new connection and reads the answer's status line (or "" if the server
/// closed the connection without one), giving up after `patience`.
fn status_line(port: u16, request: &str, patience: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

fn healthz(port: u16) -> String {
    status_line(port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", Duration::from_secs(5))
}

/// With 256 open files at most, 300 idle connections made both listeners' `/healthz` hang
/// (`accept` failed with "Too many open files"). Now the public listener sheds what is beyond
/// its cap with `503` at once, the management listener keeps answering, and once the idle
/// connections are cut off (read timeout) the public listener answers again.
#[test]
fn idle_connections_cannot_exhaust_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let _server = serve_with_file_limit(dir.path(), ports, 256, &["--read-timeout-seconds", "2"]);
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(("127.0.0.1", ports.0)).ok()).collect();
    assert!(idle.len() >= 250, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    let public = healthz(ports.0);
    assert!(public.starts_with("HTTP/1.1 503") || public.starts_with("HTTP/1.1 200"), "public: {public:?}");
    assert_eq!(healthz(ports.1), "HTTP/1.1 200 OK", "the management listener has connections of its own");
    assert!(began.elapsed() < Duration::from_secs(4), "answered, not hung: {:?}", began.elapsed());
    // The idle connections are closed after the read timeout; the public listener answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(ports.0) != "HTTP/1.1 200 OK" {
        assert!(Instant::now() < deadline, "the idle connections were never cut off");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
}

/// A client that stops mid-headers, or mid-body, is cut off after the read timeout; an idle
/// keep-alive connection too.
#[test]
fn slow_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let _server = serve_with_file_limit(dir.path(), ports, 1024, &["--read-timeout-seconds", "1"]);
    let closed_within = |stream: &mut TcpStream, patience: Duration| {
        stream.set_read_timeout(Some(patience)).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).is_ok()
    };
    let mut half_headers = TcpStream::connect(("127.0.0.1", ports.0)).unwrap();
    half_headers.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    assert!(closed_within(&mut half_headers, Duration::from_secs(5)), "headers never finished");

    let mut half_body = TcpStream::connect(("127.0.0.1", ports.0)).unwrap();
    let head = "POST /api/jobs/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    half_body.write_all(head.as_bytes()).unwrap();
    half_body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = half_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400") || answer.is_empty(), "a stalled body: {answer:?}");

    let mut keep_alive = TcpStream::connect(("127.0.0.1", ports.0)).unwrap();
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert!(closed_within(&mut keep_alive, Duration::from_secs(5)), "an idle keep-alive connection stays open");
}

/// A body announced at 10 GB with `Expect: 100-continue` gets `413` at once, not
/// `100 Continue`.
#[test]
fn an_announced_oversized_body_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let _server = serve_with_file_limit(dir.path(), ports, 1024, &[]);
    let request = "POST /api/jobs/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                   Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(status_line(ports.0, request, Duration::from_secs(5)), "HTTP/1.1 413 Payload Too Large");
    let small = agent()
        .post(format!("http://127.0.0.1:{}/api/jobs/reports", ports.0))
        .header("content-type", "application/json")
        .send(r#"{"customer_id":"c-1","delay_seconds":0}"#)
        .unwrap();
    assert_eq!(small.status(), 202);
}

/// Sends raw bytes on a new connection and reads the whole answer, until the server closes.
fn raw_answer(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// What hyper refuses before Kiln's router sees a request (headers too large, a request target
/// too long, broken framing) is answered with problem+json too, on both listeners; a request
/// before it on the same connection is answered as usual.
#[test]
fn requests_hyper_cannot_parse_get_problem_details() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let _server = serve_with_file_limit(dir.path(), ports, 1024, &[]);
    let huge_header = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "a".repeat(500_000));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a".repeat(100_000));
    let cases = [
        (huge_header.into_bytes(), 431),
        (long_target.into_bytes(), 414),
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (b"GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n".to_vec(), 400),
    ];
    for port in [ports.0, ports.1] {
        for (request, status) in &cases {
            let answer = raw_answer(port, request);
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
            let problem: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(problem["status"], *status, "{body}");
        }
    }
    let pipelined = raw_answer(
        ports.0,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    );
    assert!(pipelined.starts_with("HTTP/1.1 200 OK\r\n") && pipelined.contains("{\"status\":\"ok\"}"), "{pipelined}");
    assert!(pipelined.contains("HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json"), "{pipelined}");
}

/// Starters are rate-limited per client address (the connection's peer, as the listener sees it).
#[test]
fn starters_are_rate_limited_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let _server =
        serve_with_file_limit(dir.path(), ports, 1024, &["--starter-rate-per-second", "0.2", "--starter-burst", "1"]);
    let start = || {
        agent()
            .post(format!("http://127.0.0.1:{}/api/jobs/reports", ports.0))
            .header("content-type", "application/json")
            .send(r#"{"customer_id":"c-1","delay_seconds":0}"#)
            .unwrap()
    };
    assert_eq!(start().status(), 202);
    let limited = start();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers().get("retry-after").unwrap(), "5");
}

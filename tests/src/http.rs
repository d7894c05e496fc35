//! The stages' HTTP port (`telemetry.http_addr`) from a test's side: where a process
//! serves, plain `GET`s, and reading a Prometheus text page.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::Proc;

/// The address `proc` serves `/healthz`, `/readyz` and `/metrics` on, from its log (it
/// was started with `VIGIL__TELEMETRY__HTTP_ADDR=127.0.0.1:0`, so the port is its own).
pub fn served_addr(proc: &mut Proc, timeout: Duration) -> String {
    assert!(proc.wait_for_log("serving /healthz", timeout), "{} never served HTTP:\n{}", proc.label, proc.stderr());
    let log = proc.stderr();
    let line = log.lines().find(|l| l.contains("serving /healthz")).expect("found above");
    let addr = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next());
    addr.unwrap_or_else(|| panic!("no addr= in {line:?}")).to_owned()
}

/// The address the API of `proc` (`vigil serve` or `vigil up`, started with port 0)
/// serves on, from its log.
pub fn api_addr(proc: &mut Proc) -> String {
    let needle = "API serving on http://";
    assert!(proc.wait_for_log(needle, Duration::from_secs(120)), "the API never served:\n{}", proc.stderr());
    let log = proc.stderr();
    let line = log.lines().find(|l| l.contains(needle)).expect("found above");
    let rest = line.split(needle).nth(1).expect("address after the needle");
    rest.split_whitespace().next().expect("an address").to_owned()
}

/// Status code and body of `GET path` on `addr`.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Polls `GET path` until it answers `status`; the last answer when `timeout` passes.
pub fn wait_status(addr: &str, path: &str, status: u16, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = get(addr, path);
        if answer.0 == status || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the sample `key` (a metric name with its labels as written, e.g.
/// `vigil_transactions_total{outcome="committed"}`) on a Prometheus text page.
pub fn sample(page: &str, key: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An answer: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy), and as received.
    pub body: String,
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `method path` on `addr` with `headers` and `body` (HTTP/1.1, `Connection: close`),
/// waiting up to `timeout` for the answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("request head");
    // The server may answer (413) and close before it has read the whole body.
    stream.write_all(body).ok();
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            panic!("{method} {path} on {addr}: {e}");
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |at| at + 4);
    let (head, bytes) = (String::from_utf8_lossy(&raw[..split]).into_owned(), raw[split..].to_vec());
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned(), bytes }
}

/// Opens `GET path` as an event stream and reads until the text received contains
/// `needle` (returned: everything read) or `timeout` passes (`None`).
pub fn read_stream_until(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    needle: &str,
    timeout: Duration,
) -> Option<String> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("request head");
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the stream {path}: {e}"),
        }
        let text = String::from_utf8_lossy(&received);
        if text.contains(needle) {
            return Some(text.into_owned());
        }
    }
    None
}

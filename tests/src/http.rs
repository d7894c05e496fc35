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

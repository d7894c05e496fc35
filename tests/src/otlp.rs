//! An OTLP/HTTP receiver for tests: it accepts `POST /v1/traces` (protobuf) on
//! 127.0.0.1, the way a collector or Jaeger does, and keeps every span it was sent with
//! the `service.name` of the process that sent it. Other paths (e.g. `/v1/metrics`)
//! are acknowledged and counted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    /// OTLP's `SpanKind` number (2 server, 3 client, 4 producer, 5 consumer, 1 internal).
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    pub attributes: HashMap<String, String>,
    /// OTLP's status code (2 = error).
    pub status_code: i32,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// Requests by path.
    requests: HashMap<String, usize>,
}

/// The running receiver; it stops with the test process.
#[derive(Clone)]
pub struct Receiver {
    pub endpoint: String,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { endpoint, received }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Requests received on `path` so far.
    pub fn requests(&self, path: &str) -> usize {
        self.received.lock().unwrap().requests.get(path).copied().unwrap_or(0)
    }
}

/// Answers the requests of one connection (HTTP/1.1, keep-alive) until it closes.
fn serve(stream: TcpStream, received: &Mutex<Received>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        {
            let mut received = received.lock().unwrap();
            *received.requests.entry(path.clone()).or_default() += 1;
            if path == "/v1/traces" {
                let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export");
                received.spans.extend(flatten(request));
            }
        }
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Span {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    attributes: attributes(&span.attributes),
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The HTTP port of a long-running process (`telemetry.http_addr`): `/healthz`,
//! `/readyz` and `/metrics`. One module and one listener, so that the API (a later
//! issue) and `vigil up` add routes rather than ports.
//!
//! - `/healthz`: 200 while every stage's loop turns (see [`Health`]), 503 once one has
//!   not for [`crate::health::LIVENESS_WINDOW`]. Never asks the broker or the database.
//! - `/readyz`: 200 when every stage can work now, else 503 with the reasons as the body.
//! - `/metrics`: the process's metrics as Prometheus text (see `metrics`).
//!
//! Served on the async runtime: every handler only reads atomics or collects metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::Health;
use crate::metrics;

/// Why the HTTP port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} ({key}): {cause}; choose a free port or unset it")]
    Bind { key: &'static str, addr: String, cause: std::io::Error },
}

impl HttpError {
    /// A port taken or not allowed is the configuration's to fix (exit 2).
    pub fn is_usage(&self) -> bool {
        true
    }
}

/// The running server: its address (the real port when 0 was asked for) and its task,
/// which ends when the shutdown token fires.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// The stages a process runs, each with its [`Health`] (`vigil up` runs two): the
/// process is alive while every loop turns and ready while every stage is.
pub type Stages = Vec<(&'static str, Health)>;

/// Starts serving the health of `stages` and the metrics on `addr` until `shutdown`.
pub async fn serve(addr: &str, stages: Stages, shutdown: CancellationToken) -> Result<HttpServer, HttpError> {
    let server = serve_app(addr, "telemetry.http_addr", health_routes(stages), shutdown).await?;
    info!(addr = %server.addr, "serving /healthz, /readyz and /metrics");
    Ok(server)
}

/// `/healthz`, `/readyz` and `/metrics` of `stages`, to serve alone or beside other routes.
pub fn health_routes(stages: Stages) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .with_state(Arc::new(stages))
}

/// Serves `app` on `addr` (the setting `key` names it in errors) until `shutdown`, then
/// lets the requests in progress finish. Handlers see the client's address
/// (`ConnectInfo<SocketAddr>`).
pub async fn serve_app(
    addr: &str,
    key: &'static str,
    app: Router,
    shutdown: CancellationToken,
) -> Result<HttpServer, HttpError> {
    let bind_error = |cause| HttpError::Bind { key, addr: addr.to_owned(), cause };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(async move {
        let stopped = shutdown.cancelled_owned();
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(stopped).await {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(HttpServer { addr: bound, task })
}

/// `what` of each stage it concerns, named when there are several.
fn each(stages: &Stages, what: impl Fn(&Health) -> Option<String>) -> Option<String> {
    let named = stages.len() > 1;
    let found: Vec<String> = stages
        .iter()
        .filter_map(|(name, health)| what(health).map(|w| if named { format!("{name}: {w}") } else { w }))
        .collect();
    (!found.is_empty()).then(|| found.join("; "))
}

async fn healthz(State(stages): State<Arc<Stages>>) -> Response {
    let stuck = |h: &Health| {
        (!h.is_alive()).then(|| format!("the main loop has not turned for {} s", h.since_beat().as_secs()))
    };
    match each(&stages, stuck) {
        None => (StatusCode::OK, "alive\n").into_response(),
        Some(stuck) => (StatusCode::SERVICE_UNAVAILABLE, format!("stuck: {stuck}\n")).into_response(),
    }
}

async fn readyz(State(stages): State<Arc<Stages>>) -> Response {
    match each(&stages, Health::reason) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn prometheus() -> Response {
    match metrics::render_prometheus() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot collect metrics: {e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Status code and body of `GET path` (HTTP/1.1, no client crate needed).
    pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn health_and_readiness_answer_what_the_stage_says() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let server = serve("127.0.0.1:0", vec![("detector", health.clone())], shutdown.clone()).await.unwrap();
        assert_eq!(get(server.addr, "/healthz").await, (200, "alive\n".into()));
        assert_eq!(get(server.addr, "/readyz").await, (503, "not ready: starting\n".into()));
        health.set_ready();
        assert_eq!(get(server.addr, "/readyz").await, (200, "ready\n".into()));
        health.set_not_ready("database unavailable: connection refused");
        let (status, body) = get(server.addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: database unavailable: connection refused\n"));
        assert_eq!(get(server.addr, "/nothing").await.0, 404);
        let (status, _) = get(server.addr, "/metrics").await;
        assert_eq!(status, 200);
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server.task).await.unwrap().unwrap();
    }

    /// `vigil up` serves two stages on one port: ready only when both are, and the
    /// reason names the stage.
    #[tokio::test]
    async fn several_stages_are_ready_together() {
        let (detector, sink) = (Health::new(), Health::new());
        let shutdown = CancellationToken::new();
        let stages = vec![("detector", detector.clone()), ("sink", sink.clone())];
        let server = serve("127.0.0.1:0", stages, shutdown.clone()).await.unwrap();
        detector.set_ready();
        sink.set_not_ready("opening the database");
        assert_eq!(get(server.addr, "/readyz").await, (503, "not ready: sink: opening the database\n".into()));
        sink.set_ready();
        assert_eq!(get(server.addr, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(server.addr, "/healthz").await.0, 200);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let Err(e) = serve(&addr, vec![("sink", Health::new())], CancellationToken::new()).await else {
            panic!("bound twice")
        };
        assert!(e.to_string().contains("telemetry.http_addr"), "{e}");
    }
}

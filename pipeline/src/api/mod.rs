//! `vigil serve`: the pipeline's HTTP face, for cameras and apps that cannot speak Kafka.
//! Stateless (any number of replicas behind a load balancer): uploads become Frames on
//! `images`, results are read from the sink's database.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/frames?source=ID` | an image in (body `image/*`, or multipart part `image`); `202 {frame_id, …}` once the brokers acknowledged it |
//! | `GET /v1/frames/{frame_id}[?wait=S]` | its stored result; 404 until stored; `wait` long-polls |
//! | `GET /v1/frames/{frame_id}/image` | its image, read back from `images` |
//! | `GET /v1/sources/{source}/detections` | a source's results, newest first (`since`, `label`, `min_score`, `limit`, `cursor`) |
//! | `GET /v1/sources` | the sources with results |
//! | `GET /v1/stream[?source=][&label=]` | results as they are stored (Server-Sent Events) |
//! | `GET /` | the viewer: latest frames with boxes, live detections, stage latencies |
//! | `/healthz`, `/readyz`, `/metrics` | as every stage (ready: a broker and the database answer) |
//! | `GET /openapi.json` | all of the above as OpenAPI 3.1, generated from the handlers |
//!
//! `/v1` routes need `Authorization: Bearer TOKEN` when `api.tokens` is set, and are rate
//! limited per token (module `guard`). Errors are JSON `{"error": {"code", "message"}}`.

mod config;
mod extract;
mod guard;
mod images;
mod ingest;
mod openapi;
mod reply;
mod results;
mod results_db;
mod schema;
mod stream;
mod viewer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::config::{Access, ApiConfig};
use self::guard::Guard;
use self::ingest::Ingest;
use self::reply::Refusal;
use self::results_db::ResultsDb;
pub use self::results_db::ResultsDbError;
use crate::health::Health;
use crate::http::{self, HttpError, HttpServer};
use crate::kafka::{ensure_topics, idempotent_producer_config, KafkaPlumbingError};
use crate::settings::Settings;

/// How often readiness asks the broker and the database.
const READINESS_EVERY: Duration = Duration::from_secs(5);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0} (sink.database_url; the API reads the results the sink stores there)")]
    Database(#[from] ResultsDbError),
    #[error("cannot create the Kafka producer: {0} (check kafka.bootstrap_servers and kafka.client.*)")]
    Producer(rdkafka::error::KafkaError),
    #[error("cannot create the Kafka consumer that reads images back: {0} (check kafka.client.*)")]
    Consumer(rdkafka::error::KafkaError),
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
}

impl ApiError {
    /// The configuration is the user's to fix (exit 2).
    pub fn is_usage(&self) -> bool {
        match self {
            ApiError::Http(e) => e.is_usage(),
            ApiError::Kafka(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// What every handler shares.
pub(crate) struct App {
    config: ApiConfig,
    ingest: Ingest,
    db: ResultsDb,
    images: Arc<images::ImageReader>,
    feed: stream::Feed,
    shutdown: CancellationToken,
}

/// Starts the API on `api.addr` until `shutdown`: opens the database (applying the sink's
/// migrations) and the producer, then serves. `health` turns ready once both answer;
/// `/readyz` and `/healthz` also report `other_stages` (`vigil up` serves its detector and
/// sink on the same port).
pub async fn start(
    settings: &Settings,
    health: Health,
    other_stages: Vec<(&'static str, Health)>,
    shutdown: CancellationToken,
) -> Result<HttpServer, ApiError> {
    let cfg = settings.api.clone();
    let db = ResultsDb::open(&settings.sink.database_url).await?;
    ensure_topics(&settings.kafka, &[&settings.kafka.topics.images]).await?;
    let images = settings.kafka.topics.images.name.as_str();
    crate::kafka::use_schema_registry(&settings.kafka, &[(crate::codec::RecordType::Frame, images)]).await?;
    let mut client = idempotent_producer_config(&settings.kafka);
    client.set("linger.ms", "5").set("message.timeout.ms", settings.producer.delivery_timeout_ms.to_string());
    if !settings.kafka.client.contains_key("partitioner") {
        // Same key → partition mapping as `vigil produce` and the Java clients.
        client.set("partitioner", "murmur2_random");
    }
    let producer: FutureProducer = client.create().map_err(ApiError::Producer)?;
    let ingest = Ingest::new(producer.clone(), settings);
    let images = Arc::new(images::ImageReader::new(&settings.kafka).map_err(ApiError::Consumer)?);
    let feed = stream::Feed::new();
    let app = Arc::new(App { config: cfg.clone(), ingest, db, images, feed, shutdown: shutdown.clone() });
    tokio::spawn(stream::run(app.clone()));
    tokio::spawn(watch_readiness(app.clone(), producer, settings.kafka.topics.images.name.clone(), health.clone()));
    let guard = Arc::new(Guard::new(&cfg));
    let v1 = Router::new()
        .route("/v1/frames", post(ingest::post_frame))
        .route("/v1/frames/{frame_id}", get(results::get_frame))
        .route("/v1/frames/{frame_id}/image", get(images::get_image))
        .route("/v1/sources", get(results::get_sources))
        .route("/v1/sources/{source}/detections", get(results::get_detections))
        .route("/v1/stream", get(stream::get_stream))
        .route_layer(middleware::from_fn_with_state(guard, guard::check))
        .with_state(app.clone());
    let mut stages = vec![("api", health)];
    stages.extend(other_stages);
    let router = v1
        .route("/", get(viewer::page))
        .route("/viewer.js", get(viewer::script))
        .route("/openapi.json", get(openapi::document))
        .merge(http::health_routes(stages))
        .fallback(not_found)
        // Multipart reads through this limit; a raw body is limited by the handler itself.
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes + 64 * 1024))
        .layer(middleware::from_fn_with_state(app, observe));
    let server = http::serve_app(&cfg.addr, "api.addr", router, shutdown).await?;
    let auth = if cfg.token_list().is_empty() { "no authentication (api.tokens is empty)" } else { "bearer tokens" };
    info!(addr = %server.addr, auth, "API serving on http://{}", server.addr);
    Ok(server)
}

async fn not_found(request: Request) -> Refusal {
    Refusal::not_found(format!("no route {} {}; see /openapi.json", request.method(), request.uri().path()))
}

/// Times every request out (a long poll gets its wait on top), and counts it by route
/// and status.
async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = request.method().to_string();
    let mut limit = app.config.request_timeout();
    if route == "/v1/frames/{frame_id}" {
        limit += Duration::from_secs(app.config.max_wait_s);
    }
    // The stream's response is returned at once; its body goes on until the client leaves.
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!("no answer within {} ms (api.request_timeout_ms); retry", limit.as_millis());
            Refusal::unavailable("timeout", message, 1).into_response()
        }
    };
    crate::metrics::http_request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// Ready while a broker answers a metadata request and the database a query.
async fn watch_readiness(app: Arc<App>, producer: FutureProducer, topic: String, health: Health) {
    loop {
        health.beat();
        let p = producer.clone();
        let t = topic.clone();
        let broker = tokio::task::spawn_blocking(move || {
            p.client().fetch_metadata(Some(&t), Duration::from_secs(3)).map(|_| ())
        })
        .await;
        let reason = match (broker, app.db.ping().await) {
            (Ok(Ok(())), Ok(())) => None,
            (Ok(Err(e)), _) => Some(format!("no broker answers: {e}")),
            (Err(e), _) => Some(format!("broker check did not complete: {e}")),
            (_, Err(e)) => Some(format!("database unavailable: {e}")),
        };
        match reason {
            None => health.set_ready(),
            Some(reason) => {
                if health.is_ready() {
                    warn!(%reason, "API not ready");
                }
                health.set_not_ready(reason);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(READINESS_EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// `vigil serve`: the API until `shutdown`, then the uploads in progress are finished.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> Result<(), ApiError> {
    let server = start(settings, Health::new(), Vec::new(), shutdown).await?;
    if server.task.await.is_err() {
        warn!("the API server task panicked");
    }
    Ok(())
}

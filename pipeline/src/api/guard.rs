//! Who may call the API, and how often: bearer tokens (compared in constant time) and a
//! token bucket per token (per client address when no tokens are configured).
//!
//! The guard runs before any handler, so a refused request costs no body read, no broker
//! and no database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::config::{Access, ApiConfig};
use super::reply::Refusal;

/// Most clients tracked by the rate limiter; beyond, the idlest are forgotten.
const MAX_BUCKETS: usize = 10_000;

/// The configured tokens and the rate limiter.
pub(super) struct Guard {
    tokens: Vec<(Vec<u8>, Access)>,
    rate_per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Guard {
    pub(super) fn new(cfg: &ApiConfig) -> Self {
        Guard {
            tokens: cfg.token_list().into_iter().map(|(t, a)| (t.into_bytes(), a)).collect(),
            rate_per_s: cfg.rate_limit_per_s,
            burst: f64::from(cfg.rate_limit_burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// What the request's bearer token allows (everything when no tokens are configured),
    /// and the key its rate is counted under.
    fn authenticate(&self, authorization: Option<&str>, peer: Option<SocketAddr>) -> Result<(Access, String), Refusal> {
        if self.tokens.is_empty() {
            return Ok((Access::Ingest, peer.map_or_else(|| "anonymous".into(), |p| p.ip().to_string())));
        }
        let unauthorized = |message: &str| Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(value) = authorization else {
            return Err(unauthorized("this API needs `Authorization: Bearer TOKEN` (one of api.tokens)"));
        };
        let Some(given) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Err(unauthorized("the Authorization header must be `Bearer TOKEN`"));
        };
        // Every token is compared, each in constant time: the answer's timing tells
        // nothing about which bytes matched.
        let mut found = None;
        for (index, (token, access)) in self.tokens.iter().enumerate() {
            if constant_time_eq(token, given.as_bytes()) && found.is_none() {
                found = Some((*access, format!("token#{index}")));
            }
        }
        found.ok_or_else(|| unauthorized("unknown token"))
    }

    /// Takes one request from `key`'s bucket; when it is empty, the seconds until it is not.
    fn take(&self, key: &str) -> Result<(), u64> {
        if self.rate_per_s <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Full buckets carry no information: forget them first.
            let (rate, burst) = (self.rate_per_s, self.burst);
            buckets.retain(|_, b| b.level + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { level: self.burst, at: now });
        bucket.level = (bucket.level + now.duration_since(bucket.at).as_secs_f64() * self.rate_per_s).min(self.burst);
        bucket.at = now;
        if bucket.level >= 1.0 {
            bucket.level -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.level) / self.rate_per_s).ceil().max(1.0) as u64)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Middleware of every `/v1` route: 401 without a known token, 403 for an upload with a
/// read-only token, 429 with `Retry-After` above the rate.
pub(super) async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (access, key) = match guard.authenticate(authorization, peer) {
        Ok(found) => found,
        Err(refusal) => {
            let mut response = refusal.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    if request.method() == Method::POST && access == Access::Read {
        return Refusal::new(StatusCode::FORBIDDEN, "forbidden", "this token may read results but not upload frames")
            .into_response();
    }
    if let Err(seconds) = guard.take(&key) {
        let message = format!("more than {} requests per second; retry in {seconds} s", guard.rate_per_s);
        let refusal = Refusal {
            retry_after_s: Some(seconds),
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        };
        return refusal.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(tokens: &str, rate: f64, burst: u32) -> Guard {
        Guard::new(&ApiConfig {
            tokens: tokens.into(),
            rate_limit_per_s: rate,
            rate_limit_burst: burst,
            ..ApiConfig::default()
        })
    }

    #[test]
    fn tokens_are_checked_and_tell_access_apart() {
        let g = guard("uploader-0123456789,viewer-0123456789:read", 0.0, 1);
        assert_eq!(g.authenticate(Some("Bearer uploader-0123456789"), None).unwrap().0, Access::Ingest);
        assert_eq!(g.authenticate(Some("Bearer viewer-0123456789"), None).unwrap().0, Access::Read);
        for bad in [None, Some("Bearer uploader-012345678"), Some("Basic dXNlcjpwdw=="), Some("Bearer ")] {
            assert_eq!(g.authenticate(bad, None).unwrap_err().status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        let open = guard("", 0.0, 1);
        assert_eq!(open.authenticate(None, None).unwrap().0, Access::Ingest, "no tokens: open");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let g = guard("", 2.0, 3);
        assert!((0..3).all(|_| g.take("a").is_ok()), "the burst");
        assert_eq!(g.take("a"), Err(1), "empty: retry in a second");
        assert!(g.take("b").is_ok(), "each client has its own bucket");
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(g.take("a").is_ok(), "refilled at 2 per second");
        let unlimited = guard("", 0.0, 1);
        assert!((0..100).all(|_| unlimited.take("a").is_ok()), "rate 0: no limit");
    }
}

//! API configuration (the `[api]` section).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `vigil serve`: the HTTP face of the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the API listens (`HOST:PORT`). Loopback by default: exposing it is a choice.
    pub addr: String,
    /// Bearer tokens, comma-separated; empty: no authentication. `TOKEN` may upload and
    /// read, `TOKEN:read` may only read. In the environment: `VIGIL__API__TOKENS`.
    pub tokens: String,
    /// Largest accepted upload, bytes (413 above it).
    pub max_body_bytes: usize,
    /// Requests per second allowed to each token (each client address without tokens);
    /// 0 turns the limit off.
    pub rate_limit_per_s: f64,
    /// Requests a token may make at once above its rate (the bucket's size).
    pub rate_limit_burst: u32,
    /// Uploads waiting for the broker's acknowledgement at once; more answer 503.
    pub max_in_flight: usize,
    /// Longest a request may take (a long poll's own wait excepted), milliseconds.
    pub request_timeout_ms: u64,
    /// Longest `?wait=` a client may ask for on `GET /v1/frames/{id}`, seconds.
    pub max_wait_s: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            tokens: String::new(),
            max_body_bytes: 8 * 1024 * 1024,
            rate_limit_per_s: 50.0,
            rate_limit_burst: 100,
            max_in_flight: 256,
            request_timeout_ms: 30_000,
            max_wait_s: 60,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Upload frames and read results.
    Ingest,
    /// Read results only.
    Read,
}

impl ApiConfig {
    /// The tokens and what each may do.
    pub fn token_list(&self) -> Vec<(String, Access)> {
        self.tokens
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t.strip_suffix(":read") {
                Some(token) => (token.to_owned(), Access::Read),
                None => (t.to_owned(), Access::Ingest),
            })
            .collect()
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(("api.addr", format!("{:?} is not HOST:PORT (e.g. 127.0.0.1:8080)", self.addr)));
        }
        for (token, _) in self.token_list() {
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c == ':') {
                return Err((
                    "api.tokens",
                    "each token needs 16 characters or more, without spaces or ':' (e.g. `openssl rand -hex 24`)"
                        .into(),
                ));
            }
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(("api.max_body_bytes", format!("{} is outside 1024..=268435456", self.max_body_bytes)));
        }
        if !(self.rate_limit_per_s >= 0.0 && self.rate_limit_per_s.is_finite()) {
            return Err((
                "api.rate_limit_per_s",
                format!("{} is not a rate (0 turns the limit off)", self.rate_limit_per_s),
            ));
        }
        if self.rate_limit_burst == 0 {
            return Err(("api.rate_limit_burst", "must be at least 1".into()));
        }
        if self.max_in_flight == 0 {
            return Err(("api.max_in_flight", "must be at least 1".into()));
        }
        if self.request_timeout_ms < 100 {
            return Err(("api.request_timeout_ms", format!("{} is below 100", self.request_timeout_ms)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_say_what_they_may_do() {
        let cfg = ApiConfig { tokens: " 0123456789abcdef , viewer-0123456789:read,".into(), ..ApiConfig::default() };
        assert_eq!(
            cfg.token_list(),
            vec![("0123456789abcdef".into(), Access::Ingest), ("viewer-0123456789".into(), Access::Read)]
        );
        assert!(cfg.validate().is_ok());
        let short = ApiConfig { tokens: "abc".into(), ..ApiConfig::default() };
        assert_eq!(short.validate().unwrap_err().0, "api.tokens");
        assert!(ApiConfig::default().token_list().is_empty(), "no tokens: no authentication");
    }

    #[test]
    fn a_bad_address_names_the_key() {
        let cfg = ApiConfig { addr: "localhost".into(), ..ApiConfig::default() };
        assert_eq!(cfg.validate().unwrap_err().0, "api.addr");
    }
}

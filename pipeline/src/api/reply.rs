//! Error answers: a status, a stable `code` a client can branch on, and a `message` a
//! person can act on, as `{"error": {"code", "message"}}`; `Retry-After` where waiting helps.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::schema::{ErrorBody, ErrorDetail};

/// A refused or failed request.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Seconds after which the same request may succeed.
    pub(super) retry_after_s: Option<u64>,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into(), retry_after_s: None }
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: the pipeline cannot take this now; retry after `seconds`.
    pub(super) fn unavailable(code: &'static str, message: impl Into<String>, seconds: u64) -> Self {
        Refusal { retry_after_s: Some(seconds), ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }

    /// 500: the server's fault; the message says what failed.
    pub(super) fn internal(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } });
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

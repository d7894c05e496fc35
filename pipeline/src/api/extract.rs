//! axum's `Query` and `Path` extractors, refusing as every other error does (JSON
//! [`Refusal`], 400) instead of axum's plain-text rejections, so a client (and the
//! OpenAPI document) sees one error format.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::reply::Refusal;

/// The query string, deserialized into `T`.
pub(super) struct JsonQuery<T>(pub(super) T);

/// The path parameters, deserialized into `T`.
pub(super) struct JsonPath<T>(pub(super) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for JsonQuery<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refusal> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| JsonQuery(value))
            .map_err(|e| Refusal::bad_request("invalid_query", format!("{}; see /openapi.json", e.body_text())))
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for JsonPath<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refusal> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| JsonPath(value))
            .map_err(|e| Refusal::bad_request("invalid_path", format!("{}; see /openapi.json", e.body_text())))
    }
}

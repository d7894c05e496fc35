//! `GET /openapi.json`: the API described as OpenAPI 3.1, generated from the handlers'
//! annotations and the body types in [`super::schema`]. What every `/v1` route shares
//! (the bearer token, 401, 403 for uploads, 429 and 503 with `Retry-After`) is added here
//! once, as the guard and the timeout add it to every route.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::schema::Id;
use super::{images, ingest, results, stream};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vigil API",
        description = "Upload images to Vigil's detection pipeline and read their results.\n\n\
            Every `/v1` route needs `Authorization: Bearer TOKEN` when the server has tokens \
            (`api.tokens`); a `TOKEN:read` token may read but not upload. Each token is rate \
            limited (429 with `Retry-After`). Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        ingest::post_frame,
        results::get_frame,
        images::get_image,
        results::get_sources,
        results::get_detections,
        stream::get_stream,
    ),
    components(schemas(Id)),
    modifiers(&Shared),
    tags(
        (name = "frames", description = "Images in."),
        (name = "results", description = "Results out: what the sink stored."),
        (name = "operations", description = "Liveness, readiness and metrics, as every Vigil process serves them."),
    ),
)]
struct ApiDoc;

/// The document, serialized once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!(r#"{{"error": "cannot render: {e}"}}"#))
});

/// `GET /openapi.json` (no token needed: it holds no data).
pub(super) async fn document() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Adds what the guard, the timeout and the health routes give every route.
struct Shared;

impl Modify for Shared {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let bearer = SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer));
        api.components.get_or_insert_with(Default::default).add_security_scheme("bearer", bearer);
        for (path, item) in api.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let upload = item.post.is_some();
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                let responses = &mut operation.responses.responses;
                responses.insert("401".into(), refusal("No or an unknown bearer token.", Some("WWW-Authenticate")));
                if upload {
                    responses.insert("403".into(), refusal("The token may read but not upload (`TOKEN:read`).", None));
                }
                responses.insert(
                    "429".into(),
                    refusal("Above the token's rate (`api.rate_limit_per_s`).", Some("Retry-After")),
                );
                responses.insert(
                    "503".into(),
                    refusal(
                        "The pipeline cannot take this now (broker or database unavailable, backpressure, or \
                         no answer within `api.request_timeout_ms`); retry after `Retry-After` seconds.",
                        Some("Retry-After"),
                    ),
                );
            }
        }
        let operations = [
            ("/healthz", "Alive: every stage's main loop has turned within 60 s.", "alive\n", "stuck: …"),
            (
                "/readyz",
                "Ready: a broker and the database answer (and, under `vigil up`, every stage is ready).",
                "ready\n",
                "not ready: REASON",
            ),
        ];
        for (path, summary, ok, failing) in operations {
            let operation = OperationBuilder::new()
                .summary(Some(summary))
                .tag("operations")
                .response("200", text(ok))
                .response("503", text(failing))
                .build();
            api.paths.paths.insert(path.into(), PathItem::new(HttpMethod::Get, operation));
        }
        let metrics = OperationBuilder::new()
            .summary(Some("Prometheus metrics, e.g. `http_server_request_duration_seconds{http_route, http_response_status_code}`."))
            .tag("operations")
            .response("200", text("Prometheus text format 0.0.4"))
            .build();
        api.paths.paths.insert("/metrics".into(), PathItem::new(HttpMethod::Get, metrics));
    }
}

/// An error answer (`ErrorBody`), with `header` when it carries one.
fn refusal(description: &str, header: Option<&str>) -> RefOr<ApiResponse> {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", body);
    if let Some(name) = header {
        let (schema, about) = match name {
            "Retry-After" => (ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)), "Seconds to wait."),
            _ => (ObjectBuilder::new().schema_type(Type::String), "`Bearer`"),
        };
        response = response.header(name, HeaderBuilder::new().schema(schema).description(Some(about)).build());
    }
    response.build().into()
}

/// A `text/plain` answer.
fn text(description: &str) -> ApiResponse {
    let body = ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build();
    ResponseBuilder::new().description(description).content("text/plain", body).build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::from_str(&DOCUMENT).unwrap()
    }

    /// Every `$ref` in `value`.
    fn refs(value: &Value, found: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    found.insert(r.clone());
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_described() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        let served = [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/frames",
            "/v1/frames/{frame_id}",
            "/v1/frames/{frame_id}/image",
            "/v1/sources",
            "/v1/sources/{source}/detections",
            "/v1/stream",
        ];
        assert_eq!(paths, served.into_iter().collect());
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut found = BTreeSet::new();
        refs(&doc, &mut found);
        assert!(found.contains("#/components/schemas/ErrorBody"), "{found:?}");
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}: not a schema"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r} is not in components");
        }
    }

    #[test]
    fn the_guards_answers_are_on_every_v1_route() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap().iter().filter(|(p, _)| p.starts_with("/v1/")) {
            for (method, operation) in item.as_object().unwrap() {
                let statuses = operation["responses"].as_object().unwrap();
                for status in ["401", "429", "503"] {
                    assert!(statuses.contains_key(status), "{method} {path}: no {status}");
                }
                assert_eq!(statuses.contains_key("403"), method == "post", "{method} {path}: 403 is for uploads");
                assert_eq!(operation["security"], serde_json::json!([{"bearer": []}]), "{method} {path}");
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }

    #[test]
    fn ids_carry_the_contracts_rule() {
        let id = &document()["components"]["schemas"]["Id"];
        assert_eq!(id["maxLength"], crate::codec::contract::MAX_ID_BYTES);
        let pattern = id["pattern"].as_str().unwrap();
        assert!(pattern.starts_with('^') && pattern.ends_with('$'), "{pattern}");
    }
}

//! The API against its own `/openapi.json`: PyPI schemathesis (installed by
//! scripts/setup-test-deps.sh) fuzzes every operation of a live `vigil up` with a valid
//! token and all of its checks: no 5xx, every status and body as documented, schema-valid
//! requests accepted and invalid ones refused.
//!
//! `GET /v1/stream` is left out: its answer is an endless event stream, which schemathesis
//! would wait on until its timeout. `tests/api.rs` reads the stream instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vigil_tests::http::{api_addr, request};
use vigil_tests::{serial, tool_dir, Options, Pipeline, STOP};

const TOKEN: &str = "schemathesis-token-0123456789";

/// schemathesis' `st`: `$VIGIL_SCHEMATHESIS`, or the one setup-test-deps.sh installs.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("VIGIL_SCHEMATHESIS") {
        return path.into();
    }
    tool_dir("VIGIL_API_TOOLS", "api-tools").join("bin/st")
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let _serial = serial();
    let st = schemathesis();
    assert!(
        st.exists(),
        "no schemathesis at {}: run scripts/setup-test-deps.sh (or set VIGIL_SCHEMATHESIS)",
        st.display()
    );

    // No rate limit (429 is documented, but would hide the handlers), and long polls of at
    // most 1 s (each generated frame id is unknown, so every `?wait=` would be waited out).
    let p = Pipeline::start("openapi", Options { bootstrap: Some("unused:9092".into()), ..Options::default() });
    let mut up = p.spawn_with_env(
        "up",
        &["up", "--fps", "0.2", "--samples", "samples/person.jpg", "--api-addr", "127.0.0.1:0", "--backend", "cpu"],
        &[("VIGIL__API__TOKENS", TOKEN), ("VIGIL__API__RATE_LIMIT_PER_S", "0"), ("VIGIL__API__MAX_WAIT_S", "1")],
    );
    let addr = api_addr(&mut up);
    let base = format!("http://{addr}");
    // Every stage ready first: a 503 from /readyz is documented, but schemathesis counts
    // any 5xx as a failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while request(&addr, "GET", "/readyz", &[], b"", Duration::from_secs(5)).status != 200 {
        assert!(std::time::Instant::now() < deadline, "vigil up never became ready:\n{}", up.stderr());
        std::thread::sleep(Duration::from_millis(250));
    }
    let document = request(&addr, "GET", "/openapi.json", &[], b"", Duration::from_secs(10));
    assert_eq!(document.status, 200, "{}", document.body);
    let doc: serde_json::Value = serde_json::from_str(&document.body).expect("/openapi.json is JSON");
    assert!(doc["paths"]["/v1/frames"]["post"].is_object(), "{doc}");

    // A schema can say "binary", not "a JPEG file": the bytes schemathesis draws for an
    // upload are refused as `unknown_format` (415, documented). That answer to schema-valid
    // data is allowed for this one operation; tests/api.rs uploads real images.
    let config = p.dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-path = \"/v1/frames\"\ninclude-method = \"POST\"\n\
         checks.positive_data_acceptance.expected-statuses = [\"2xx\", \"401\", \"403\", \"409\", \"415\", \"429\"]\n",
    )
    .expect("write schemathesis.toml");
    let out = Command::new(&st)
        .args(["--config-file", config.to_str().expect("a UTF-8 path")])
        .args(["run", &format!("{base}/openapi.json"), "--url", &base, "--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--exclude-path", "/v1/stream", "--no-color", "--request-timeout", "20"])
        .current_dir(&p.dir)
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{report}\nvigil up:\n{}",
        out.status,
        up.stderr()
    );
    assert!(report.contains("Tested: 8"), "every operation but the stream was tested:\n{report}");
    assert!(!up.stderr().contains("panicked"), "vigil up panicked:\n{}", up.stderr());
    eprintln!(
        "{}",
        report.lines().filter(|l| l.contains("generated") || l.contains("Tested")).collect::<Vec<_>>().join("\n")
    );

    let status = up.terminate(STOP);
    assert!(status.success(), "vigil up stops cleanly on SIGTERM ({status}):\n{}", up.stderr());
}

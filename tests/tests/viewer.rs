//! The viewer, as a newcomer meets it: `vigil up` serves it, and in headless Chromium
//! (Debian's, driven by npm playwright-core through tests/viewer/check-viewer.mjs) the page
//! loads without a console error and draws a box labelled `dog` on an uploaded dog.jpg.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigil_tests::http::api_addr;
use vigil_tests::{repo_root, serial, Options, Pipeline, STOP};

const TOKEN: &str = "viewer-test-token-0123456789";

/// Where the screenshot is kept: `$CARGO_TARGET_DIR/test-artifacts` (or `target/`).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

#[test]
fn the_viewer_of_vigil_up_draws_a_box_on_an_uploaded_dog() {
    let _serial = serial();
    let viewer = repo_root().join("tests/viewer");
    assert!(
        viewer.join("node_modules/playwright-core").is_dir(),
        "npm playwright-core is not installed in tests/viewer: run scripts/setup-test-deps.sh"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/setup-test-deps.sh (Debian's chromium) or set CHROMIUM"
    );

    // `vigil up` starts its own in-memory broker; the sample loop runs slowly beside the test.
    let p = Pipeline::start("viewer", Options { bootstrap: Some("unused:9092".into()), ..Options::default() });
    let mut up = p.spawn_with_env(
        "up",
        &["up", "--fps", "1", "--samples", "samples/person.jpg", "--api-addr", "127.0.0.1:0", "--backend", "cpu"],
        &[("VIGIL__API__TOKENS", TOKEN)],
    );
    let addr = api_addr(&mut up);
    let printed = format!("viewer and API on http://{addr}/");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !up.stdout().contains(&printed) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up.stdout().contains(&printed), "vigil up prints where the viewer is:\n{}", up.stdout());

    let screenshot = artifacts().join("viewer.png");
    std::fs::remove_file(&screenshot).ok();
    let dog = repo_root().join("samples/dog.jpg");
    let out = Command::new("node")
        .current_dir(&viewer)
        .arg("check-viewer.mjs")
        .args([format!("http://{addr}"), TOKEN.into(), dog.display().to_string(), "dog".into()])
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (installed with npm; scripts/setup-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the viewer check failed ({}):\n{stdout}\n{stderr}\nvigil up:\n{}",
        out.status,
        up.stderr()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(report["live"].as_str().is_some_and(|l| l.contains("viewer-cam") && l.contains("dog")), "{report}");
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    eprintln!("viewer screenshot: {}", screenshot.display());

    let status = up.terminate(STOP);
    assert!(status.success(), "vigil up stops cleanly on SIGTERM ({status}):\n{}", up.stderr());
}

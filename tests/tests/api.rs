//! `vigil serve` end to end: HTTP uploads through the real producer, detector and sink,
//! and the API's refusals (auth, size, type, rate).

use std::time::Duration;

use vigil_tests::http::{api_addr, read_stream_until, request, Answer};
use vigil_tests::{repo_root, serial, Options, Pipeline};

const UPLOADER: &str = "uploader-0123456789abcdef";
const VIEWER: &str = "viewer-0123456789abcdef";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn upload(addr: &str, token: &str, source: &str, body: &[u8], extra: &[(&str, &str)]) -> Answer {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "image/jpeg")];
    headers.extend_from_slice(extra);
    request(addr, "POST", &format!("/v1/frames?source={source}"), &headers, body, Duration::from_secs(30))
}

fn get(addr: &str, token: &str, path: &str) -> Answer {
    request(addr, "GET", path, &[("Authorization", &bearer(token))], b"", Duration::from_secs(90))
}

#[test]
fn an_uploaded_image_comes_back_with_its_detections_and_refusals_say_why() {
    let _serial = serial();
    let p = Pipeline::start("api", Options::default());
    let tokens = format!("{UPLOADER},{VIEWER}:read");
    let env = [
        ("VIGIL__API__TOKENS", tokens.as_str()),
        ("VIGIL__API__MAX_BODY_BYTES", "1048576"),
        ("VIGIL__API__RATE_LIMIT_PER_S", "1"),
        ("VIGIL__API__RATE_LIMIT_BURST", "40"),
    ];
    let mut api = p.spawn_with_env("api", &["serve", "--addr", "127.0.0.1:0"], &env);
    let _detector = p.detector("detector", None);
    let _sink = p.sink("sink");
    let addr = api_addr(&mut api);
    let dog = std::fs::read(repo_root().join("samples/dog.jpg")).expect("samples/dog.jpg");

    // Refusals, each with its status and a JSON body that says why.
    let anonymous = request(&addr, "POST", "/v1/frames?source=cam-1", &[], &dog, Duration::from_secs(10));
    assert_eq!((anonymous.status, anonymous.json()["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let read_only = upload(&addr, VIEWER, "cam-1", &dog, &[]);
    assert_eq!(read_only.status, 403, "{}", read_only.body);
    let too_large = upload(&addr, UPLOADER, "cam-1", &vec![0xFF; 2 * 1024 * 1024], &[]);
    assert_eq!((too_large.status, too_large.json()["error"]["code"].as_str()), (413, Some("too_large")));
    let png_claimed = request(
        &addr,
        "POST",
        "/v1/frames?source=cam-1",
        &[("Authorization", &bearer(UPLOADER)), ("Content-Type", "image/png")],
        &dog,
        Duration::from_secs(10),
    );
    assert_eq!(png_claimed.status, 415, "{}", png_claimed.body);
    let text = upload(&addr, UPLOADER, "cam-1", b"not an image", &[]);
    assert_eq!((text.status, text.json()["error"]["code"].as_str()), (415, Some("unknown_format")), "{}", text.body);
    // A misspelt parameter after the source: `?source=cam-1&sorce=cam-2`.
    let typo = upload(&addr, UPLOADER, "cam-1&sorce=cam-2", &dog, &[]);
    assert_eq!((typo.status, typo.json()["error"]["code"].as_str()), (400, Some("invalid_query")), "{}", typo.body);
    let bad_source = upload(&addr, UPLOADER, "cam%07", &dog, &[]);
    assert_eq!(bad_source.status, 400, "{}", bad_source.body);

    // A live stream of cam-1's dogs, open before the upload.
    let (stream_addr, auth) = (addr.clone(), bearer(VIEWER));
    let live = std::thread::spawn(move || {
        let headers = [("Authorization", auth.as_str())];
        read_stream_until(
            &stream_addr,
            "/v1/stream?source=cam-1&label=dog",
            &headers,
            "event: detection",
            Duration::from_secs(120),
        )
    });
    std::thread::sleep(Duration::from_secs(1));

    // An upload, retried with the same Idempotency-Key: one frame id, one record.
    let first = upload(&addr, UPLOADER, "cam-1", &dog, &[("Idempotency-Key", "dog-upload-1")]);
    assert_eq!(first.status, 202, "{}", first.body);
    let frame_id = first.json()["frame_id"].as_str().expect("frame_id").to_owned();
    let retried = upload(&addr, UPLOADER, "cam-1", &dog, &[("Idempotency-Key", "dog-upload-1")]);
    assert_eq!((retried.status, retried.json()["frame_id"].as_str()), (202, Some(frame_id.as_str())));
    let copies =
        p.read_topic(&p.images).iter().filter(|r| r.payload.as_deref().is_some_and(|b| contains(b, &frame_id))).count();
    assert_eq!(copies, 1, "a retried upload is produced once");

    // Its result, once stored (404 until then; ?wait long-polls).
    let stored = get(&addr, VIEWER, &format!("/v1/frames/{frame_id}?wait=60"));
    assert_eq!(stored.status, 200, "{}", stored.body);
    let result = stored.json();
    assert_eq!(result["source"], "cam-1");
    let labels: Vec<&str> =
        result["detections"].as_array().expect("detections").iter().filter_map(|d| d["label"].as_str()).collect();
    assert!(labels.contains(&"dog"), "dog.jpg shows a dog: {labels:?}");
    // Its image, read back from the images topic, byte for byte.
    let image = get(&addr, VIEWER, &format!("/v1/frames/{frame_id}/image"));
    assert_eq!((image.status, image.header("content-type")), (200, Some("image/jpeg")), "{}", image.body);
    assert!(image.bytes == dog, "the image comes back as uploaded ({} bytes, {} sent)", image.bytes.len(), dog.len());
    let streamed = live.join().expect("stream reader").expect("the stored dog came down the live stream");
    assert!(streamed.contains(&format!("id: {frame_id}")) && !streamed.contains("\"person\""), "{streamed}");
    // A corrupt upload (JPEG magic, then garbage) ends as a dead letter, and GET says so.
    let mut corrupt = vec![0xFF, 0xD8, 0xFF, 0xE0];
    corrupt.extend_from_slice(&[0x42; 512]);
    let broken = upload(&addr, UPLOADER, "cam-2", &corrupt, &[]);
    assert_eq!(broken.status, 202, "{}", broken.body);
    let broken_id = broken.json()["frame_id"].as_str().expect("frame_id").to_owned();
    let dead = get(&addr, VIEWER, &format!("/v1/frames/{broken_id}?wait=60"));
    assert_eq!(dead.status, 200, "{}", dead.body);
    let dead = dead.json();
    assert_eq!((dead["status"].as_str(), dead["source"].as_str()), (Some("dead_lettered"), Some("cam-2")), "{dead}");
    assert!(dead["error"]["kind"].as_str().is_some_and(|k| !k.is_empty()), "{dead}");
    let unknown = get(&addr, VIEWER, "/v1/frames/no-such-frame");
    assert_eq!((unknown.status, unknown.json()["error"]["code"].as_str()), (404, Some("not_found")));

    // Listing and filters.
    let sources = get(&addr, VIEWER, "/v1/sources").json();
    assert_eq!(sources["sources"][0]["source"], "cam-1");
    let dogs = get(&addr, VIEWER, "/v1/sources/cam-1/detections?label=dog&min_score=0.3&limit=5").json();
    assert_eq!(dogs["frames"][0]["frame_id"], frame_id.as_str());
    assert!(dogs["frames"][0]["detections"].as_array().unwrap().iter().all(|d| d["label"] == "dog"));
    let none = get(&addr, VIEWER, "/v1/sources/cam-1/detections?label=giraffe").json();
    assert_eq!(none["frames"].as_array().map(Vec::len), Some(0));

    // Above the rate (1 per second after a burst of 40): 429 with Retry-After.
    let limited = (0..60).map(|_| get(&addr, VIEWER, "/v1/sources")).find(|a| a.status == 429);
    let limited = limited.expect("some request beyond the burst is refused");
    assert!(limited.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));

    // The viewer's page and script need no token (they hold no data).
    let page = request(&addr, "GET", "/", &[], b"", Duration::from_secs(10));
    assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
    assert!(page.body.contains("<script src=\"/viewer.js\">") && page.header("content-security-policy").is_some());
    assert_eq!(request(&addr, "GET", "/viewer.js", &[], b"", Duration::from_secs(10)).status, 200);

    // Health and metrics on the same port, without a token.
    let ready = request(&addr, "GET", "/readyz", &[], b"", Duration::from_secs(10));
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = request(&addr, "GET", "/metrics", &[], b"", Duration::from_secs(10)).body;
    assert!(metrics.contains("http_server_request_duration_seconds_count{"), "{metrics}");
    assert!(metrics.contains("http_route=\"/v1/frames\""), "requests are counted by route");
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

//! Telemetry end to end, with the real `vigil` binary: the stages' HTTP port
//! (`telemetry.http_addr`: `/healthz`, `/readyz` and `/metrics` of a detector and a sink
//! while frames go through) and traces exported over OTLP.
//! (Readiness while the database is away is tested in the sink's own tests, where the
//! connection can be cut; while the brokers are away in `kafka::stats`.)

use std::collections::HashMap;
use std::time::Duration;

use vigil_tests::http::{get, sample, served_addr, wait_status};
use vigil_tests::otlp::{Receiver, Span};
use vigil_tests::{serial, stop, Options, Pipeline};

/// The sample `key` on `page`, or a failure that shows the page.
fn value(page: &str, key: &str) -> f64 {
    sample(page, key).unwrap_or_else(|| panic!("no sample {key} on the metrics page:\n{page}"))
}

#[test]
fn stages_serve_health_readiness_and_metrics_that_move_with_traffic() {
    let _serial = serial();
    let p = Pipeline::start("telemetry-http", Options::default());
    let http = [("VIGIL__TELEMETRY__HTTP_ADDR", "127.0.0.1:0")];
    let mut sink = p.spawn_with_env("sink", &["sink"], &http);
    let mut detector = p.spawn_with_env("detector", &["detect"], &http);
    let detector_addr = served_addr(&mut detector, Duration::from_secs(60));
    let sink_addr = served_addr(&mut sink, Duration::from_secs(60));
    for addr in [&detector_addr, &sink_addr] {
        assert_eq!(get(addr, "/healthz"), (200, "alive\n".into()), "{addr}");
        let ready = wait_status(addr, "/readyz", 200, Duration::from_secs(120));
        assert_eq!(ready, (200, "ready\n".into()), "{addr}");
        assert_eq!(get(addr, "/nothing").0, 404);
    }

    let frames = p.produce_cameras(4, 10);
    p.wait_rows(frames, Duration::from_secs(300), &mut [&mut sink, &mut detector]);

    // librdkafka's statistics come every 5 s: wait for the lag and round-trip series.
    for addr in [&detector_addr, &sink_addr] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut page = get(addr, "/metrics").1;
        while !(page.contains("vigil_consumer_lag{") && page.contains("vigil_kafka_broker_rtt_seconds{"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(500));
            page = get(addr, "/metrics").1;
        }
        assert!(page.contains("vigil_consumer_lag{partition="), "no consumer lag series on {addr}:\n{page}");
        assert!(page.contains("vigil_kafka_broker_rtt_seconds{broker="), "no broker rtt on {addr}:\n{page}");
    }

    let (status, page) = get(&detector_addr, "/metrics");
    assert_eq!(status, 200);
    // At least: on the in-memory broker the detector runs at-least-once (see
    // docs/architecture.md), so a frame may be read and committed twice.
    assert!(value(&page, "vigil_frames_consumed_total") >= frames as f64, "{page}");
    assert!(value(&page, "vigil_results_produced_total") >= frames as f64, "{page}");
    assert!(value(&page, "vigil_transactions_total{outcome=\"committed\"}") >= 1.0, "{page}");
    assert!(value(&page, "vigil_inference_duration_seconds_count") >= 1.0, "{page}");
    assert!(value(&page, "vigil_batch_size_bucket{le=\"+Inf\"}") >= 1.0, "{page}");
    assert!(value(&page, "vigil_rebalances_total") >= 1.0, "{page}");
    assert!(page.contains("# TYPE vigil_inference_duration_seconds histogram"), "{page}");

    let (status, page) = get(&sink_addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(value(&page, "vigil_rows_stored_total"), frames as f64, "{page}");
    assert!(value(&page, "vigil_db_write_duration_seconds_count") >= 1.0, "{page}");
    let latencies = value(&page, "vigil_e2e_latency_seconds_count");
    assert!(latencies >= 1.0 && latencies <= frames as f64, "{latencies} latencies for {frames} frames:\n{page}");

    stop(&mut detector);
    stop(&mut sink);
}

/// produce → detect → sink as three processes exporting over OTLP/HTTP to an in-test
/// receiver: each frame's spans form one trace across the three services with the right
/// parents, and each model call's `detect batch` span links the frames it served.
#[test]
fn a_frames_spans_form_one_trace_across_the_three_processes() {
    let _serial = serial();
    let receiver = Receiver::start();
    let mut p = Pipeline::start("telemetry-traces", Options::default());
    p.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    p.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    // Export every 200 ms rather than 5 s; exit flushes the rest anyway.
    p.set_env("OTEL_BSP_SCHEDULE_DELAY", "200");
    p.set_env("OTEL_METRIC_EXPORT_INTERVAL", "1000");
    let mut sink = p.spawn("sink", &["sink"]);
    let mut detector = p.spawn("detector", &["detect"]);
    let frames = p.produce_cameras(2, 3);
    p.wait_rows(frames, Duration::from_secs(300), &mut [&mut sink, &mut detector]);
    stop(&mut detector);
    stop(&mut sink);

    let spans = receiver.spans();
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent_span_id.as_str()).copied();
    let named = |name: String| spans.iter().filter(move |s| s.name == name);
    // Messaging span names are `{operation} {topic}`; the test's topics have its prefix.
    let (send_images, process_images) = (format!("send {}", p.images), format!("process {}", p.images));
    let (send_detections, process_detections) = (format!("send {}", p.detections), format!("process {}", p.detections));

    let sends: Vec<&Span> = named(send_images).collect();
    assert_eq!(sends.len() as u64, frames, "one producer span per frame: {spans:#?}");
    for send in &sends {
        assert_eq!((send.service.as_str(), send.kind, send.parent_span_id.as_str()), ("vigil-producer", 4, ""));
        assert_eq!(send.attributes.get("messaging.system").map(String::as_str), Some("kafka"));
        assert_eq!(send.attributes.get("messaging.operation.type").map(String::as_str), Some("send"));
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == send.trace_id).collect();
        // The chain, each a child of the one before (at-least-once on the in-memory
        // broker may add a second chain under the same send; one must be complete).
        let chain = [process_images.as_str(), &send_detections, &process_detections, "db write"];
        let services = ["vigil-detector", "vigil-detector", "vigil-sink", "vigil-sink"];
        let stored = trace.iter().find(|s| s.name == "db write").unwrap_or_else(|| panic!("no db write in {trace:#?}"));
        let mut span = *stored;
        for (name, service) in chain.iter().zip(services).rev() {
            assert_eq!((span.name.as_str(), span.service.as_str()), (*name, service), "{trace:#?}");
            span = parent_of(span).unwrap_or_else(|| panic!("{name} has no parent in {trace:#?}"));
        }
        assert_eq!(span.span_id, send.span_id, "the chain starts at the producer's span");
        let process = trace.iter().find(|s| s.name == process_images).unwrap();
        assert_eq!(process.kind, 5, "a consumer span");
        for key in ["messaging.destination.partition.id", "messaging.kafka.offset", "messaging.consumer.group.name"] {
            assert!(process.attributes.contains_key(key), "{key} missing: {process:#?}");
        }
    }

    // Every frame's `process images` is linked by a `detect batch` span of the detector.
    let batches: Vec<&Span> = named("detect batch".into()).collect();
    assert!(!batches.is_empty(), "no detect batch span: {spans:#?}");
    for process in named(process_images.clone()) {
        let linked = batches.iter().any(|b| b.links.contains(&(process.trace_id.clone(), process.span_id.clone())));
        assert!(linked, "no detect batch links {process:#?}\nbatches: {batches:#?}");
    }
    for batch in &batches {
        assert_eq!(batch.service, "vigil-detector");
        assert_eq!(batch.attributes.get("messaging.batch.message_count"), Some(&batch.links.len().to_string()));
        assert!(batch.attributes.contains_key("vigil.backend") && batch.attributes.contains_key("vigil.inference_ms"));
    }
    assert!(receiver.requests("/v1/metrics") >= 1, "metrics were not exported over OTLP");
}

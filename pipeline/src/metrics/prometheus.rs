//! OpenTelemetry metrics as Prometheus text exposition (format 0.0.4), the way the
//! OpenTelemetry specification maps them: dots become underscores, the unit `s` adds
//! `_seconds`, monotonic sums are counters ending in `_total`, histograms get cumulative
//! `_bucket{le=…}` lines with `_sum` and `_count`. Written here rather than taken from
//! `opentelemetry-prometheus`, which is discontinued and pulls in the `prometheus` and
//! `protobuf` crates for a page of text.

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

/// Every metric in `collected`, one `# HELP`/`# TYPE` block per name.
pub(super) fn encode(collected: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(data) => write_metric(&mut out, metric, data, |v| v),
                AggregatedMetrics::U64(data) => write_metric(&mut out, metric, data, |v| v as f64),
                AggregatedMetrics::I64(data) => write_metric(&mut out, metric, data, |v| v as f64),
            }
        }
    }
    out
}

fn write_metric<T: Copy>(out: &mut String, metric: &Metric, data: &MetricData<T>, value: impl Fn(T) -> f64) {
    let base = base_name(metric.name(), metric.unit());
    match data {
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() { (format!("{base}_total"), "counter") } else { (base, "gauge") };
            header(out, &name, metric.description(), kind);
            for point in sum.data_points() {
                sample(out, &name, &labels(point.attributes(), None), value(point.value()));
            }
        }
        MetricData::Gauge(gauge) => {
            header(out, &base, metric.description(), "gauge");
            for point in gauge.data_points() {
                sample(out, &base, &labels(point.attributes(), None), value(point.value()));
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, &base, metric.description(), "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                let bounds = point.bounds().map(Some).chain([None]);
                for (bound, count) in bounds.zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = bound.map_or_else(|| "+Inf".to_owned(), number);
                    sample(out, &format!("{base}_bucket"), &labels(point.attributes(), Some(&le)), cumulative as f64);
                }
                let plain = labels(point.attributes(), None);
                sample(out, &format!("{base}_sum"), &plain, value(point.sum()));
                sample(out, &format!("{base}_count"), &plain, point.count() as f64);
            }
        }
        // Vigil records none; Prometheus text has no native form for them.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// The Prometheus name of an OpenTelemetry instrument: only `[a-zA-Z0-9_:]`, and the
/// unit as a suffix where Prometheus has a convention for it.
fn base_name(name: &str, unit: &str) -> String {
    let mut base: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == ':' { c } else { '_' }).collect();
    if base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert(0, '_');
    }
    let suffix = match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    if !suffix.is_empty() && !base.ends_with(suffix) {
        base.push_str(suffix);
    }
    base
}

fn header(out: &mut String, name: &str, description: &str, kind: &str) {
    let help = description.replace('\\', r"\\").replace('\n', r"\n");
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    out.push_str(&format!("{name}{labels} {}\n", number(value)));
}

/// `{k="v",…}` (with `le` last for buckets), or nothing without labels.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> =
        attributes.map(|kv| (base_name(kv.key.as_str(), ""), kv.value.as_str().into_owned())).collect();
    pairs.sort();
    pairs.extend(le.map(|le| ("le".to_owned(), le.to_owned())));
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A sample value as Prometheus writes it (`+Inf`, `NaN`, integers without `.0`).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::reader::MetricReader;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

    use super::*;
    use crate::metrics::SharedReader;

    /// A provider of its own (not the global one) and what it renders after `record`.
    fn rendered(record: impl FnOnce(&opentelemetry::metrics::Meter)) -> String {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder().with_reader(reader.clone()).build();
        record(&provider.meter("test"));
        let mut collected = ResourceMetrics::default();
        reader.collect(&mut collected).unwrap();
        encode(&collected)
    }

    #[test]
    fn counters_get_total_and_their_labels() {
        let text = rendered(|meter| {
            let c = meter.u64_counter("vigil.dead_letters").with_description("Dead letters").build();
            c.add(2, &[KeyValue::new("kind", "not_avro")]);
            c.add(1, &[KeyValue::new("kind", "bad \"record\"")]);
        });
        assert!(
            text.contains("# HELP vigil_dead_letters_total Dead letters\n# TYPE vigil_dead_letters_total counter\n"),
            "{text}"
        );
        assert!(text.contains("vigil_dead_letters_total{kind=\"not_avro\"} 2\n"), "{text}");
        assert!(text.contains("vigil_dead_letters_total{kind=\"bad \\\"record\\\"\"} 1\n"), "{text}");
    }

    #[test]
    fn histograms_have_cumulative_buckets_a_sum_and_a_count() {
        let text = rendered(|meter| {
            let h =
                meter.f64_histogram("vigil.inference.duration").with_unit("s").with_boundaries(vec![0.1, 1.0]).build();
            for v in [0.05, 0.5, 0.7, 3.0] {
                h.record(v, &[]);
            }
        });
        assert!(text.contains("# TYPE vigil_inference_duration_seconds histogram\n"), "{text}");
        for line in [
            "vigil_inference_duration_seconds_bucket{le=\"0.1\"} 1\n",
            "vigil_inference_duration_seconds_bucket{le=\"1\"} 3\n",
            "vigil_inference_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "vigil_inference_duration_seconds_sum 4.25\n",
            "vigil_inference_duration_seconds_count 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn gauges_keep_one_value_per_label_set() {
        let text = rendered(|meter| {
            let g = meter.i64_gauge("vigil.consumer.lag").build();
            g.record(7, &[KeyValue::new("partition", 0i64), KeyValue::new("topic", "images")]);
            g.record(3, &[KeyValue::new("partition", 0i64), KeyValue::new("topic", "images")]);
        });
        assert!(text.contains("# TYPE vigil_consumer_lag gauge\n"), "{text}");
        assert!(text.contains("vigil_consumer_lag{partition=\"0\",topic=\"images\"} 3\n"), "{text}");
    }

    #[test]
    fn names_keep_to_the_prometheus_alphabet() {
        assert_eq!(base_name("vigil.db.write.duration", "s"), "vigil_db_write_duration_seconds");
        assert_eq!(base_name("9lives-x", ""), "_9lives_x");
        assert_eq!(base_name("already_seconds", "s"), "already_seconds");
    }
}

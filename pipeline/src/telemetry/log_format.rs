//! Log lines that name their trace: an event logged while a span's context is current
//! (`Context::attach`, e.g. while one frame's dead letter is reported) ends with
//! `trace_id=… span_id=…`, so a log search leads to the trace in Jaeger and back.

use std::fmt;

use opentelemetry::Context;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::spans::ids;

/// Wraps a line format `F`, appending the current trace and span ids when there are any.
pub(crate) struct WithTraceIds<F>(pub(crate) F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = ids(&Context::current()) else {
            return self.0.format_event(ctx, writer, event);
        };
        // The inner format ends the line; the ids go before its newline. (Lines with ids
        // are written without colours: a plain buffer has no terminal behind it.)
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::SpanKind;
    use tracing_subscriber::fmt::format::Format;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::telemetry::spans::start;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn lines_inside_a_span_carry_its_ids_and_others_do_not() {
        let _guard = crate::telemetry::init_for_tests();
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .event_format(WithTraceIds(Format::default()))
            .finish();
        let cx = start("process images", SpanKind::Consumer, &Context::new(), vec![], vec![]);
        let (trace_id, span_id) = ids(&cx).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let _attached = cx.clone().attach();
            tracing::warn!(kind = "corrupt", "dead-lettered");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!lines[0].contains("trace_id="), "{}", lines[0]);
        assert!(lines[1].contains("dead-lettered"), "{}", lines[1]);
        assert!(lines[1].ends_with(&format!("trace_id={trace_id} span_id={span_id}")), "{}", lines[1]);
    }
}

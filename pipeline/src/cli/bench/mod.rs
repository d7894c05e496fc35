//! `vigil bench …`: measurements run as commands, so they can be repeated anywhere
//! the binary runs (including GPU machines without a Rust toolchain).

pub(crate) mod model;
pub(crate) mod pipeline;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Frames/s of NanoDet-g and time per stage (decode, resize, forward, post-process).
    Model(model::BenchModelArgs),
    /// Producers, detectors and a sink under load: throughput, latency, efficiency, CPU.
    Pipeline(pipeline::BenchPipelineArgs),
}

/// Median of `values` (0 for none).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&mut []), 0.0);
    }
}

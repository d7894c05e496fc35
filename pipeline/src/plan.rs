//! Capacity planning with the M/M/c queue (Erlang C): how many detector workers a frame
//! rate needs, and what waiting they will see.
//!
//! The model treats frames as a Poisson stream at `rate` and each worker as a server with
//! exponential service times of mean `service_ms`, shared first come, first served (a
//! consumer group spreads partitions, not frames, so this is optimistic when sources are
//! few or uneven; `docs/benchmarks.md` compares it with `vigil bench pipeline`). Erlang C
//! is computed through the Erlang B recursion, which stays finite for thousands of
//! servers where `A^c / c!` would overflow.

use serde::Serialize;

/// Largest worker count searched: far beyond any consumer group Kafka serves well.
pub const MAX_WORKERS: u32 = 100_000;

/// What to size for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// Offered frames per second (λ).
    pub rate: f64,
    /// Mean time one worker spends on a frame, milliseconds (1/μ).
    pub service_ms: f64,
    /// Target 99th percentile of the response time (wait + service), milliseconds.
    pub p99_ms: Option<f64>,
    /// Highest utilisation per worker accepted when no `p99_ms` is given.
    pub max_utilization: f64,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// A rate, time or utilisation that is not a positive finite number (or not in 0..1).
    #[error("{name} must be {expected}, got {value}")]
    OutOfRange { name: &'static str, expected: &'static str, value: f64 },
    /// The tail target is below what the service time alone gives.
    #[error(
        "no worker count meets --p99-ms {target_ms}: even without waiting, the 99th percentile of an \
         exponential service time of {service_ms} ms is {floor_ms:.1} ms (ln 100 × the mean); \
         raise --p99-ms or make a frame faster (batching, a GPU)"
    )]
    TailUnreachable { target_ms: f64, service_ms: f64, floor_ms: f64 },
    /// More workers than [`MAX_WORKERS`] would be needed.
    #[error("more than {MAX_WORKERS} workers would be needed")]
    TooManyWorkers,
}

/// The M/M/c figures for one worker count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Queue {
    /// Servers (workers).
    pub workers: u32,
    /// ρ = λ / (c μ).
    pub utilization: f64,
    /// Erlang C: the probability that a frame waits for a free worker.
    pub p_wait: f64,
    /// Mean wait before service, milliseconds.
    pub wait_ms: f64,
    /// Mean response time (wait + service), milliseconds.
    pub response_ms: f64,
    /// 99th percentile of the response time, milliseconds.
    pub p99_ms: f64,
}

/// The single-worker M/M/1 figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SingleWorker {
    /// T = 1 / (μ − λ), milliseconds.
    pub response_ms: f64,
    /// Lq = λ² / (μ (μ − λ)), frames.
    pub queue_length: f64,
}

/// A sizing: the workers needed now and the partitions that leave room to double.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub rate: f64,
    pub service_ms: f64,
    /// The smallest queue that meets the request at `rate` (its fields are the plan's).
    #[serde(flatten)]
    pub queue: Queue,
    /// Workers needed at twice the rate, by the same criterion: the partition count of
    /// `images` that lets the group scale out that far (a partition feeds one worker).
    pub partitions: u32,
    /// One worker alone; `None` when it cannot keep up (λ ≥ μ).
    pub mm1: Option<SingleWorker>,
}

/// Erlang C: the probability of waiting in M/M/`c` with offered load `a` = λ/μ Erlangs
/// (`a < c`).
pub fn erlang_c(c: u32, a: f64) -> f64 {
    // Erlang B by its recursion, B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)); then
    // C = c B / (c - a (1 - B)).
    let b = (1..=c).fold(1.0, |b, k| a * b / (f64::from(k) + a * b));
    let c = f64::from(c);
    c * b / (c - a * (1.0 - b))
}

/// The M/M/c figures for `workers` at `rate` frames/s and `service_ms`; `None` when the
/// queue is unstable (λ ≥ c μ).
pub fn queue(rate: f64, service_ms: f64, workers: u32) -> Option<Queue> {
    let mu = 1000.0 / service_ms;
    let a = rate / mu;
    let c = f64::from(workers);
    if workers == 0 || a >= c {
        return None;
    }
    let p_wait = erlang_c(workers, a);
    // The wait is 0 with probability 1 - C, else exponential with rate θ = c μ - λ.
    let theta = c * mu - rate;
    let wait_s = p_wait / theta;
    let tail = |t: f64| response_tail(p_wait, mu, theta, t);
    Some(Queue {
        workers,
        utilization: a / c,
        p_wait,
        wait_ms: wait_s * 1e3,
        response_ms: (wait_s + 1.0 / mu) * 1e3,
        p99_ms: quantile(tail, 0.01) * 1e3,
    })
}

/// P(T > t) for T = wait + service: wait 0 with probability 1 - `p_wait`, else
/// exponential(θ); service exponential(μ).
fn response_tail(p_wait: f64, mu: f64, theta: f64, t: f64) -> f64 {
    let service = (-mu * t).exp();
    // P(X + S > t) for independent X ~ exp(θ), S ~ exp(μ) (hypoexponential).
    let waited = if (theta - mu).abs() < 1e-9 * mu {
        (1.0 + mu * t) * service
    } else {
        (theta * service - mu * (-theta * t).exp()) / (theta - mu)
    };
    (1.0 - p_wait) * service + p_wait * waited
}

/// The t where the decreasing `tail` falls to `p`, by bisection.
fn quantile(tail: impl Fn(f64) -> f64, p: f64) -> f64 {
    let mut high = 1e-3;
    while tail(high) > p {
        high *= 2.0;
    }
    let mut low = 0.0;
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if tail(mid) > p {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// Sizes the group for `request`.
pub fn plan(request: &PlanRequest) -> Result<Plan, PlanError> {
    check_positive("--rate", request.rate)?;
    check_positive("--service-ms", request.service_ms)?;
    if let Some(p99) = request.p99_ms {
        check_positive("--p99-ms", p99)?;
        let floor_ms = request.service_ms * 100f64.ln();
        if p99 <= floor_ms {
            return Err(PlanError::TailUnreachable { target_ms: p99, service_ms: request.service_ms, floor_ms });
        }
    }
    let u = request.max_utilization;
    if !(u > 0.0 && u < 1.0) {
        return Err(PlanError::OutOfRange { name: "--max-utilization", expected: "between 0 and 1", value: u });
    }
    let now = smallest(request, request.rate)?;
    let partitions = smallest(request, 2.0 * request.rate)?.workers;
    let mu = 1000.0 / request.service_ms;
    let mm1 = (request.rate < mu).then(|| SingleWorker {
        response_ms: 1000.0 / (mu - request.rate),
        queue_length: request.rate * request.rate / (mu * (mu - request.rate)),
    });
    Ok(Plan { rate: request.rate, service_ms: request.service_ms, queue: now, partitions, mm1 })
}

/// The smallest stable worker count meeting the request's criterion at `rate`.
fn smallest(request: &PlanRequest, rate: f64) -> Result<Queue, PlanError> {
    let offered = rate * request.service_ms / 1000.0;
    // Below ⌊A⌋ + 1 workers the queue is unstable.
    let first = (offered.floor() as u64 + 1).min(u64::from(MAX_WORKERS)) as u32;
    (first..=MAX_WORKERS)
        .filter_map(|c| queue(rate, request.service_ms, c))
        .find(|q| match request.p99_ms {
            Some(target) => q.p99_ms <= target,
            None => q.utilization <= request.max_utilization,
        })
        .ok_or(PlanError::TooManyWorkers)
}

fn check_positive(name: &'static str, value: f64) -> Result<(), PlanError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(PlanError::OutOfRange { name, expected: "a positive number", value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1e-12)
    }

    /// Published values (e.g. Kleinrock, Queueing Systems vol. 1; Gross & Harris): two
    /// servers at 1 Erlang wait with probability 1/3; three at 2 Erlangs, 4/9; and a call
    /// centre at 10 Erlangs with 11 agents, 0.6821.
    #[test]
    fn erlang_c_matches_published_values() {
        assert!(close(erlang_c(2, 1.0), 1.0 / 3.0, 1e-12));
        assert!(close(erlang_c(3, 2.0), 4.0 / 9.0, 1e-12));
        assert!(close(erlang_c(11, 10.0), 0.6821, 1e-3), "{}", erlang_c(11, 10.0));
    }

    #[test]
    fn erlang_c_stays_finite_for_many_servers() {
        let p = erlang_c(5_000, 4_900.0);
        assert!(p.is_finite() && p > 0.0 && p < 1.0, "{p}");
    }

    /// M/M/1 in closed form: P(wait) = ρ, W = 1/(μ-λ), Wq = ρ/(μ-λ), and T exponential
    /// with rate μ-λ, so p99 = ln(100)/(μ-λ).
    #[test]
    fn one_worker_is_mm1() {
        let (rate, service_ms) = (30.0, 25.0); // μ = 40/s, ρ = 0.75
        let q = queue(rate, service_ms, 1).unwrap();
        assert!(close(q.p_wait, 0.75, 1e-12));
        assert!(close(q.response_ms, 100.0, 1e-9), "{q:?}");
        assert!(close(q.wait_ms, 75.0, 1e-9), "{q:?}");
        assert!(close(q.p99_ms, 100f64.ln() * 100.0, 1e-6), "{q:?}");
    }

    /// M/M/2 at 1 Erlang, μ = 1/s: Wq = C/(cμ-λ) = (1/3)/1 s.
    #[test]
    fn two_workers_at_one_erlang() {
        let q = queue(1.0, 1000.0, 2).unwrap();
        assert!(close(q.utilization, 0.5, 1e-12));
        assert!(close(q.wait_ms, 1000.0 / 3.0, 1e-9), "{q:?}");
        assert!(close(q.response_ms, 4000.0 / 3.0, 1e-9), "{q:?}");
    }

    #[test]
    fn unstable_queues_have_no_figures() {
        assert_eq!(queue(40.0, 25.0, 1), None, "λ = μ");
        assert!(queue(40.0, 25.0, 2).is_some());
    }

    #[test]
    fn plan_by_utilization_and_by_tail() {
        let mut request = PlanRequest { rate: 100.0, service_ms: 25.0, p99_ms: None, max_utilization: 0.8 };
        // A = 2.5 Erlangs: 4 workers give ρ = 0.625 ≤ 0.8, 3 give 0.833.
        let p = plan(&request).unwrap();
        assert_eq!((p.queue.workers, p.partitions), (4, 7), "{p:?}"); // 2λ: A = 5, 7 workers → 0.714
        assert_eq!(p.mm1, None, "one worker cannot keep up with 100/s at 25 ms");
        request.p99_ms = Some(200.0);
        let p = plan(&request).unwrap();
        let fewer = queue(request.rate, request.service_ms, p.queue.workers - 1);
        assert!(p.queue.p99_ms <= 200.0 && fewer.is_none_or(|q| q.p99_ms > 200.0), "smallest c: {p:?} {fewer:?}");
    }

    #[test]
    fn impossible_or_malformed_requests_say_why() {
        let request = PlanRequest { rate: 10.0, service_ms: 25.0, p99_ms: Some(100.0), max_utilization: 0.8 };
        let err = plan(&request).unwrap_err();
        assert!(matches!(err, PlanError::TailUnreachable { .. }), "{err}");
        assert!(err.to_string().contains("115.1 ms"), "{err}");
        let bad = PlanRequest { rate: -1.0, ..request.clone() };
        assert!(matches!(plan(&bad), Err(PlanError::OutOfRange { name: "--rate", .. })));
        let bad = PlanRequest { max_utilization: 1.0, p99_ms: None, ..request };
        assert!(matches!(plan(&bad), Err(PlanError::OutOfRange { name: "--max-utilization", .. })));
    }
}

//! What a concurrency level measured. Each client task keeps its own
//! [`Tally`] (no sharing on the hot path); the tallies are merged when the
//! level ends and summarized into a [`LevelResult`].

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Status;

use crate::cpu::CpuUse;

/// Latencies above this are recorded as this (microseconds).
const HIGHEST_LATENCY_US: u64 = 60_000_000;
/// Enough for p99.9 to within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

pub struct Tally {
    /// Send-to-response time of every successful command, in microseconds.
    latency_us: Histogram<u64>,
    /// Leads whose capture was answered inside the window.
    leads: u64,
    commands_by_rpc: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, ErrorCount>,
}

/// Failed commands of one gRPC code, with the first message as an example.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub count: u64,
    pub first_message: String,
}

/// Counts a failed command under its gRPC code, keeping the first message.
pub fn count_error(errors: &mut BTreeMap<String, ErrorCount>, status: &Status) {
    let count = errors
        .entry(format!("{:?}", status.code()))
        .or_insert_with(|| ErrorCount { count: 0, first_message: status.message().to_string() });
    count.count += 1;
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub clients: usize,
    /// Length of the measurement window.
    pub seconds: f64,
    /// Successful commands answered inside the window.
    pub commands: u64,
    /// Leads captured inside the window.
    pub leads: u64,
    pub commands_per_second: f64,
    pub leads_per_second: f64,
    pub latency_ms: Latency,
    pub commands_by_rpc: BTreeMap<&'static str, u64>,
    /// Failed commands by gRPC code, warm-up included.
    pub errors: BTreeMap<String, ErrorCount>,
    /// The level was cut short after `--max-errors` failures.
    pub stopped_by_errors: bool,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// An empty histogram of durations in microseconds, 1 µs to a minute.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS).expect("constant histogram bounds are valid")
}

/// Records `duration` in a [`micros_histogram`]: at least 1 µs, at most its
/// highest value.
pub fn record_micros(histogram: &mut Histogram<u64>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

impl Latency {
    /// Quantiles in milliseconds of a [`micros_histogram`].
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

impl Tally {
    pub fn new() -> Self {
        Self { latency_us: micros_histogram(), leads: 0, commands_by_rpc: BTreeMap::new(), errors: BTreeMap::new() }
    }

    pub fn record_command(&mut self, rpc: &'static str, latency: Duration) {
        record_micros(&mut self.latency_us, latency);
        *self.commands_by_rpc.entry(rpc).or_default() += 1;
    }

    pub fn record_lead(&mut self) {
        self.leads += 1;
    }

    pub fn record_error(&mut self, status: &Status) {
        count_error(&mut self.errors, status);
    }

    pub fn merge(&mut self, other: Tally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.leads += other.leads;
        for (rpc, count) in other.commands_by_rpc {
            *self.commands_by_rpc.entry(rpc).or_default() += count;
        }
        for (code, errors) in other.errors {
            self.errors.entry(code).and_modify(|mine| mine.count += errors.count).or_insert(errors);
        }
    }

    pub fn summarize(self, clients: usize, window: Duration, cpu: CpuUse, stopped_by_errors: bool) -> LevelResult {
        let seconds = window.as_secs_f64();
        let per_second = |count: u64| if seconds > 0.0 { count as f64 / seconds } else { 0.0 };
        let histogram = &self.latency_us;
        LevelResult {
            clients,
            seconds,
            commands: histogram.len(),
            leads: self.leads,
            commands_per_second: per_second(histogram.len()),
            leads_per_second: per_second(self.leads),
            latency_ms: Latency::from_micros(histogram),
            commands_by_rpc: self.commands_by_rpc,
            errors: self.errors,
            stopped_by_errors,
            cpu,
        }
    }
}

impl LevelResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|errors| errors.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_cpu() -> CpuUse {
        CpuUse {
            server_cores: None,
            postgres_cores: None,
            relay_cores: None,
            nats_server_cores: None,
            projector_cores: None,
            bench_cores: None,
            machine_busy_cores: None,
            interrupt_cores: None,
            other_cores: None,
        }
    }

    #[test]
    fn merged_tallies_summarize_to_rates_and_quantiles() {
        let mut first = Tally::new();
        for millis in 1..=99 {
            first.record_command("CaptureLead", Duration::from_millis(millis));
            first.record_lead();
        }
        let mut second = Tally::new();
        second.record_command("QualifyLead", Duration::from_millis(1000));
        second.record_error(&Status::aborted("version moved on"));
        second.record_error(&Status::aborted("again"));
        first.merge(second);
        let result = first.summarize(4, Duration::from_secs(10), idle_cpu(), false);
        assert_eq!(result.commands, 100);
        assert_eq!(result.leads, 99);
        assert!((result.commands_per_second - 10.0).abs() < 1e-9);
        assert!((result.latency_ms.p50 - 50.0).abs() < 0.1, "p50 {}", result.latency_ms.p50);
        assert!((result.latency_ms.max - 1000.0).abs() < 1.0, "max {}", result.latency_ms.max);
        assert_eq!(result.commands_by_rpc.get("QualifyLead"), Some(&1));
        assert_eq!(result.error_count(), 2);
        assert_eq!(result.errors["Aborted"].first_message, "version moved on");
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}

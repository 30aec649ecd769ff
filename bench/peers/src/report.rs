//! The run's result: a JSON object for tooling and one line for people.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::drive::Tally;

#[derive(Debug, Serialize)]
pub struct Report {
    pub peer: &'static str,
    /// The peer's crates and their versions as resolved in Cargo.lock.
    pub crates: BTreeMap<&'static str, &'static str>,
    pub writers: usize,
    /// Length of the measured window; shorter than asked for if the run
    /// stopped on errors.
    pub duration_secs: f64,
    /// Commands that succeeded in the window; each appended one event.
    pub events: u64,
    pub events_per_second: f64,
    pub latency_ms: Latency,
    /// Failed commands by message, warm-up included: failed for good, or
    /// still failing after every retry allowed.
    pub errors: BTreeMap<String, u64>,
    /// Attempts run again after a concurrency conflict or a stale refusal,
    /// warm-up included; a command's retries are not errors.
    pub retries: u64,
    /// Whether the run stopped early, having reached its error limit.
    pub stopped_by_errors: bool,
    /// How the peer was set up, where a reader of its figures should know.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Report {
    pub fn new(
        peer: &'static str,
        crates: BTreeMap<&'static str, &'static str>,
        writers: usize,
        tally: &Tally,
        notes: Vec<String>,
    ) -> Self {
        let millis = |micros: u64| micros as f64 / 1000.0;
        let at = |quantile: f64| millis(tally.latency.value_at_quantile(quantile));
        let duration_secs = (tally.window.as_secs_f64() * 1000.0).round() / 1000.0;
        Self {
            peer,
            crates,
            writers,
            duration_secs,
            events: tally.events,
            events_per_second: if duration_secs > 0.0 {
                (tally.events as f64 / duration_secs * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency_ms: Latency { p50: at(0.5), p99: at(0.99), p999: at(0.999), max: millis(tally.latency.max()) },
            errors: tally.errors.clone(),
            retries: tally.retries.total(),
            stopped_by_errors: tally.stopped_by_errors,
            notes,
        }
    }

    /// One line: throughput, latency, errors, retries.
    pub fn summary(&self) -> String {
        let errors: u64 = self.errors.values().sum();
        let Latency { p50, p99, p999, max } = self.latency_ms;
        format!(
            "{peer} ({writers} writers): {events} events in {secs} s = {rate} events/s; \
             latency p50 {p50} ms, p99 {p99} ms, p99.9 {p999} ms, max {max} ms; {errors} errors, {retries} retries",
            peer = self.peer,
            writers = self.writers,
            events = self.events,
            secs = self.duration_secs,
            rate = self.events_per_second,
            retries = self.retries,
        )
    }
}

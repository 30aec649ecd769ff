//! The W3C Trace Context (<https://www.w3.org/TR/trace-context/>) a command
//! came with, kept in its event's metadata so whoever reads the event (the
//! NATS relay, a consumer) can continue the command's trace.

/// A `traceparent` header that parsed as version `00` with non-zero ids,
/// and the `tracestate` that came with it (vendor data, passed on as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

/// W3C's limit on a `tracestate` header that must be passed on.
const MAX_TRACESTATE_LEN: usize = 512;

impl TraceContext {
    /// `None` when `traceparent` is not `00-<32 hex>-<16 hex>-<2 hex>`
    /// (lowercase) or either id is all zeros: W3C says to ignore such a
    /// header, so it is not an error. A `tracestate` longer than 512
    /// characters or with characters outside printable ASCII is dropped,
    /// the `traceparent` kept.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.split('-');
        let (Some("00"), Some(trace_id), Some(parent_id), Some(flags), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |text: &str| text.bytes().all(|b| b == b'0');
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) || zero(trace_id) || zero(parent_id) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|state| {
                !state.is_empty()
                    && state.len() <= MAX_TRACESTATE_LEN
                    && state.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .map(str::to_string);
        Some(Self { traceparent: traceparent.to_string(), tracestate })
    }

    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The 32 hex digits naming the trace.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_parses_with_its_tracestate() {
        let context = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(context.traceparent(), VALID);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for invalid in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01",
        ] {
            assert_eq!(TraceContext::parse(invalid, None), None, "{invalid:?}");
        }
    }

    #[test]
    fn a_bad_tracestate_is_dropped_and_the_traceparent_kept() {
        for invalid in ["", "  ", "k=v\u{7f}", &"k=v,".repeat(200)] {
            let context = TraceContext::parse(VALID, Some(invalid)).expect("traceparent is valid");
            assert_eq!(context.tracestate(), None, "{invalid:?}");
        }
    }
}

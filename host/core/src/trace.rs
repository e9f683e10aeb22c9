//! W3C trace context (the `traceparent` header): an instance keeps the one
//! of the request that started it, so that its episodes and activities join
//! that request's trace.

use std::fmt;

/// One span's place in a trace, as `traceparent` carries it.
///
/// ```
/// use duro_core::trace::TraceContext;
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let context = TraceContext::parse(header).unwrap();
/// assert_eq!(context.to_string(), header);
/// assert_eq!(context.child().trace_id, context.trace_id);
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace (never zero).
    pub trace_id: u128,
    /// The span (never zero).
    pub span_id: u64,
    /// Whether the caller records this trace.
    pub sampled: bool,
}

impl TraceContext {
    /// Parse a `traceparent` header: version `00` (or a later one, read as
    /// `00` as the specification says), non-zero ids; anything else is None.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(version, 2)
            || version.eq_ignore_ascii_case("ff")
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// The start of a new trace.
    pub fn root() -> Self {
        TraceContext {
            trace_id: (u128::from(random_u64()) << 64 | u128::from(random_u64())).max(1),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

fn new_span_id() -> u64 {
    random_u64().max(1)
}

/// 64 random bits, cheaply: a per-thread splitmix64 sequence seeded from
/// `fresh_id` (time, process, counter). Ids are made for every request and
/// episode, so they must cost nanoseconds; they need to be unique, not secret.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            u64::from_str_radix(&crate::model::fresh_id()[..16], 16).unwrap_or(0x9e37_79b9),
        );
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

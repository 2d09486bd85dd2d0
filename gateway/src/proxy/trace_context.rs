//! W3C Trace Context (`traceparent`, `tracestate`): a valid one from the client travels on
//! untouched; otherwise the gateway starts a trace, so every upstream request carries one and the
//! access log can name it.
//!
//! The gateway records no spans, so it neither replaces the client's parent id (that would point
//! at a span nobody reports) nor claims to have sampled a trace it starts (flags `00`).

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

use crate::random;
use crate::text::put_hex;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` + 32 hex digits of trace id + `-` + 16 of parent id + `-` + 2 of flags.
const VERSION_00_LEN: usize = 55;

/// Keeps a valid `traceparent` (and its `tracestate`); replaces a missing, repeated or malformed
/// one with a new trace, dropping a `tracestate` that belonged to no valid trace.
pub fn ensure(headers: &mut HeaderMap) {
    // One lookup whether the header is there or not.
    match headers.entry(&TRACEPARENT) {
        Entry::Occupied(mut present) => {
            let mut values = present.iter();
            if let (Some(value), None) = (values.next(), values.next()) {
                if is_valid(value.as_bytes()) {
                    return;
                }
            }
            // Replaces every value.
            present.insert(new_traceparent());
        }
        Entry::Vacant(absent) => {
            absent.insert(new_traceparent());
        }
    }
    headers.remove(&TRACESTATE);
}

/// The trace id (32 hex digits) of a `traceparent` that [`ensure`] has seen to.
pub fn trace_id(traceparent: &HeaderValue) -> Option<&str> {
    traceparent.to_str().ok()?.get(3..35)
}

/// Version `00` exactly, or a later version (not `ff`) whose first 55 characters follow version
/// `00` and that goes on, if at all, after a `-`. Ids are lowercase hex and not all zeros.
fn is_valid(value: &[u8]) -> bool {
    let Some(head) = value.get(..VERSION_00_LEN) else { return false };
    let version = &head[0..2];
    let rest_ok = match version {
        b"00" => value.len() == VERSION_00_LEN,
        b"ff" => false,
        _ => value.len() == VERSION_00_LEN || value[VERSION_00_LEN] == b'-',
    };
    let lower_hex = |field: &[u8]| field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |field: &[u8]| field.iter().any(|&b| b != b'0');
    let (trace, parent, flags) = (&head[3..35], &head[36..52], &head[53..55]);
    rest_ok
        && head[2] == b'-'
        && head[35] == b'-'
        && head[52] == b'-'
        && lower_hex(version)
        && lower_hex(trace)
        && lower_hex(parent)
        && lower_hex(flags)
        && not_zero(trace)
        && not_zero(parent)
}

fn new_traceparent() -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // The odd bit set: a random id is never the invalid all-zeros.
    put_hex(&mut text[3..19], random::next_u64());
    put_hex(&mut text[19..35], random::next_u64() | 1);
    put_hex(&mut text[36..52], random::next_u64() | 1);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ensured(values: &[&str], tracestate: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&TRACEPARENT, HeaderValue::from_str(value).unwrap());
        }
        if let Some(state) = tracestate {
            headers.insert(&TRACESTATE, HeaderValue::from_str(state).unwrap());
        }
        ensure(&mut headers);
        headers
    }

    #[test]
    fn valid_traceparent_and_its_tracestate_pass_untouched() {
        let headers = ensured(&[VALID], Some("vendor=abc"));
        assert_eq!(headers.get(&TRACEPARENT).unwrap(), VALID);
        assert_eq!(headers.get(&TRACESTATE).unwrap(), "vendor=abc");
    }

    #[test]
    fn later_version_with_more_fields_passes_untouched() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert_eq!(ensured(&[later], None).get(&TRACEPARENT).unwrap(), later);
    }

    #[test]
    fn missing_or_invalid_traceparent_is_replaced_and_its_tracestate_dropped() {
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", // no flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // version 00 with more
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01", // wrong separator
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later version, no dash
        ];
        for value in invalid {
            let headers = ensured(&[value], Some("vendor=abc"));
            let new = headers.get(&TRACEPARENT).unwrap().as_bytes();
            assert!(is_valid(new) && new != value.as_bytes(), "{value:?} should be replaced");
            assert!(headers.get(&TRACESTATE).is_none(), "{value:?}: tracestate should be dropped");
        }
        assert!(is_valid(ensured(&[], None).get(&TRACEPARENT).unwrap().as_bytes()));
        let repeated = ensured(&[VALID, VALID], None);
        assert_eq!(repeated.get_all(&TRACEPARENT).iter().count(), 1);
        assert_ne!(repeated.get(&TRACEPARENT).unwrap(), VALID, "a repeated traceparent is invalid");
    }

    #[test]
    fn new_traceparents_are_unsampled_version_00_with_distinct_ids() {
        let a = ensured(&[], None).get(&TRACEPARENT).unwrap().clone();
        let b = ensured(&[], None).get(&TRACEPARENT).unwrap().clone();
        let text = a.to_str().unwrap();
        assert!(text.starts_with("00-") && text.ends_with("-00"), "{text}");
        assert_ne!(trace_id(&a), trace_id(&b));
        assert_eq!(trace_id(&a).map(str::len), Some(32));
    }
}

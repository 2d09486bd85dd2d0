//! Numbers, addresses and JSON strings appended as text without the `fmt` or serde machinery, for
//! what runs once or more per request (forwarding headers, ids, access log lines, error bodies,
//! Redis keys): `write!` costs hundreds of instructions per call where these cost tens.

use std::net::IpAddr;

/// `value` in decimal.
pub fn push_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// `value` in decimal, zero-padded on the left to `width` digits (never cut: a wider value is
/// written whole).
pub fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// An address as `Display` writes it; IPv4, the common case, without `fmt`.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The two hex digits of every byte value: a u64 takes eight lookups, not sixteen shifts and masks.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xF]];
        byte += 1;
    }
    table
};

/// Fills `out` with the lowest `out.len()` hex digits of `value` (lowercase).
pub fn put_hex(out: &mut [u8], mut value: u64) {
    for digits in out.rchunks_mut(2) {
        let [high, low] = HEX_PAIRS[(value & 0xFF) as usize];
        match digits {
            [first, second] => (*first, *second) = (high, low),
            // An odd-length `out` begins with a lone digit.
            [only] => *only = low,
            _ => {}
        }
        value >>= 8;
    }
}

/// A JSON string (RFC 8259 section 7): `"` and `\` escaped, control characters as `\u00XX`,
/// everything else (non-ASCII included) copied as UTF-8.
pub fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    // Most values need no escaping; this pass has no early exit, so it compiles to vector compares.
    let plain = !value.bytes().fold(false, |any, byte| any | (byte < 0x20) | (byte == b'"') | (byte == b'\\'));
    match plain {
        true => out.push_str(value),
        false => push_json_escaped(out, value),
    }
    out.push('"');
}

fn push_json_escaped(out: &mut String, value: &str) {
    let mut start = 0;
    for (index, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `start..index` falls on character boundaries.
        out.push_str(&value[start..index]);
        if escaped.is_empty() {
            let mut hex = [0u8; 2];
            put_hex(&mut hex, u64::from(byte));
            out.push_str("\\u00");
            out.extend(hex.map(char::from));
        } else {
            out.push_str(escaped);
        }
        start = index + 1;
    }
    out.push_str(&value[start..]);
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn numbers_match_display() {
        for value in [0, 7, 10, 99, 100, 255, 65_535, 1_000_000, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, value);
            assert_eq!(out, value.to_string());
            for width in [0, 1, 2, 3, 4, 25] {
                let mut out = String::new();
                push_padded(&mut out, value, width);
                assert_eq!(out, format!("{value:0width$}"), "{value} at width {width}");
            }
        }
    }

    #[test]
    fn addresses_match_display() {
        let addresses: [IpAddr; 5] = [
            Ipv4Addr::new(0, 0, 0, 0).into(),
            Ipv4Addr::new(127, 0, 0, 1).into(),
            Ipv4Addr::new(10, 200, 9, 255).into(),
            Ipv6Addr::LOCALHOST.into(),
            "2001:db8::8a2e:370:7334".parse().unwrap(),
        ];
        for ip in addresses {
            let mut out = String::from("x");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
    }

    #[test]
    fn put_hex_writes_the_lowest_digits_of_any_length() {
        let mut out = [0u8; 16];
        put_hex(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef");
        let mut odd = [0u8; 5];
        put_hex(&mut odd, 0xfedc_ba98);
        assert_eq!(&odd, b"cba98");
    }

    #[test]
    fn json_strings_read_back_as_the_same_text() {
        for value in
            ["", "plain", "say \"hi\"", "back\\slash", "tab\tnew\nline\u{0}\u{1f}", "caf\u{e9} \u{1f600}", "\u{7f}"]
        {
            let mut out = String::new();
            push_json_string(&mut out, value);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), value, "{out}");
        }
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, r#""a\"b\\c\u0001""#);
    }
}

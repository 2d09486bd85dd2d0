//! When a certificate is valid: `notBefore` and `notAfter`, read from the DER by a short walk
//! instead of a full X.509 parser (RFC 5280 section 4.1: Certificate > TBSCertificate > Validity).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::timefmt::days_from_civil;

/// When a certificate is valid, from `notBefore` to `notAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The certificate's validity, or None when the DER is not shaped like a certificate.
pub(in crate::config) fn validity(der: &[u8]) -> Option<Validity> {
    let (_, certificate, _) = tlv(der, 0x30)?;
    let (_, tbs, _) = tlv(certificate, 0x30)?;
    // [0] EXPLICIT version is optional (absent means v1).
    let rest = match tbs.first() {
        Some(0xa0) => tlv(tbs, 0xa0)?.2,
        _ => tbs,
    };
    let (_, _serial, rest) = tlv(rest, 0x02)?;
    let (_, _signature, rest) = tlv(rest, 0x30)?;
    let (_, _issuer, rest) = tlv(rest, 0x30)?;
    let (_, validity, _) = tlv(rest, 0x30)?;
    let (before_tag, not_before, rest) = tlv_any(validity)?;
    let (after_tag, not_after, _) = tlv_any(rest)?;
    Some(Validity { not_before: time(before_tag, not_before)?, not_after: time(after_tag, not_after)? })
}

/// One DER element with the expected tag: (tag, contents, what follows).
fn tlv(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    tlv_any(input).filter(|(found, _, _)| *found == tag)
}

fn tlv_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first & 0x80 == 0 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..count)?, rest.get(count..)?);
        (bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy = number(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, minute, second) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    let seconds = days_from_civil(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?) * 86_400
        + hour * 3_600
        + minute * 60
        + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_reads_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let day = |y, m, d| UNIX_EPOCH + Duration::from_secs(days_from_civil(y, m, d) as u64 * 86_400);
        let expected = Validity { not_before: day(2030, 1, 2), not_after: day(2031, 7, 15) };
        assert_eq!(validity(certificate.der()), Some(expected));
    }

    #[test]
    fn time_parses_both_encodings() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(UNIX_EPOCH));
        assert_eq!(time(0x18, b"19700102000000Z"), Some(UNIX_EPOCH + Duration::from_secs(86_400)));
        assert_eq!(time(0x17, b"491231235959Z").map(|t| t > UNIX_EPOCH), Some(true));
        assert_eq!(time(0x17, b"garbage"), None);
    }

    #[test]
    fn validity_of_garbage_is_none() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x82, 0xff]), None);
    }
}

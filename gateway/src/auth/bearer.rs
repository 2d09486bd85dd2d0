//! Finding the token: `Authorization: Bearer <token>` (RFC 6750 section 2.1), nothing else.

use http::header::AUTHORIZATION;
use http::HeaderMap;

use super::AuthError;

/// Larger tokens are refused before any decoding. Real JWTs are well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The bearer token, `None` when the request carries none (no Authorization header, or another
/// scheme such as Basic: RFC 6750 treats both as "no authentication information").
pub(crate) fn token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    // Visible ASCII and spaces only: anything else cannot be a bearer credential.
    let Ok(value) = value.to_str() else {
        return Err(AuthError::Malformed("the Authorization header is not visible ASCII"));
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Malformed("`Bearer` without a token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("the token is larger than 8192 bytes"));
    }
    // A JWS in compact form: three base64url parts separated by dots. The signature may be empty
    // (an unsecured JWT, `alg: none`): that is a well-formed token, refused later as invalid.
    let base64url = |part: &str| part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = token.splitn(4, '.');
    let shaped = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty() && !payload.is_empty() && [header, payload, signature].into_iter().all(base64url)
        }
        _ => false,
    };
    if !shaped {
        return Err(AuthError::Malformed("the token is not three base64url parts separated by dots"));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn malformed(values: &[&[u8]]) -> bool {
        matches!(token(&headers(values)), Err(AuthError::Malformed(_)))
    }

    #[test]
    fn token_bearer_any_case_found() {
        assert_eq!(token(&headers(&[b"Bearer a.b.c"])).unwrap(), Some("a.b.c"));
        assert_eq!(token(&headers(&[b"bEaReR a-_.b.c9"])).unwrap(), Some("a-_.b.c9"));
        assert_eq!(token(&headers(&[b"Bearer a.b."])).unwrap(), Some("a.b."), "unsecured: refused when verified");
    }

    #[test]
    fn token_absent_or_other_scheme_none() {
        assert_eq!(token(&headers(&[])).unwrap(), None);
        assert_eq!(token(&headers(&[b"Basic dXNlcjpwdw=="])).unwrap(), None);
    }

    #[test]
    fn token_malformed_rejected() {
        assert!(malformed(&[b"Bearer"]));
        assert!(malformed(&[b"Bearer    "]));
        assert!(malformed(&[b"Bearer a.b.c", b"Bearer a.b.c"]));
        assert!(malformed(&[b"Bearer a.b.\xc3\xa9"]));
        assert!(malformed(&[b"Bearer a.b"]));
        assert!(malformed(&[b"Bearer a.b.c.d"]));
        assert!(malformed(&[b"Bearer a..c"]));
        assert!(malformed(&[b"Bearer a.b.c d"]));
        assert!(malformed(&[b"Bearer a+b.c.d"]));
        let huge = format!("Bearer a.{}.c", "b".repeat(MAX_TOKEN_BYTES));
        assert!(malformed(&[huge.as_bytes()]));
    }
}

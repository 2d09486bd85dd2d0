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
    // Visible ASCII and spaces only: anything else cannot be a bearer credential. Checked here in
    // passes without early exits, which compile to vector compares (tokens run to a kilobyte and
    // every request on an authenticated route has one); `to_str` checks byte by byte.
    let bytes = value.as_bytes();
    let visible = bytes.iter().fold(true, |ok, &b| ok & ((b' '..=b'~').contains(&b) | (b == b'\t')));
    let Some(value) = visible.then(|| std::str::from_utf8(bytes).ok()).flatten() else {
        return Err(AuthError::Malformed("the Authorization header is not visible ASCII"));
    };
    // The scheme ends at a tab too: `Bearer<TAB><token>` taken for another scheme would pass
    // unchecked on an optional-auth route, to upstreams that split on any whitespace.
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if value.as_bytes().get(scheme.len()) == Some(&b'\t') {
        return Err(AuthError::Malformed("a tab after `Bearer`: the token follows a space (RFC 6750 section 2.1)"));
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
    if !is_compact_jws(token) {
        return Err(AuthError::Malformed("the token is not three base64url parts separated by dots"));
    }
    Ok(Some(token))
}

/// Two non-empty base64url parts and a third (possibly empty) one, separated by exactly two dots.
fn is_compact_jws(token: &str) -> bool {
    let alphabet =
        token.bytes().fold(true, |ok, b| ok & (b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.')));
    let Some((header, rest)) = token.split_once('.') else { return false };
    let Some((payload, signature)) = rest.split_once('.') else { return false };
    alphabet && !header.is_empty() && !payload.is_empty() && !signature.contains('.')
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
        assert_eq!(token(&headers(&[b"Basic\tdXNlcjpwdw=="])).unwrap(), None);
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
        assert!(malformed(&[b"Bearer .b.c"]));
        assert!(malformed(&[b"Bearer a.b.c="]));
        assert!(malformed(&[b"Bearer ..."]));
        assert!(malformed(&[b"Bearer a.b.c d"]));
        assert!(malformed(&[b"Bearer a+b.c.d"]));
        assert!(malformed(&[b"Bearer\ta.b.c"]), "a tab is no separator");
        assert!(malformed(&[b"bearer\t a.b.c"]));
        let huge = format!("Bearer a.{}.c", "b".repeat(MAX_TOKEN_BYTES));
        assert!(malformed(&[huge.as_bytes()]));
    }
}

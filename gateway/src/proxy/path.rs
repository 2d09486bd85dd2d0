//! Request path rules: refuse dot segments, and rewrite a matched prefix for the upstream.

use std::borrow::Cow;

use crate::config::{PathMatch, Rewrite};

/// Refuses `.` and `..` segments, also percent-encoded (`%2e`), which would let a request escape
/// the prefix it was routed by once an upstream normalises the path.
pub fn has_dot_segment(path: &str) -> bool {
    path.contains(['.', '%']) && path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e` or `%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', after @ ..] => after,
            [b'%', b'2', b'e' | b'E', after @ ..] => after,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The path the upstream receives after the route's rewrite.
pub fn rewrite<'a>(path: &'a str, matched: &PathMatch, rewrite: &Rewrite) -> Cow<'a, str> {
    let rest = match matched {
        PathMatch::Exact(_) => "",
        // A "/" prefix matches everything and removes nothing.
        PathMatch::Prefix(prefix) if prefix == "/" => path,
        PathMatch::Prefix(prefix) => path.get(prefix.len()..).unwrap_or(""),
    };
    match rewrite {
        Rewrite::None => Cow::Borrowed(path),
        Rewrite::StripPrefix if rest.is_empty() => Cow::Borrowed("/"),
        Rewrite::StripPrefix => Cow::Borrowed(rest),
        Rewrite::ReplacePrefix(replacement) => {
            let base = replacement.trim_end_matches('/');
            let joined = format!("{base}{rest}");
            Cow::Owned(if joined.is_empty() { "/".to_string() } else { joined })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_dot_segment_detects_plain_and_encoded_dots() {
        for path in ["/a/../b", "/a/./b", "/..", "/a/%2e%2e/b", "/a/%2E/b", "/a/.%2e", "/a/.."] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/", "/a/b", "/a/...", "/a/.hidden", "/a/b.c", "/%2e%2e%2e"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn rewrite_strip_and_replace_prefix() {
        let api = PathMatch::Prefix("/api".into());
        let strip = Rewrite::StripPrefix;
        let v2 = Rewrite::ReplacePrefix("/v2".into());
        let root = Rewrite::ReplacePrefix("/".into());
        let cases = [
            ("/api/x/y", &api, &strip, "/x/y"),
            ("/api", &api, &strip, "/"),
            ("/api/", &api, &strip, "/"),
            ("/api/x", &api, &v2, "/v2/x"),
            ("/api", &api, &v2, "/v2"),
            ("/api/x", &api, &root, "/x"),
            ("/api", &api, &root, "/"),
            ("/api/x", &api, &Rewrite::None, "/api/x"),
        ];
        for (path, matched, rule, expected) in cases {
            assert_eq!(rewrite(path, matched, rule), expected, "{path} {rule:?}");
        }
        let exact = PathMatch::Exact("/login".into());
        assert_eq!(rewrite("/login", &exact, &strip), "/");
        assert_eq!(rewrite("/login", &exact, &Rewrite::ReplacePrefix("/auth/login".into())), "/auth/login");
        let all = PathMatch::Prefix("/".into());
        assert_eq!(rewrite("/x", &all, &Rewrite::ReplacePrefix("/base".into())), "/base/x");
        assert_eq!(rewrite("/x", &all, &strip), "/x");
    }
}

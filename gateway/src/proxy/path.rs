//! Request path rules: one spelling per path for routing and the upstream alike, no dot segments,
//! and the matched prefix rewritten for the upstream.

use std::borrow::Cow;

use crate::config::{PathMatch, Rewrite};

/// The path to route and forward, when it is not the request's own: `//` merged into `/` (as nginx
/// does), and percent-encoded unreserved characters decoded (RFC 3986 section 6.2.2.2: `/%61dmin`
/// is `/admin`). The router and the upstream then see one spelling, so another one cannot reach a
/// route's upstream past the checks of the route that path belongs to. Refused: dot segments, a
/// raw `\` (not a URI character; Windows-style servers read it as `/`, so `/\admin` would be
/// `/admin` there but not here), and a `%` that starts no escape (decoding `/%6%31dmin` once would
/// make the new escape `/%61dmin`, which the upstream would decode again into `/admin`).
pub fn normalize(path: &str) -> Result<Normalized, &'static str> {
    // One pass tells what the path needs, where a search per kind would take five; most need none.
    let seen = Seen::in_path(path.as_bytes());
    if seen.backslash {
        return Err("the path must not contain a backslash (write it %5C)");
    }
    let decoded = match seen.percent || seen.double_slash {
        true => merge_slashes_and_decode(path)?,
        false => Decoded::default(),
    };
    let path = decoded.path.as_deref().unwrap_or(path);
    if (seen.dot || seen.percent) && has_dot_segment(path) {
        return Err("the path must not contain '.' or '..' segments");
    }
    let without_parameters = seen.semicolon.then(|| without_parameters(path));
    Ok(Normalized { path: decoded.path, without_parameters, encoded_slash: decoded.encoded_slash })
}

/// What [`normalize`] made of a path.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The path to route and forward, when it is not the request's own.
    pub path: Option<String>,
    /// The path as servlet containers (Tomcat, Jetty, Spring) read it, when it has `;` path
    /// parameters: they drop them, so `/admin;x/y` is `/admin/y` there. The router cuts prefixes
    /// at `/` only and sends it elsewhere; the caller refuses a path the two readings route apart.
    pub without_parameters: Option<String>,
    /// The path has a `%2F` or `%5C`: data to the router, but a separator to many upstreams (nginx,
    /// WSGI and ASGI servers, Go before 1.22 decode it), so `/admin%2Fusers` routed apart from
    /// `/admin` would be `/admin/users` there. Refused unless the route allows it.
    pub encoded_slash: bool,
}

/// What in a path [`normalize`] changes or refuses.
#[derive(Debug, Default)]
struct Seen {
    percent: bool,
    dot: bool,
    backslash: bool,
    double_slash: bool,
    semicolon: bool,
}

impl Seen {
    fn in_path(path: &[u8]) -> Seen {
        let mut seen = Seen::default();
        let mut previous = 0;
        for &b in path {
            match b {
                b'%' => seen.percent = true,
                b'.' => seen.dot = true,
                b'\\' => seen.backslash = true,
                b';' => seen.semicolon = true,
                b'/' if previous == b'/' => seen.double_slash = true,
                _ => {}
            }
            previous = b;
        }
        seen
    }
}

/// What [`merge_slashes_and_decode`] made of a path.
#[derive(Debug, Default)]
struct Decoded {
    /// `None` when nothing changed.
    path: Option<String>,
    encoded_slash: bool,
}

/// `//` merged and unreserved `%XX` decoded; every `%` must start an escape (RFC 3986 section 2.1).
fn merge_slashes_and_decode(path: &str) -> Result<Decoded, &'static str> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut encoded_slash = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'/' if out.last() == Some(&b'/') => i += 1,
            b'%' => {
                let escape = bytes.get(i + 1..i + 3).filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
                let escape =
                    escape.ok_or("a '%' in the path must start an escape of two hex digits (write '%' as %25)")?;
                match decode_unreserved(escape) {
                    Some(decoded) => out.push(decoded),
                    None => {
                        encoded_slash |= matches!(escape, [b'2', b'f' | b'F'] | [b'5', b'c' | b'C']);
                        out.extend_from_slice(&bytes[i..i + 3]);
                    }
                }
                i += 3;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    // ASCII bytes were only dropped or replaced by ASCII, so the text stays UTF-8.
    let path = (out != bytes).then(|| String::from_utf8(out).ok()).flatten();
    Ok(Decoded { path, encoded_slash })
}

/// `path` with each segment's `;` parameters dropped and the `//` that leaves merged.
fn without_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        if !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(segment);
    }
    out
}

/// The unreserved character (`A-Z a-z 0-9 - . _ ~`) that two hex digits encode, if they do.
fn decode_unreserved(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let [high, low] = hex else { return None };
    let byte = u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()?;
    (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')).then_some(byte)
}

/// Whether a segment is `.` or `..` as some upstream may read it: dots also written `%2e`,
/// segments also ended by `%2f` or `%5c` (decoded, or taken as `/`, by many servers), and
/// anything from a `;` on left out (servlet containers drop such path parameters: `..;x` is `..`),
/// also from a `%3b` (a server that decodes before it drops them reads `..%3bx` as `..;x`).
/// Such a path could escape the prefix it was routed by once the upstream normalises it.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let (mut start, mut i) = (0, 0);
    loop {
        let separator = match bytes.get(i..) {
            None | Some([]) => 0,
            Some([b'/', ..]) => 1,
            Some([b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..]) => 3,
            Some(_) => {
                i += 1;
                continue;
            }
        };
        let segment = bytes.get(start..i).unwrap_or_default();
        if is_dot_segment(before_parameters(segment)) {
            return true;
        }
        if separator == 0 {
            return false;
        }
        i += separator;
        start = i;
    }
}

/// `segment` up to its first `;` or `%3b`.
fn before_parameters(segment: &[u8]) -> &[u8] {
    let end = (0..segment.len()).find(|&i| matches!(&segment[i..], [b';', ..] | [b'%', b'3', b'b' | b'B', ..]));
    &segment[..end.unwrap_or(segment.len())]
}

/// `.` or `..`, each dot possibly written `%2e` or `%2E`.
fn is_dot_segment(mut rest: &[u8]) -> bool {
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
    fn has_dot_segment_sees_the_segments_upstreams_see() {
        let escapes = [
            "/raw/..%2fsecret",
            "/raw/%2e%2e%2fsecret",
            "/raw/..%2Fsecret",
            "/raw/..;/secret",
            "/raw/..;jsessionid=1/secret",
            "/raw/.;/secret",
            "/raw/%2e%2e%5csecret",
            "/raw/x%5C..%5Csecret",
            "/raw/..%3bx/secret",
            "/raw/%2e%2e%3Bx/secret",
            "/raw/.%3b/secret",
        ];
        for path in escapes {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/files/a%2Fb", "/a/b;v=1", "/a/...;x", "/a/.hidden;x", "/%25", "/a/..x%3b", "/a/%3b.."] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn normalize_merges_slashes_and_decodes_unreserved_characters() {
        let cases = [
            ("/%72sa", Some("/rsa")),
            ("/rs%61/x", Some("/rsa/x")),
            ("//rsa", Some("/rsa")),
            ("/a///b//", Some("/a/b/")),
            ("/%41%7a%30%2D%5f%7E", Some("/Az0-_~")),
            // Reserved and other characters stay encoded; nothing is decoded twice.
            ("/files/a%2Fb", None),
            ("/%2561", None),
            ("/a%20b%00", None),
            ("/caf%C3%A9", None),
            ("/", None),
            ("/a/b", None),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize(path).map(|n| n.path), Ok(expected.map(String::from)), "{path}");
        }
    }

    #[test]
    fn normalize_refuses_a_percent_that_starts_no_escape() {
        // Decoded once, the first two would be `/%61dmin`: `/admin` to an upstream that decodes.
        for path in ["/%6%31dmin", "/%%36%31dmin", "/a%", "/a%4", "/a%zz", "/a%4/b", "/%%"] {
            assert!(normalize(path).is_err(), "{path}");
        }
        assert_eq!(normalize("/%2561dmin").map(|n| n.path), Ok(None), "an encoded '%' is data");
    }

    #[test]
    fn normalize_tells_an_encoded_slash() {
        for path in ["/admin%2Fusers", "/a%2fb", "/a%5Cb", "/a%5cb", "/%61%2F"] {
            assert_eq!(normalize(path).map(|n| n.encoded_slash), Ok(true), "{path}");
        }
        for path in ["/admin/users", "/a%2561", "/a%20b", "//a"] {
            assert_eq!(normalize(path).map(|n| n.encoded_slash), Ok(false), "{path}");
        }
    }

    #[test]
    fn normalize_reads_paths_with_parameters_as_servlet_containers_do() {
        let cases = [
            ("/admin;x/y", "/admin/y"),
            ("/admin;x", "/admin"),
            ("/a;x/b;y=1;z/c", "/a/b/c"),
            ("/;x/admin", "/admin"),
            ("/a;x/", "/a/"),
            ("/%61dmin;x/y", "/admin/y"),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize(path).map(|n| n.without_parameters), Ok(Some(expected.to_string())), "{path}");
        }
        assert_eq!(normalize("/admin/y").map(|n| n.without_parameters), Ok(None));
    }

    #[test]
    fn normalize_refuses_a_raw_backslash() {
        for path in ["/\\admin/x", "/a\\b"] {
            assert!(normalize(path).is_err(), "{path}");
        }
        assert_eq!(normalize("/a%5Cb").map(|n| n.path), Ok(None), "encoded, it is data to the router");
    }

    #[test]
    fn normalize_refuses_dot_segments_decoding_reveals() {
        for path in ["/a/%2e%2e/b", "/a/%2E%2e%2fb", "/a//../b", "/a/%2e%2E"] {
            assert!(normalize(path).is_err(), "{path}");
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

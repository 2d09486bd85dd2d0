//! Route matching: picks the most specific route for a request (see `RouteMatch::specificity`).
//!
//! Lookups are hash probes, not a scan: the request's host selects a host table (exact, then
//! wildcard suffixes longest first, then any-host); within it the full path is probed for exact
//! routes and then each segment-boundary prefix, longest first. Cost grows with the number of
//! path segments, not the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{HostMatch, PathMatch, Route};

/// Keys come from the trusted config; requests only look up. Hash flooding needs attacker-chosen
/// keys in the table, so a fast non-keyed hash is safe here and cheaper than SipHash per probe.
type Table<V> = HashMap<String, V, BuildHasherDefault<FxHasher>>;

/// Compiled routing table; `find` returns an index into the route list it was built from.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: Table<PathTable>,
    /// Wildcard hosts as (".example.com", table), longest suffix first.
    suffix_hosts: Vec<(String, PathTable)>,
    any_host: PathTable,
}

#[derive(Debug, Default)]
struct PathTable {
    exact: Table<Vec<Candidate>>,
    prefix: Table<Vec<Candidate>>,
    /// The longest prefix's length: no probe of a longer one can match, so none is made.
    longest_prefix: usize,
}

/// Routes sharing one host and path, ordered so the first whose methods and headers fit wins.
#[derive(Debug)]
struct Candidate {
    route: usize,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Candidate {
    /// A header condition holds when any of the request's values for it is the value, spaces and
    /// tabs around it aside: the upstream may read any of several (the last, or all joined) and
    /// trims them (RFC 9110 section 5.5), so holding on the first alone would let `x-version: 1`
    /// then `x-version: 2`, or `" 2"` over HTTP/2, pass a route gated on `"2"` to the catch-all.
    fn fits(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|(name, value)| {
                headers.get_all(name).iter().any(|sent| sent.as_bytes().trim_ascii() == value.as_bytes())
            })
    }
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let mut router = Router::default();
        for (index, route) in routes.iter().enumerate() {
            let table = match &route.matcher.host {
                Some(HostMatch::Exact(host)) => router.exact_hosts.entry(host.clone()).or_default(),
                Some(HostMatch::Suffix(suffix)) => match router.suffix_hosts.iter().position(|(s, _)| s == suffix) {
                    Some(at) => &mut router.suffix_hosts[at].1,
                    None => {
                        router.suffix_hosts.push((suffix.clone(), PathTable::default()));
                        let last = router.suffix_hosts.len() - 1;
                        &mut router.suffix_hosts[last].1
                    }
                },
                None => &mut router.any_host,
            };
            let (map, path) = match &route.matcher.path {
                PathMatch::Exact(path) => (&mut table.exact, path),
                PathMatch::Prefix(prefix) => (&mut table.prefix, prefix),
            };
            map.entry(path.clone()).or_default().push(Candidate {
                route: index,
                methods: route.matcher.methods.clone(),
                headers: route.matcher.headers.clone(),
            });
        }
        router.suffix_hosts.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        for table in router.tables_mut() {
            table.longest_prefix = table.prefix.keys().map(String::len).max().unwrap_or(0);
            for candidates in table.exact.values_mut().chain(table.prefix.values_mut()) {
                // Stable sort: equally specific candidates keep file order.
                candidates.sort_by_key(|c| (c.methods.is_empty(), std::cmp::Reverse(c.headers.len())));
            }
        }
        router
    }

    fn tables_mut(&mut self) -> impl Iterator<Item = &mut PathTable> {
        self.exact_hosts
            .values_mut()
            .chain(self.suffix_hosts.iter_mut().map(|(_, t)| t))
            .chain(std::iter::once(&mut self.any_host))
    }

    /// The index of the winning route, if any. `host` may carry a port and any letter case.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method, headers: &HeaderMap) -> Option<usize> {
        let host = host.map(normalize_host);
        if let Some(host) = host.as_deref() {
            if let Some(found) = self.exact_hosts.get(host).and_then(|t| t.find(path, method, headers)) {
                return Some(found);
            }
            for (suffix, table) in &self.suffix_hosts {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(found) = table.find(path, method, headers) {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(path, method, headers)
    }
}

impl PathTable {
    fn find(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<usize> {
        let first_fit =
            |candidates: &Vec<Candidate>| candidates.iter().find(|c| c.fits(method, headers)).map(|c| c.route);
        if let Some(found) = self.exact.get(path).and_then(first_fit) {
            return Some(found);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Probe "/a/b/c", "/a/b", "/a", "/": only whole segments can match a prefix, and none
        // longer than the longest prefix.
        let mut end = path.len();
        if end > self.longest_prefix {
            let bytes = path.as_bytes();
            end = match bytes[self.longest_prefix] {
                b'/' => self.longest_prefix,
                _ => bytes[..self.longest_prefix].iter().rposition(|&b| b == b'/').unwrap_or(0),
            };
        }
        loop {
            let probe = if end == 0 { "/" } else { &path[..end] };
            if let Some(found) = self.prefix.get(probe).and_then(first_fit) {
                return Some(found);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }
}

/// The multiply-rotate hash rustc uses for its own tables (FxHash).
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Lowercase, without port, without the trailing dot of a fully qualified name (`a.test.` is
/// `a.test`, as nginx takes it: else it would pass a route for `a.test` by); allocates only when the
/// host has uppercase letters.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content, as configured hosts are written without them.
        rest.split(']').next().unwrap_or(rest)
    } else {
        let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
        name.strip_suffix('.').unwrap_or(name)
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_port)
    }
}

#[cfg(test)]
mod tests;

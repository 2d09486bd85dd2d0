//! Header rules for both directions: hop-by-hop removal, forwarding headers, request ids.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::trace_context;
use crate::limit::Decision;
use crate::random;
use crate::text::{push_ip, put_hex};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Longest client-sent request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The message hop-by-hop headers are removed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Request,
    /// A WebSocket upgrade request: `Upgrade` is kept and `Connection: upgrade` set, since the
    /// handshake must reach the upstream.
    Upgrade,
    /// `TE` is a request header: a response's is removed whatever it says.
    Response,
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` except `te: trailers`,
/// which a request may carry end to end (RFC 9110 section 10.1.4). From requests also
/// `HTTP2-Settings`, which only goes with an `Upgrade: h2c` (hop-by-hop, RFC 7540 section 3.2.1),
/// and `Trailer`: the gateway passes no request trailers on, so it must not announce any.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, message: Message) {
    let upgrade = message == Message::Upgrade;
    let request = message != Message::Response;
    // Most messages carry none: one pass over the names instead of eight lookups.
    if !upgrade && !headers.keys().any(|name| is_hop_by_hop(name) || (request && is_request_only_hop(name))) {
        return;
    }
    if request {
        headers.remove(&HTTP2_SETTINGS);
        headers.remove(header::TRAILER);
    }
    // Decided first: a compliant sender lists TE in Connection (RFC 9110 section 10.1.4).
    let te_trailers = request
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers.get_all(header::CONNECTION).iter().flat_map(headers_named_in).collect();
        for name in named {
            // The `traceparent` is the gateway's by now (the access log names its trace): a client
            // naming it here must not take it away from the upstream.
            if !(upgrade && name == header::UPGRADE) && name != trace_context::TRACEPARENT {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    // The body was framed by the coding, not by a length sent alongside it; passed on, that stale
    // length would cut the body short (RFC 9112 section 6.3: a proxy must remove it).
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [header::CONNECTION, header::TRANSFER_ENCODING, header::TE, header::UPGRADE].contains(name)
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn is_request_only_hop(name: &HeaderName) -> bool {
    name == header::TRAILER || name == HTTP2_SETTINGS
}

fn headers_named_in(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value.to_str().unwrap_or("").split(',').filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
}

/// An HTTP/2 request's fields as an HTTP/1.1 upstream must get them: the `Cookie` fields a client
/// may split are joined with "; " (RFC 9113 section 8.2.3: an HTTP/1.1 server reads one, or joins
/// them with ",", which makes the first cookie's value swallow the rest), and a repeated
/// `content-length` is sent once (see [`single_content_length`]).
pub fn join_http2_fields(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_some() && cookies.next().is_some() {
        let values: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        // Joined from valid values with a valid separator: valid.
        if let Ok(joined) = HeaderValue::from_maybe_shared(bytes::Bytes::from(values.join(&b"; "[..]))) {
            headers.insert(header::COOKIE, joined);
        }
    }
    single_content_length(headers);
}

/// Sends as one value a `Content-Length` that came as several equal ones (`5, 5`, or the field
/// twice), which hyper and h2 accept: RFC 9110 section 8.6 asks a recipient that accepts such a
/// list to pass on one, an HTTP/2 client must refuse the list as malformed (RFC 9113 section
/// 8.1.1), and nginx refuses the repeated field with 400.
pub fn single_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    // The values were checked to be equal before this: the first stands for them all.
    let length = first.as_bytes().split(|&b| b == b',').next().unwrap_or_default().trim_ascii();
    if let Ok(length) = HeaderValue::from_bytes(length) {
        headers.insert(header::CONTENT_LENGTH, length);
    }
}

/// The headers a client must never send an upstream (zero trust), also spelled with `_` for `-`
/// (CGI, PHP and nginx with `underscores_in_headers` read `X_User_Id` as `X-User-Id`). A name
/// ending in `*` stands for every name it begins (`x-user-*`: `x-user-scopes`, `x-user-sub`...).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    exact: Vec<HeaderName>,
    /// The names ending in `*`.
    prefixes: Vec<HeaderName>,
    /// Bit `b` set: a name or prefix starts with byte `b` (names are ASCII). Most headers a request
    /// carries start with another letter than every name, and are ruled out by that alone.
    first_bytes: u128,
    /// Bit `n` set: an exact name is `n` bytes long (bit 63: 63 or more).
    lengths: u64,
}

impl IdentityHeaders {
    pub fn new(names: &[HeaderName]) -> IdentityHeaders {
        let (prefixes, exact): (Vec<HeaderName>, Vec<HeaderName>) =
            names.iter().cloned().partition(|name| name.as_str().ends_with('*'));
        // A bare `*` begins every name (validation refuses it: it takes in Host).
        let first_bytes = names.iter().fold(0, |bytes, name| match name.as_str() {
            "*" => u128::MAX,
            _ => bytes | first_byte_bit(name),
        });
        let lengths = exact.iter().fold(0, |lengths, name| lengths | length_bit(name));
        IdentityHeaders { exact, prefixes, first_bytes, lengths }
    }

    fn contains(&self, present: &HeaderName) -> bool {
        self.removes(present).is_some()
    }

    /// The identity header (or `*` pattern) `present` is a spelling of, if any.
    pub(crate) fn removes(&self, present: &HeaderName) -> Option<&HeaderName> {
        if self.first_bytes & first_byte_bit(present) == 0 {
            return None;
        }
        if self.lengths & length_bit(present) != 0 {
            if let Some(name) = self.exact.iter().find(|name| spelled_as(present, name)) {
                return Some(name);
            }
        }
        self.prefixes.iter().find(|prefix| {
            let prefix = &prefix.as_str().as_bytes()[..prefix.as_str().len() - 1];
            present.as_str().as_bytes().get(..prefix.len()).is_some_and(|start| same_but_underscores(start, prefix))
        })
    }
}

fn length_bit(name: &HeaderName) -> u64 {
    1 << name.as_str().len().min(63)
}

fn first_byte_bit(name: &HeaderName) -> u128 {
    name.as_str().as_bytes().first().map_or(0, |&b| 1 << (b & 0x7f))
}

/// Removes every identity header; returns how many header lines it removed.
pub fn remove_identity(headers: &mut HeaderMap, identity: &IdentityHeaders) -> u64 {
    // Clients rarely send any: looking at the few names present is cheaper than a lookup per name.
    if !headers.keys().any(|present| identity.contains(present)) {
        return 0;
    }
    let present: Vec<HeaderName> = headers.keys().filter(|name| identity.contains(name)).cloned().collect();
    let removed = present.iter().map(|name| match headers.entry(name) {
        header::Entry::Occupied(entry) => entry.remove_entry_mult().1.count(),
        header::Entry::Vacant(_) => 0,
    });
    removed.sum::<usize>() as u64
}

/// `present` is `name`, with any of its `-` written `_`.
fn spelled_as(present: &HeaderName, name: &HeaderName) -> bool {
    same_but_underscores(present.as_str().as_bytes(), name.as_str().as_bytes())
}

fn same_but_underscores(present: &[u8], name: &[u8]) -> bool {
    present.len() == name.len() && present.iter().zip(name).all(|(p, n)| p == n || (*p == b'_' && *n == b'-'))
}

/// Whether a client may only send this header through a trusted proxy: `Forwarded`, every
/// `X-Forwarded-*` (`-Port`, `-Prefix`, `-Ssl`... too: frameworks build redirect URLs from them)
/// and `X-Real-IP`, also spelled with `_` for `-`, as Traefik strips them; and the headers other
/// proxies use to pass on the original URL, host or client address ([`LOOKALIKES`]), which
/// frameworks honour in front of the request line (Symfony and IIS took `X-Original-URL` as the
/// path: a client sending it would have the upstream act on a path the gateway never routed). From
/// anyone else they are removed before the gateway sets its own.
fn is_forwarding(name: &HeaderName) -> bool {
    const FAMILY: &[u8] = b"x-forwarded-";
    let name = name.as_str().as_bytes();
    // Most request headers start otherwise: one comparison each.
    match name.first() {
        Some(b'x') => {
            name.get(..FAMILY.len()).is_some_and(|start| same_but_underscores(start, FAMILY))
                || LOOKALIKES.iter().any(|lookalike| same_but_underscores(name, lookalike))
        }
        Some(b'f') => name == b"forwarded",
        Some(b't') => same_but_underscores(name, b"true-client-ip"),
        _ => false,
    }
}

/// The `X-` headers other than `X-Forwarded-*` that name the original request or client to an
/// upstream behind a proxy (IIS URL Rewrite, nginx and Envoy setups, CDNs, Rails' remote_ip).
const LOOKALIKES: [&[u8]; 10] = [
    b"x-real-ip",
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
    b"x-original-host",
    b"x-host",
    b"x-http-host-override",
    b"x-envoy-original-path",
    b"x-client-ip",
    b"x-cluster-client-ip",
];

/// True when the request asks for an HTTP/1.1 upgrade to WebSocket, the one protocol the gateway
/// tunnels. Any other `Upgrade` is dropped as a hop-by-hop header and the request goes on as plain
/// HTTP: a tunnelled `h2c` upgrade would carry every later request past routing, auth and limits.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let websocket = upgrades.next().is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    websocket
        && upgrades.next().is_none()
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// What the gateway knows about the client side of a request.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: IpAddr,
    /// Whether the peer is a trusted proxy whose forwarding headers are believed.
    pub trusted: bool,
    /// `http` or `https`: how the request reached the gateway.
    pub proto: &'static str,
    /// The Host the client asked for, if any and readable as text. Passed as the value itself:
    /// `X-Forwarded-Host` (and a preserved `Host`) take it without a copy.
    pub host: Option<&'a HeaderValue>,
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239) for the upstream.
///
/// Headers from a trusted proxy are extended; from anyone else every forwarding header (see
/// [`is_forwarding`]) is removed first, so a client cannot forge the address, scheme, host or
/// port an upstream sees.
pub fn set_forwarding(headers: &mut HeaderMap, client: Client<'_>) {
    if !client.trusted && headers.keys().any(is_forwarding) {
        let forged: Vec<HeaderName> = headers.keys().filter(|name| is_forwarding(name)).cloned().collect();
        for name in forged {
            headers.remove(name);
        }
    }
    let ip = client.ip.to_canonical();
    let mut xff = match client.trusted.then(|| joined(headers, &X_FORWARDED_FOR)).flatten() {
        Some(earlier) => earlier + ", ",
        None => String::with_capacity(40),
    };
    let ip_start = xff.len();
    push_ip(&mut xff, ip);
    // Formatted once: Forwarded takes the same text.
    let ip_text = &xff[ip_start..];
    let mut forwarded_element = String::with_capacity(64);
    match ip {
        IpAddr::V4(_) => {
            forwarded_element.push_str("for=");
            forwarded_element.push_str(ip_text);
        }
        IpAddr::V6(_) => {
            forwarded_element.push_str("for=\"[");
            forwarded_element.push_str(ip_text);
            forwarded_element.push_str("]\"");
        }
    }
    if let Some(host) = client.host.and_then(|h| h.to_str().ok()).filter(|h| is_quotable(h)) {
        forwarded_element.push_str(";host=\"");
        forwarded_element.push_str(host);
        forwarded_element.push('"');
    }
    forwarded_element.push_str(";proto=");
    forwarded_element.push_str(client.proto);
    let forwarded = match client.trusted.then(|| joined(headers, &header::FORWARDED)).flatten() {
        Some(earlier) => format!("{earlier}, {forwarded_element}"),
        None => forwarded_element,
    };

    if !(client.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    }
    if !(client.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match client.host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    // Both values are built from an IP address, a checked host and ASCII text, so they are valid.
    if let Some(value) = owned_value(xff) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    if let Some(value) = owned_value(forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

/// The client's address when the peer is a trusted proxy: the nearest `X-Forwarded-For` entry
/// that is not itself a trusted proxy (entries further left are the client's own claims, which
/// anyone can forge). Falls back to the peer when the header is absent or unreadable.
pub fn forwarded_client_ip(headers: &HeaderMap, peer: IpAddr, is_trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let entries = headers.get_all(&X_FORWARDED_FOR).iter().rev().flat_map(|value| {
        let entries = value.to_str().unwrap_or("").split(',').rev();
        entries.map(forwarded_entry_ip)
    });
    let mut client = peer;
    for entry in entries {
        match entry {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The address in one `X-Forwarded-For` entry: a bare address, or one with a port as some load
/// balancers write it (`203.0.113.7:5123`, `[2001:db8::7]:5123`); IPv4-mapped IPv6 as IPv4, as
/// for peers.
fn forwarded_entry_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = match entry.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match entry.parse::<std::net::SocketAddr>() {
            Ok(address) => address.ip(),
            Err(_) => entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(ip.to_canonical())
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) from a rate-limit decision.
pub fn set_rate_limit(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(&RATELIMIT_REMAINING, never_indexed(HeaderValue::from(decision.remaining)));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(whole_seconds(decision.reset)));
}

/// The response's `X-Request-Id`.
pub fn set_request_id(headers: &mut HeaderMap, request_id: HeaderValue) {
    headers.insert(&X_REQUEST_ID, never_indexed(request_id));
}

/// Marks a value that differs on every response so that HTTP/2 sends it as a literal HPACK never
/// indexes (the `sensitive` flag; HTTP/1.1 ignores it). Indexed, each new value would join the
/// connection's header table, evicting entries that do repeat, and every later response would
/// compare its value with each earlier one still kept under that name.
fn never_indexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// Seconds for a header, rounded up so a client that waits that long is never early.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A header value that takes over the string's buffer instead of copying it.
fn owned_value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
}

/// All values of a header joined with ", ", or None when absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?.to_string();
    values.try_fold(first, |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v.to_str().ok()?);
        Some(acc)
    })
}

/// A host that can sit in an RFC 7239 quoted-string without escaping.
fn is_quotable(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The client's request id when well formed (1 to 128 of `A-Z a-z 0-9 . _ : -`), else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        let bytes = id.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if well_formed && headers.get_all(&X_REQUEST_ID).iter().count() == 1 {
            return id.clone();
        }
    }
    new_request_id()
}

/// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then version, variant and 74 random bits,
/// so ids sort by time. Built here rather than by a UUID crate to avoid a syscall per request.
fn new_request_id() -> HeaderValue {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let high = (millis << 16) | 0x7000 | (random::next_u64() & 0x0FFF);
    let low = (random::next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    // 8-4-4-4-12 hex digits: `high` fills the first three groups, `low` the last two.
    let mut text = [b'-'; 36];
    put_hex(&mut text[0..8], high >> 32);
    put_hex(&mut text[9..13], high >> 16);
    put_hex(&mut text[14..18], high);
    put_hex(&mut text[19..23], low >> 48);
    put_hex(&mut text[24..36], low);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests;

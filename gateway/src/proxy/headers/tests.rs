use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    headers
}

fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn remove_hop_by_hop_strips_rfc9110_set_and_connection_named() {
    let mut h = map(&[
        ("connection", "keep-alive, x-private"),
        ("connection", "X-Other"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("x-private", "secret"),
        ("x-other", "1"),
        ("te", "gzip"),
        ("x-kept", "yes"),
    ]);
    remove_hop_by_hop(&mut h, Message::Request);
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
}

#[test]
fn remove_hop_by_hop_drops_trailer_and_http2_settings_from_requests_only() {
    let pairs = [("trailer", "x-checksum"), ("http2-settings", "AAMAAABkAAQAAP__"), ("x-kept", "yes")];
    for message in [Message::Request, Message::Upgrade] {
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h, message);
        assert!(h.get("trailer").is_none() && h.get("http2-settings").is_none(), "{message:?}: {h:?}");
        assert_eq!(get(&h, "x-kept"), Some("yes"));
    }
    let mut h = map(&pairs);
    remove_hop_by_hop(&mut h, Message::Response);
    assert_eq!(get(&h, "trailer"), Some("x-checksum"), "a response's trailers go on, and so does its Trailer");
}

#[test]
fn remove_hop_by_hop_keeps_te_trailers_even_when_listed_in_connection() {
    let mut h = map(&[("te", "trailers, deflate"), ("connection", "te")]);
    remove_hop_by_hop(&mut h, Message::Request);
    assert_eq!(get(&h, "te"), Some("trailers"));
    assert!(h.get("connection").is_none());
}

#[test]
fn remove_hop_by_hop_removes_te_from_a_response_whatever_it_says() {
    let mut h = map(&[("te", "trailers"), ("x-kept", "yes")]);
    remove_hop_by_hop(&mut h, Message::Response);
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
}

#[test]
fn remove_hop_by_hop_for_upgrade_keeps_upgrade_and_connection() {
    let mut h = map(&[("connection", "Upgrade, x-private"), ("upgrade", "websocket"), ("x-private", "1")]);
    assert!(is_upgrade_request(&h));
    remove_hop_by_hop(&mut h, Message::Upgrade);
    assert_eq!(get(&h, "upgrade"), Some("websocket"));
    assert_eq!(get(&h, "connection"), Some("upgrade"));
    assert!(h.get("x-private").is_none());
}

#[test]
fn is_upgrade_request_needs_both_headers() {
    assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
    assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    assert!(is_upgrade_request(&map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
}

#[test]
fn is_upgrade_request_only_for_websocket() {
    assert!(is_upgrade_request(&map(&[("connection", "upgrade"), ("upgrade", "WebSocket")])));
    for other in ["h2c", "websocket, h2c", "h2c, websocket", "TLS/1.2"] {
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade"), ("upgrade", other)])), "{other}");
    }
    let mut h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABk")]);
    assert!(!is_upgrade_request(&h));
    remove_hop_by_hop(&mut h, Message::Request);
    assert!(h.is_empty(), "an h2c upgrade goes on as a plain request: {h:?}");
}

#[test]
fn remove_hop_by_hop_drops_a_length_sent_with_a_transfer_coding() {
    let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "3"), ("content-type", "text/plain")]);
    remove_hop_by_hop(&mut h, Message::Request);
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert_eq!(get(&h, "content-type"), Some("text/plain"));
    let mut h = map(&[("content-length", "3")]);
    remove_hop_by_hop(&mut h, Message::Request);
    assert_eq!(get(&h, "content-length"), Some("3"), "a length alone stays");
}

static HOST: HeaderValue = HeaderValue::from_static("shop.test:8080");

fn client(ip: &str, trusted: bool) -> Client<'static> {
    Client { ip: ip.parse::<IpAddr>().unwrap(), trusted, proto: "http", host: Some(&HOST) }
}

#[test]
fn set_forwarding_untrusted_peer_replaces_spoofed_headers() {
    let mut h = map(&[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
        ("forwarded", "for=6.6.6.6"),
    ]);
    set_forwarding(&mut h, client("10.0.0.7", false));
    assert_eq!(get(&h, "x-forwarded-for"), Some("10.0.0.7"));
    assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(get(&h, "x-forwarded-host"), Some("shop.test:8080"));
    assert_eq!(get(&h, "forwarded"), Some("for=10.0.0.7;host=\"shop.test:8080\";proto=http"));
}

#[test]
fn set_forwarding_untrusted_peer_loses_every_forwarding_header_in_any_spelling() {
    let forged = [
        ("x_forwarded_for", "9.9.9.9"),
        ("x-forwarded_host", "evil.test"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "//evil.test"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-server", "evil"),
        ("x-real-ip", "6.6.6.6"),
        ("x_real_ip", "6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x_rewrite_url", "/admin"),
        ("x-original-uri", "/admin"),
        ("x-original-host", "admin.test"),
        ("x-host", "admin.test"),
        ("x-http-host-override", "admin.test"),
        ("x-envoy-original-path", "/admin"),
        ("x-client-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
    ];
    let mut h = map(&[forged.as_slice(), &[("x-forwardedness", "kept"), ("x-real-ip-note", "kept")]].concat());
    set_forwarding(&mut h, client("10.0.0.7", false));
    let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    let set_by_the_gateway = ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];
    assert_eq!(names, [&set_by_the_gateway[..], &["x-forwardedness", "x-real-ip-note"]].concat());
    assert_eq!(get(&h, "x-forwarded-for"), Some("10.0.0.7"));

    // A trusted proxy's are kept as it sent them.
    let mut h = map(&forged);
    set_forwarding(&mut h, client("10.0.0.7", true));
    for (name, value) in forged {
        assert_eq!(get(&h, name), Some(value), "{name}");
    }
}

#[test]
fn set_forwarding_trusted_peer_appends_to_existing_chain() {
    let mut h = map(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-for", "5.6.7.8"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=1.2.3.4;proto=https"),
    ]);
    set_forwarding(&mut h, client("10.0.0.7", true));
    assert_eq!(get(&h, "x-forwarded-for"), Some("1.2.3.4, 5.6.7.8, 10.0.0.7"));
    assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
    assert_eq!(get(&h, "forwarded"), Some("for=1.2.3.4;proto=https, for=10.0.0.7;host=\"shop.test:8080\";proto=http"));
}

#[test]
fn set_forwarding_ipv6_is_quoted_and_mapped_ipv4_unwrapped() {
    let mut h = HeaderMap::new();
    set_forwarding(&mut h, Client { host: None, ..client("2001:db8::1", false) });
    assert_eq!(get(&h, "forwarded"), Some("for=\"[2001:db8::1]\";proto=http"));
    assert!(h.get("x-forwarded-host").is_none());
    let mut h = HeaderMap::new();
    set_forwarding(&mut h, client("::ffff:10.0.0.9", false));
    assert_eq!(get(&h, "x-forwarded-for"), Some("10.0.0.9"));
}

#[test]
fn request_id_well_formed_is_kept() {
    let h = map(&[("x-request-id", "abc-123_x.y:z")]);
    assert_eq!(request_id(&h), "abc-123_x.y:z");
}

#[test]
fn request_id_malformed_or_missing_is_replaced_by_uuid_v7() {
    let too_long = "a".repeat(129);
    for h in [
        map(&[]),
        map(&[("x-request-id", "has space")]),
        map(&[("x-request-id", &too_long)]),
        map(&[("x-request-id", "")]),
    ] {
        assert_uuid_v7(request_id(&h).to_str().unwrap());
    }
}

fn assert_uuid_v7(id: &str) {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
    assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
    assert!(groups[2].starts_with('7'), "version nibble: {id}");
    assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "variant bits: {id}");
}

#[test]
fn request_id_generated_ids_are_unique_and_carry_the_current_time() {
    let ids: Vec<String> = (0..1000).map(|_| request_id(&HeaderMap::new()).to_str().unwrap().to_owned()).collect();
    let millis_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let first_millis = u128::from_str_radix(&ids[0].replace('-', "")[..12], 16).unwrap();
    assert!(millis_now - first_millis < 60_000, "timestamp prefix is not the current time: {}", ids[0]);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
}

#[test]
fn remove_identity_removes_every_listed_header_case_insensitively_and_counts_them() {
    let mut h = map(&[("X-User-Id", "42"), ("x-user-role", "admin"), ("x-user-role", "root"), ("accept", "*/*")]);
    let names = IdentityHeaders::new(&[
        HeaderName::from_static("x-user-id"),
        HeaderName::from_static("x-user-role"),
        HeaderName::from_static("x-consumer-id"),
    ]);
    assert_eq!(remove_identity(&mut h, &names), 3, "one X-User-Id and two X-User-Role lines");
    let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["accept"]);
}

#[test]
fn remove_identity_removes_names_spelled_with_underscores() {
    let mut h = map(&[("X_User_Id", "42"), ("x-user_id", "43"), ("x_user_idx", "kept"), ("x_other", "kept")]);
    let names = IdentityHeaders::new(&[HeaderName::from_static("x-user-id")]);
    assert_eq!(remove_identity(&mut h, &names), 2);
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["x_other", "x_user_idx"]);
}

#[test]
fn remove_identity_removes_every_name_a_pattern_begins() {
    let mut h = map(&[
        ("x-user-scopes", "admin"),
        ("X_User_Sub", "root"),
        ("x-user-", "empty ending"),
        ("x-user", "kept: the pattern needs its `-`"),
        ("x-users-count", "kept"),
        ("x-request-id", "kept"),
        ("accept", "kept"),
    ]);
    let names = IdentityHeaders::new(&[HeaderName::from_static("x-user-*"), HeaderName::from_static("remote-user")]);
    assert_eq!(remove_identity(&mut h, &names), 3);
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["accept", "x-request-id", "x-user", "x-users-count"]);
}

#[test]
fn remove_identity_compares_long_names_too() {
    let long = "x-".repeat(40);
    let mut h = map(&[(long.as_str(), "1"), ("x-short", "kept")]);
    let names = IdentityHeaders::new(&[HeaderName::from_bytes(long.as_bytes()).unwrap()]);
    assert_eq!(remove_identity(&mut h, &names), 1);
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-short"]);
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Trusted proxies in these tests: 10.0.0.0/8.
fn is_trusted(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
}

#[test]
fn forwarded_client_ip_takes_nearest_untrusted_entry() {
    // The client wrote 6.6.6.6 itself; 1.2.3.4 is who connected to our trusted 10.0.0.2.
    let headers = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4"), ("x-forwarded-for", "10.0.0.2")]);
    assert_eq!(forwarded_client_ip(&headers, ip("10.0.0.1"), is_trusted), ip("1.2.3.4"));
}

#[test]
fn forwarded_client_ip_without_header_or_with_garbage_is_the_peer() {
    assert_eq!(forwarded_client_ip(&HeaderMap::new(), ip("10.0.0.1"), is_trusted), ip("10.0.0.1"));
    let headers = map(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
    assert_eq!(forwarded_client_ip(&headers, ip("10.0.0.1"), is_trusted), ip("10.0.0.1"));
}

#[test]
fn forwarded_client_ip_reads_entries_with_ports_brackets_and_mapped_ipv4() {
    let peer = ip("10.0.0.1");
    let nearest = |value: &str| forwarded_client_ip(&map(&[("x-forwarded-for", value)]), peer, is_trusted);
    assert_eq!(nearest("6.6.6.6, 1.2.3.4:5123"), ip("1.2.3.4"));
    assert_eq!(nearest("6.6.6.6, [2001:db8::7]:5123"), ip("2001:db8::7"));
    assert_eq!(nearest("6.6.6.6, [2001:db8::7]"), ip("2001:db8::7"));
    assert_eq!(nearest("6.6.6.6, ::ffff:1.2.3.4"), ip("1.2.3.4"));
    // A trusted proxy written with a port is still skipped.
    assert_eq!(nearest("1.2.3.4, 10.0.0.2:80"), ip("1.2.3.4"));
    assert_eq!(nearest("1.2.3.4, 10.0.0.2:port"), peer, "unreadable: the peer");
}

#[test]
fn forwarded_client_ip_all_trusted_is_the_leftmost() {
    let headers = map(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
    assert_eq!(forwarded_client_ip(&headers, ip("10.0.0.1"), is_trusted), ip("10.1.1.1"));
}

#[test]
fn whole_seconds_rounds_up() {
    use std::time::Duration;
    assert_eq!(whole_seconds(Duration::ZERO), 0);
    assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
    assert_eq!(whole_seconds(Duration::from_millis(20_001)), 21);
}

#[test]
fn set_rate_limit_writes_the_three_headers() {
    use std::time::Duration;
    let mut headers = HeaderMap::new();
    let decision = Decision {
        allowed: true,
        limit: 100,
        remaining: 41,
        reset: Duration::from_millis(1500),
        retry_after: Duration::ZERO,
    };
    set_rate_limit(&mut headers, &decision);
    assert_eq!(get(&headers, "ratelimit-limit"), Some("100"));
    assert_eq!(get(&headers, "ratelimit-remaining"), Some("41"));
    assert_eq!(get(&headers, "ratelimit-reset"), Some("2"));
    let indexed = |name: &str| !headers[name].is_sensitive();
    assert!(indexed("ratelimit-limit") && indexed("ratelimit-reset"), "values that repeat stay indexable");
    assert!(!indexed("ratelimit-remaining"), "changes with every request: never indexed");
}

#[test]
fn set_request_id_replaces_any_and_is_never_indexed() {
    let mut headers = map(&[("x-request-id", "from-upstream")]);
    set_request_id(&mut headers, HeaderValue::from_static("abc"));
    assert_eq!(headers.get_all("x-request-id").iter().collect::<Vec<_>>(), ["abc"]);
    assert!(headers["x-request-id"].is_sensitive());
}

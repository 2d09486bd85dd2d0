use super::*;

#[test]
fn route_record_counts_by_status_class_and_observes_duration() {
    let metrics = global();
    let route = metrics.route("metrics-test-route");
    route.record(204, Duration::from_millis(3));
    route.record(503, Duration::from_millis(40));
    route.record(99, Duration::ZERO); // out of range: counted as 1xx, never a panic
    let text = metrics.render(&Readings::default());
    assert!(text.contains("gateway_requests_total{route=\"metrics-test-route\",status=\"2xx\"} 1"), "{text}");
    assert!(text.contains("gateway_requests_total{route=\"metrics-test-route\",status=\"5xx\"} 1"), "{text}");
    assert!(text.contains("gateway_requests_total{route=\"metrics-test-route\",status=\"1xx\"} 1"), "{text}");
    assert!(text.contains("gateway_request_duration_seconds_count{route=\"metrics-test-route\"} 3"), "{text}");
    assert!(!text.contains("gateway_redis_connected"), "no Redis configured: {text}");
    for reason in CLIENT_REJECTION_REASONS {
        let series = format!("gateway_client_rejections_total{{reason=\"{reason}\"}} ");
        assert!(text.contains(&series), "{series} from the start: {text}");
    }
    for reason in ["error", "timeout"] {
        let series = format!("gateway_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
        assert!(text.contains(&series), "{series} from the start: {text}");
    }
    let text = metrics.render(&Readings { redis_connected: Some(false), ..Readings::default() });
    assert!(text.contains("gateway_redis_connected 0"), "{text}");
    let text = metrics.render(&Readings { redis_connected: Some(true), ..Readings::default() });
    assert!(text.contains("gateway_redis_connected 1"), "{text}");
}

#[test]
fn retain_drops_the_series_of_names_no_longer_configured() {
    // Its own registry: other tests' series in the global one are not this test's to drop.
    let metrics = Metrics::new();
    metrics.route("gone").record(200, Duration::from_millis(1));
    metrics.route("kept").record(200, Duration::from_millis(1));
    metrics.upstream("gone-up").errors.inc();
    for endpoint in ["10.0.0.1:80", "10.0.0.2:80"] {
        metrics.endpoint_ejections("up", endpoint).inc();
    }
    metrics.rate_limit("gone-limit");
    metrics.jwt_check("gone-provider", "valid").inc();
    metrics.jwt_check("provider", "valid").inc();
    let live = LiveNames {
        routes: vec!["kept"],
        upstreams: HashMap::from([("up", vec!["10.0.0.2:80".to_owned()])]),
        rate_limits: Vec::new(),
        providers: vec!["provider"],
    };
    metrics.retain(&live);
    let text = metrics.render(&Readings::default());
    for gone in [r#"route="gone""#, r#"upstream="gone-up""#, "10.0.0.1:80", "gone-limit", "gone-provider"] {
        assert!(!text.contains(gone), "{gone} is gone: {text}");
    }
    for kept in [r#"route="kept""#, "10.0.0.2:80", r#"provider="provider""#] {
        assert!(text.contains(kept), "{kept} stays: {text}");
    }
}

#[test]
fn breaker_state_is_read_off_the_breakers_in_use_at_each_scrape() {
    let metrics = global();
    let series = |upstream: &str| format!("gateway_circuit_breaker_state{{upstream=\"{upstream}\"}} ");
    let scrape = |states: Vec<(&'static str, Option<State>)>| {
        metrics.render(&Readings { breaker_states: states, ..Readings::default() })
    };
    let text = scrape(vec![("m-open", Some(State::Open)), ("m-half", Some(State::HalfOpen)), ("m-none", None)]);
    assert!(text.contains(&format!("{}1\n", series("m-open"))), "{text}");
    assert!(text.contains(&format!("{}2\n", series("m-half"))), "{text}");
    assert!(text.contains(&format!("{}0\n", series("m-none"))), "no breaker forwards, as a closed one: {text}");
    // The next scrape's config has a new breaker for one, none for another, and lost the third.
    let text = scrape(vec![("m-open", Some(State::Closed)), ("m-half", None)]);
    assert!(text.contains(&format!("{}0\n", series("m-open"))), "{text}");
    assert!(text.contains(&format!("{}0\n", series("m-half"))), "{text}");
    assert!(!text.contains(&series("m-none")), "a removed upstream's series is gone: {text}");
}

//! How problems are reported: file, line, column and a hint, whatever the file holds.

use super::*;

/// `failure_rate` is a fraction; a percentage is the usual slip.
#[test]
fn fraction_written_as_percentage_gets_a_hint() {
    let text = MINIMAL.replace("{ endpoints:", "{ circuit_breaker: { failure_rate: 50% }, endpoints:");
    let out = errors(&text);
    assert!(
        out.contains("circuit_breaker.failure_rate: expected a number\n  hint: write a fraction: 50% is 0.5"),
        "{out}"
    );
}

/// The loader's bounds (against alias bombs and the like) are told in words, not as a debug dump.
#[test]
fn file_past_the_loaders_bounds_reported_plainly() {
    let routes: String = (0..30_000)
        .map(|i| format!("  - {{ name: r{i}, match: {{ path_prefix: /p{i} }}, upstream: echo }}\n"))
        .collect();
    let out = errors(&with_routes(&routes));
    assert!(out.contains(": the file is too large or too complex for a config: more than 250,000 values"), "{out}");
    assert!(out.contains("hint: configs are bounded"), "{out}");
}

#[test]
fn unknown_key_location_and_path_reported() {
    let text = MINIMAL.replace("{ name: all, upstream: echo }", "{ name: all, upstream: echo, timout: 5s }");
    assert_eq!(errors(&text), "gw.yaml:7:34: routes[0].timout: unknown key `timout`\n  hint: did you mean `timeout`?");
}

#[test]
fn empty_file_reported_as_empty() {
    for text in ["# nothing yet\n", "---\n", "---\n# nothing\n...\n"] {
        assert_eq!(
            errors(text),
            "gw.yaml:1:1: the file is empty\n  hint: a config needs at least `listeners`, `upstreams` and `routes`",
            "{text:?}"
        );
    }
}

#[test]
fn invalid_utf8_file_reported_with_location() {
    let dir = std::env::temp_dir().join(format!("gateway-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, b"listeners:\n  - name: p\xffx\n").unwrap();
    let err = load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let LoadError::Invalid(problems) = err else { panic!("expected Invalid, got {err:?}") };
    let first = problems.iter().next().unwrap();
    assert_eq!((first.line, first.column), (2, 12));
}

#[test]
fn missing_file_unreadable() {
    let err = load(Path::new("/nonexistent/gateway.yaml")).unwrap_err();
    assert!(matches!(err, LoadError::Unreadable { .. }), "{err:?}");
}

#[test]
fn arbitrary_garbage_never_panics() {
    let inputs = [
        "",
        "[",
        "{",
        "- - -",
        ":",
        "listeners: *a",
        "listeners: !!binary aGVsbG8=",
        "? [a]\n: b",
        "listeners:\n  - name: a\n    address: [1, 2]\n",
        "\u{feff}listeners: []",
        "upstreams: {\"\": {endpoints: []}}",
        "routes: [{name: x, match: {headers: {\"\": \"\"}}}]",
    ];
    for input in inputs {
        let _ = parse("gw.yaml", input);
    }
}

#[test]
fn every_truncation_of_shipped_example_never_panics() {
    // Cutting a valid file anywhere exercises most syntax and shape errors.
    let text = std::fs::read_to_string(workspace_root().join("config/gateway.yaml")).unwrap();
    for (cut, _) in text.char_indices().step_by(7) {
        let _ = parse("gw.yaml", &text[..cut]);
    }
}

/// Every `tests/fixtures/invalid/NAME.yaml` must produce exactly the lines in `NAME.expected`
/// (`$FILE` standing for the file label). Set `GATEWAY_BLESS=1` to (re)write the expected files,
/// then review the diff.
#[test]
fn invalid_fixtures_render_expected_problems() {
    let dir = workspace_root().join("tests/fixtures/invalid");
    let bless = std::env::var_os("GATEWAY_BLESS").is_some();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty(), "no fixtures in {}", dir.display());
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let text = std::fs::read_to_string(fixture).unwrap();
        let actual = match parse("$FILE", &text) {
            Ok(_) => String::from("<valid config>"),
            Err(problems) => problems.to_string(),
        };
        let expected_path = fixture.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected.trim_end() {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}\n",
                fixture.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

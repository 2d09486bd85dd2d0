//! `gateway check` (and `gateway run`) on valid, invalid and missing config files.

use std::path::{Path, PathBuf};

use e2e::{gateway_check, gateway_run_invalid, workspace_root, write_temp};

fn invalid_fixtures_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/invalid")
}

/// The `.expected` file next to `fixture`: `name.expected` (or `name.yaml.expected`).
fn expected_file(fixture: &Path) -> PathBuf {
    let short = fixture.with_extension("expected");
    if short.is_file() {
        return short;
    }
    let long = PathBuf::from(format!("{}.expected", fixture.display()));
    assert!(long.is_file(), "{} has no sibling {} (or {})", fixture.display(), short.display(), long.display());
    long
}

/// Checks one fixture; returns a description of each way it failed.
fn check_fixture(fixture: &Path) -> Vec<String> {
    let file = fixture.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", fixture.display()));
    let expected = std::fs::read_to_string(expected_file(fixture)).unwrap();
    let output = gateway_check(fixture);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
        problems.push(format!("exit status {} (expected 1)", output.status));
    }
    let actual: Vec<&str> = stderr.lines().map(str::trim_end).collect();
    for line in expected.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
        let line = line.replace("$FILE", file);
        if !actual.contains(&line.as_str()) {
            problems.push(format!("missing line: {line}"));
        }
    }
    if problems.is_empty() {
        return problems;
    }
    vec![format!("{}:\n  {}\n  --- stderr ---\n{stderr}", fixture.display(), problems.join("\n  "))]
}

#[test]
fn check_invalid_fixtures_exit_1_with_every_expected_line() {
    let dir = invalid_fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut fixtures: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty(), "no *.yaml fixtures in {}", dir.display());

    let failures: Vec<String> = fixtures.iter().flat_map(|fixture| check_fixture(fixture)).collect();
    assert!(failures.is_empty(), "{} of {} fixtures failed:\n{}", failures.len(), fixtures.len(), failures.join("\n"));
}

#[test]
fn check_shipped_configs_exit_0_with_summary() {
    // gateway.yaml is the shipped example; docker.yaml is what docker-compose.yml runs. The demo
    // auth service serves its keys over plain HTTP, which on the compose network is worth the
    // warning (on loopback, in quickstart.yaml, it is not given).
    let plain_jwks = "jwt.providers.shop.jwks_url: warning: the key set is fetched over plain HTTP";
    for (file, warnings) in [("config/gateway.yaml", vec![]), ("config/docker.yaml", vec![plain_jwks])] {
        let path = workspace_root().join(file);
        assert!(path.is_file(), "{} does not exist", path.display());
        let output = gateway_check(&path);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.status.code(), Some(0), "{file}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!stdout.trim().is_empty(), "{file}: no summary line on stdout");
        let given: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
        assert_eq!(given.len(), warnings.len(), "{file}: warnings:\n{stderr}");
        for (line, expected) in given.iter().zip(&warnings) {
            assert!(line.contains(expected), "{file}: {line:?} is not {expected:?}; warnings:\n{stderr}");
        }
    }
}

#[test]
fn check_missing_file_exits_2() {
    let path = std::env::temp_dir().join(format!("e2e-missing-{}-does-not-exist.yaml", std::process::id()));
    let output = gateway_check(&path);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(!output.stderr.is_empty(), "nothing on stderr says why");
}

#[test]
fn check_run_with_invalid_config_exits_1_and_reports_problem() {
    let path = write_temp("invalid", "yaml", "listeners: []\nupstreams: {}\nroutes: []\nbogus_key: 1\n");
    let output = gateway_run_invalid(&path);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "problems should name the file; stderr:\n{stderr}");
    assert!(
        output.stdout.is_empty() || !String::from_utf8_lossy(&output.stdout).contains("ready"),
        "it must not serve"
    );
}

/// The quick start's config needs the certificates `gateway certs dev` makes: in the same layout
/// (config/ beside certs/), in a temp dir, it must check clean.
#[test]
fn check_quickstart_config_with_generated_certs_exits_0_without_warnings() {
    let root = std::env::temp_dir().join(format!("e2e-quickstart-{}", std::process::id()));
    let (config_dir, certs_dir) = (root.join("config"), root.join("certs"));
    std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("creating {}: {e}", config_dir.display()));
    let config = config_dir.join("quickstart.yaml");
    std::fs::copy(workspace_root().join("config/quickstart.yaml"), &config)
        .unwrap_or_else(|e| panic!("copying config/quickstart.yaml: {e}"));
    let certs = std::process::Command::new(e2e::binary("gateway"))
        .args(["certs", "dev", "--out"])
        .arg(&certs_dir)
        .output()
        .unwrap_or_else(|e| panic!("running gateway certs dev: {e}"));
    assert!(certs.status.success(), "gateway certs dev failed: {}", String::from_utf8_lossy(&certs.stderr));

    let output = gateway_check(&config);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.trim().is_empty(), "warnings for the quick start config:\n{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

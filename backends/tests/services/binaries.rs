//! The built `auth`, `product` and `cart` binaries as child processes: flags, the `listening`
//! line, start-up refusals, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use crate::support::*;

/// A child process, killed when dropped.
struct Service {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start(binary: &str, args: &[&str]) -> Service {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("{binary} said {line:?}"));
        Service { addr: addr.parse().unwrap(), child, _stdout: stdout }
    }

    /// Sends SIGTERM and waits for the process to end; true when it exited successfully.
    fn terminate(mut self) -> bool {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap().success()
    }
}

fn run_to_end(binary: &str, args: &[&str]) -> Output {
    Command::new(binary).args(args).stdin(Stdio::null()).output().unwrap()
}

#[tokio::test]
async fn binaries_serve_the_shop_end_to_end_and_stop_on_sigterm() {
    let users = demo_users_path();
    let auth = Service::start(
        env!("CARGO_BIN_EXE_auth"),
        &["--issuer", ISSUER, "--audience", AUDIENCE, "--users", users.to_str().unwrap(), "--token-lifetime", "2m"],
    );
    let jwks = jwks_url(auth.addr);
    let verifier_args = ["--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-url", jwks.as_str()];
    let product = Service::start(env!("CARGO_BIN_EXE_product"), &verifier_args);
    let cart = Service::start(env!("CARGO_BIN_EXE_cart"), &verifier_args);

    let admin = login(auth.addr, "admin").await;
    let body = r#"{"name": "Scale", "price_cents": 3900, "stock": 3}"#;
    let created = call("POST", &format!("http://{}/products", product.addr), &admin, Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let put = call("PUT", &format!("http://{}/cart/items/p-6", cart.addr), &admin, Some(r#"{"quantity": 1}"#)).await;
    assert_eq!((put.status, &put.json()["owner"]), (200, &serde_json::json!("admin")));
    let token = send(
        "POST",
        &format!("http://{}/token", auth.addr),
        &[],
        Some(r#"{"username": "alice", "password": "alice-demo-password"}"#),
    )
    .await;
    assert_eq!(token.json()["expires_in"], 120);

    for service in [cart, product, auth] {
        assert!(service.terminate(), "SIGTERM ends the service cleanly");
    }
}

#[test]
fn auth_bad_users_file_refused_at_start_with_path_and_position() {
    let dir = std::env::temp_dir().join(format!("bk-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.json");
    std::fs::write(&file, "[\n  {\"username\": \"a\", \"password\": \"p\", \"scopes\": [\"cart\"],}\n]").unwrap();
    let args = ["--issuer", ISSUER, "--audience", AUDIENCE, "--users", file.to_str().unwrap()];
    let output = run_to_end(env!("CARGO_BIN_EXE_auth"), &args);
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("{}:2:", file.display())), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing was bound");

    let missing = run_to_end(
        env!("CARGO_BIN_EXE_auth"),
        &["--issuer", ISSUER, "--audience", AUDIENCE, "--users", "/nonexistent/u.json"],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/u.json"));
}

#[test]
fn product_https_jwks_url_refused_at_start() {
    let args = ["--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-url", "https://auth.test/jwks.json"];
    let output = run_to_end(env!("CARGO_BIN_EXE_product"), &args);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not http://"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

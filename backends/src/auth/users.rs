//! The users file: `[{"username": "alice", "password": "...", "scopes": ["cart", "products:read"]}]`,
//! checked in full at start (every problem reported at once), then password checks that take the
//! same work whether or not the user exists.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256, SHA256_OUTPUT_LEN};
use serde::Deserialize;

/// The accounts `auth` issues tokens for.
pub struct Users {
    by_name: HashMap<String, User>,
    /// What an unknown user's password is compared against, so both cases cost the same.
    decoy: [u8; SHA256_OUTPUT_LEN],
}

/// One account, once its password checked out.
pub(crate) struct User {
    /// The SHA-256 of the password: compared in constant time with that of the attempt.
    password_sha256: [u8; SHA256_OUTPUT_LEN],
    /// The scopes as the token's `scope` claim carries them: words joined by spaces.
    pub(crate) scope: String,
}

/// A users file that cannot be used; the message names the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users file {path}: {source}")]
    Unreadable { path: String, source: io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Json { path: String, line: usize, column: usize, message: String },
    #[error("{path}: {}", problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
    #[error("the system RNG failed")]
    Random,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: String,
    scopes: Vec<String>,
}

impl Users {
    /// Reads and checks the users file at `path`.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| UsersError::Unreadable { path: shown.clone(), source })?;
        Users::parse(&text, &shown)
    }

    /// Checks the users file `text`; `path` is only for messages.
    pub fn parse(text: &str, path: &str) -> Result<Users, UsersError> {
        let raw: Vec<RawUser> = serde_json::from_str(text).map_err(|e| {
            let position = format!(" at line {} column {}", e.line(), e.column());
            let message = e.to_string().trim_end_matches(&position).to_owned();
            UsersError::Json { path: path.to_owned(), line: e.line(), column: e.column(), message }
        })?;
        let mut problems = Vec::new();
        let mut by_name: HashMap<String, User> = HashMap::new();
        let mut first_at: HashMap<&str, usize> = HashMap::new();
        for (i, user) in raw.iter().enumerate() {
            let at = format!("[{i}] (`{}`)", user.username);
            if user.username.is_empty() {
                problems.push(format!("[{i}]: the username is empty"));
            }
            match first_at.entry(&user.username) {
                Entry::Occupied(first) => {
                    problems.push(format!(
                        "{at}: the username is already taken by [{}]; usernames must differ",
                        first.get()
                    ));
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(i);
                }
            }
            if user.password.is_empty() {
                problems.push(format!("{at}: the password is empty"));
            }
            for scope in &user.scopes {
                if let Some(problem) = scope_problem(scope) {
                    problems.push(format!("{at}: scope `{scope}` {problem}"));
                }
            }
            let password_sha256 = sha256(&user.password);
            by_name.insert(user.username.clone(), User { password_sha256, scope: user.scopes.join(" ") });
        }
        if !problems.is_empty() {
            return Err(UsersError::Invalid { path: path.to_owned(), problems });
        }
        let mut decoy = [0u8; SHA256_OUTPUT_LEN];
        aws_lc_rs::rand::fill(&mut decoy).map_err(|_| UsersError::Random)?;
        Ok(Users { by_name, decoy })
    }

    /// The user if `password` is theirs. An unknown user costs the same digest and comparison as
    /// a wrong password, so timing does not tell which usernames exist.
    pub(crate) fn check(&self, username: &str, password: &str) -> Option<&User> {
        let attempt = sha256(password);
        let user = self.by_name.get(username);
        let expected = user.map_or(&self.decoy, |user| &user.password_sha256);
        let matches = verify_slices_are_equal(expected, &attempt).is_ok();
        user.filter(|_| matches)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What is wrong with a scope word, if anything: RFC 6749 section 3.3 allows visible ASCII but
/// `"` and `\`, and the words are joined by spaces in the token.
fn scope_problem(scope: &str) -> Option<&'static str> {
    if scope.is_empty() {
        Some("is empty")
    } else if scope.contains(' ') {
        Some("contains a space; list each scope as its own string")
    } else if !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
        Some("may hold visible ASCII only, without `\"` or `\\` (RFC 6749 section 3.3)")
    } else {
        None
    }
}

fn sha256(text: &str) -> [u8; SHA256_OUTPUT_LEN] {
    let mut out = [0u8; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, text.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> String {
        match Users::parse(text, "users.json") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parse_good_file_checks_passwords() {
        let users = Users::parse(r#"[{"username": "a", "password": "pw", "scopes": ["cart", "x:y"]}]"#, "f").unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users.check("a", "pw").map(|u| u.scope.as_str()), Some("cart x:y"));
        assert!(users.check("a", "pW").is_none());
        assert!(users.check("a", "").is_none());
        assert!(users.check("b", "pw").is_none());
    }

    #[test]
    fn parse_bad_json_reports_line_and_column() {
        let message = problems("[\n  {\"username\": \"a\",}\n]");
        assert!(message.starts_with("users.json:2:"), "{message}");
        assert!(!message.contains("at line"), "{message}");
        let message = problems(r#"[{"username": "a", "password": "p", "scopes": [], "role": "x"}]"#);
        assert!(message.contains("unknown field `role`"), "{message}");
    }

    #[test]
    fn parse_every_problem_reported_at_once() {
        let message = problems(
            r#"[{"username": "a", "password": "", "scopes": ["cart products:read"]},
                {"username": "a", "password": "p", "scopes": ["ok", "", "q\"uote"]},
                {"username": "", "password": "p", "scopes": []}]"#,
        );
        for expected in [
            "[0] (`a`): the password is empty",
            "[0] (`a`): scope `cart products:read` contains a space",
            "[1] (`a`): the username is already taken by [0]",
            "[1] (`a`): scope `` is empty",
            "[1] (`a`): scope `q\"uote` may hold visible ASCII only",
            "[2]: the username is empty",
        ] {
            assert!(message.contains(expected), "no {expected:?} in {message}");
        }
    }

    #[test]
    fn load_unreadable_file_names_the_path() {
        let message = Users::load(Path::new("/nonexistent/users.json")).err().unwrap().to_string();
        assert!(message.contains("/nonexistent/users.json"), "{message}");
    }
}

//! What is wrong with a config file, where, and how to fix it.

use std::fmt;

/// Whether a problem stops the config from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config loads, but probably does not do what its author meant.
    Warning,
}

/// One finding in a config file.
///
/// Displays as `FILE:LINE:COL: yaml.path: message` (the path part is left out when there is none,
/// as for YAML syntax errors), followed by an indented `  hint: ...` line when there is a hint.
/// Warnings put `warning: ` before the message so they cannot be mistaken for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The file label given to `parse` (a path for `load`).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the document, e.g. `routes[2].upstream`.
    pub yaml_path: Option<String>,
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Problem {
    pub(crate) fn new(
        severity: Severity,
        file: &str,
        (line, column): (usize, usize),
        yaml_path: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem { severity, file: file.to_owned(), line, column, yaml_path, message: message.into(), hint: None }
    }

    pub(crate) fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// Sets the hint on a problem already recorded (see `validate::Report`).
    pub(crate) fn hint(&mut self, hint: impl Into<String>) -> &mut Problem {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(path) = &self.yaml_path {
            write!(f, "{path}: ")?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A non-empty list of problems, sorted by line then column (file order otherwise kept).
///
/// Displays one problem per line (plus its hint line), with no trailing newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Sorts the list; `None` when it is empty.
    pub fn new(mut problems: Vec<Problem>) -> Option<Problems> {
        if problems.is_empty() {
            return None;
        }
        // Stable sort: problems at the same spot stay in the order the checks found them.
        problems.sort_by_key(|p| (p.line, p.column));
        Some(Problems(problems))
    }

    pub fn one(problem: Problem) -> Problems {
        Problems(vec![problem])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: kept for the `len_without_is_empty` convention.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

// Display carries the whole report; there is no underlying cause to chain.
impl std::error::Error for Problems {}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(line: usize, column: usize, path: Option<&str>, hint: Option<&str>) -> Problem {
        Problem::new(Severity::Error, "gw.yaml", (line, column), path.map(str::to_owned), "bad")
            .with_hint(hint.map(str::to_owned))
    }

    #[test]
    fn problem_with_path_and_hint_renders_two_lines() {
        let p = problem(3, 7, Some("routes[0].upstream"), Some("fix it"));
        assert_eq!(p.to_string(), "gw.yaml:3:7: routes[0].upstream: bad\n  hint: fix it");
    }

    #[test]
    fn problem_without_path_omits_path_part() {
        assert_eq!(problem(1, 2, None, None).to_string(), "gw.yaml:1:2: bad");
    }

    #[test]
    fn warning_renders_with_warning_prefix() {
        let mut p = problem(1, 2, Some("upstreams.a"), None);
        p.severity = Severity::Warning;
        assert_eq!(p.to_string(), "gw.yaml:1:2: upstreams.a: warning: bad");
    }

    #[test]
    fn problems_unsorted_input_sorted_by_line_then_column() {
        let list = Problems::new(vec![problem(5, 1, None, None), problem(2, 9, None, None), problem(2, 3, None, None)]);
        let lines: Vec<String> =
            list.iter().flat_map(|l| l.iter()).map(|p| format!("{}:{}", p.line, p.column)).collect();
        assert_eq!(lines, ["2:3", "2:9", "5:1"]);
    }

    #[test]
    fn problems_empty_is_none() {
        assert!(Problems::new(Vec::new()).is_none());
    }
}

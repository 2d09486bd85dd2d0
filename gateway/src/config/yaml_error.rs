//! Turns a serde-saphyr error (syntax, wrong type, unknown or missing key) into one clean `Problem`.
//!
//! serde-saphyr's own rendering is a multi-line snippet meant for developers; ops people get one
//! line in our format, worded from the structured error, plus the YAML path when we can find it.

use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, Error, MessageFormatter, NonFiniteFloatPolicy, Spanned, UserMessageFormatter};

use super::problem::{Problem, Severity};
use super::suggest;
use super::validate::{path_key, position};

/// One problem describing why `text` could not be deserialized.
///
/// The document is read a second time as a plain YAML tree. If that read fails too, the text is
/// not valid YAML and the parser's error is the real cause (serde may have stopped earlier, at a
/// confusing "missing key" produced by the broken structure), so that one is reported, without
/// a path. Otherwise the tree gives the YAML path of the spot the serde error points at.
pub(crate) fn to_problem(file: &str, text: &str, err: &Error) -> Problem {
    // Duplicate keys are a serde-level error we want a path for: let this read accept them.
    // `.inf` and `.nan` are values whose spot needs a path like any other.
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::LastWins,
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
    };
    let tree = serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options);
    let (err, tree) = match &tree {
        Err(syntax) if matches!(innermost(syntax), Error::ExternalMessage { .. } | Error::Eof { .. }) => (syntax, None),
        Err(_) => (err, None),
        Ok(tree) => (err, Some(tree)),
    };
    let (mut line, mut column) = match err.location() {
        Some(loc) if !is_blank(text) => position(loc),
        _ => (1, 1),
    };
    let inner = innermost(err);
    let (mut message, mut hint) = describe(inner, text);
    // The parser notices an unclosed quote only where the value can no longer go on, lines later.
    if let Error::ExternalMessage { msg, .. } = inner {
        if let Some(opened) = msg.contains("quoted scalar").then(|| unclosed_quote(text, line)).flatten() {
            (line, column) = opened;
            message = "YAML syntax error: this quote is never closed".to_owned();
            hint = Some("end the value with the same quote on this line".to_owned());
        }
    }
    let yaml_path = match (inner, tree) {
        // serde points at some key of the mapping that lacks one: name the mapping, where it starts.
        (Error::SerdeMissingField { .. }, Some(tree)) => mapping_at(tree, (line, column)).map(|(path, start)| {
            (line, column) = start;
            path
        }),
        // An unknown or repeated key is reported at the key; anything else at the value it concerns.
        (_, tree) => {
            let prefer_key = matches!(inner, Error::SerdeUnknownField { .. } | Error::DuplicateMappingKey { .. });
            tree.and_then(|tree| path_at(tree, (line, column), prefer_key))
        }
    };
    Problem::new(Severity::Error, file, (line, column), yaml_path.filter(|p| !p.is_empty()), message).with_hint(hint)
}

/// The error itself, without the snippet or alias wrappers around it.
fn innermost(mut err: &Error) -> &Error {
    loop {
        match err {
            Error::WithSnippet { error, .. } | Error::AliasError { error, .. } => err = error,
            _ => return err,
        }
    }
}

fn describe(err: &Error, text: &str) -> (String, Option<String>) {
    match err {
        _ if is_blank(text) => (
            "the file is empty".to_owned(),
            Some("a config needs at least `listeners`, `upstreams` and `routes`".to_owned()),
        ),
        Error::SerdeUnknownField { field, expected, .. } => {
            let hint = suggest::did_you_mean(field, expected.iter().copied())
                .unwrap_or_else(|| format!("valid keys here: {}", expected.join(", ")));
            (format!("unknown key `{}`", field.escape_debug()), Some(hint))
        }
        Error::SerdeMissingField { field, .. } => (format!("missing required key `{field}`"), None),
        Error::Unexpected { expected, .. } => wrong_type(expected),
        Error::SerdeInvalidType { unexpected, expected, .. } => {
            (format!("wrong type: expected {}, found {}", clean(expected), clean(unexpected)), None)
        }
        Error::SerdeInvalidValue { unexpected, expected, .. } => {
            (format!("invalid value: expected {}, found {}", clean(expected), clean(unexpected)), None)
        }
        Error::SerdeUnknownVariant { variant, expected, .. } => {
            let hint = suggest::did_you_mean(variant, expected.iter().copied())
                .unwrap_or_else(|| format!("expected one of: {}", expected.join(", ")));
            (format!("unknown value {variant:?}"), Some(hint))
        }
        Error::InvalidScalar { ty, location } => invalid_scalar(ty, written_at(text, position(*location))),
        Error::InvalidBooleanStrict { .. } => invalid_scalar("bool", ""),
        Error::NullIntoString { .. } => (
            "expected a value, found nothing".to_owned(),
            Some("write a value after the colon, or remove the key".to_owned()),
        ),
        Error::DuplicateMappingKey { key, .. } => {
            let what = key.as_deref().map_or_else(|| "a key".to_owned(), |k| format!("`{}`", k.escape_debug()));
            (
                format!("{what} appears twice in the same mapping"),
                Some("each key may appear once; remove or rename one of them".to_owned()),
            )
        }
        Error::MultipleDocuments { .. } => (
            "the file holds more than one YAML document (a second `---`)".to_owned(),
            Some("keep the whole configuration in a single document".to_owned()),
        ),
        Error::UnknownAnchor { .. } => (
            "this alias (`*name`) refers to an anchor that is not defined".to_owned(),
            Some("define it with `&name` before this point, or write the value out".to_owned()),
        ),
        Error::ExternalMessage { msg, .. } => (format!("YAML syntax error: {}", clean(msg)), syntax_hint(msg)),
        // The loader's bounds on what one file may cost to read (against alias bombs and the like).
        Error::Budget { breach, .. } => {
            let what = match breach {
                BudgetBreach::Nodes { .. } => "more than 250,000 values, lists and mappings (some 25,000 routes)",
                BudgetBreach::Depth { .. } => "nested more than 64 levels deep",
                BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } => "too many aliases (`*name`)",
                _ => "past the loader's limits",
            };
            (
                format!("the file is too large or too complex for a config: {what}"),
                Some("configs are bounded so that no file can exhaust the gateway's memory; split what repeats into fewer, wider routes (a path_prefix covers many paths)".to_owned()),
            )
        }
        other => (clean(&UserMessageFormatter.format_message(other)), None),
    }
}

/// serde-saphyr reports type mismatches by the YAML event it wanted next.
fn wrong_type(expected: &str) -> (String, Option<String>) {
    let (what, hint) = match expected {
        "sequence start" => ("a list", "write a list as `[a, b]`, or one `- item` per line below the key"),
        "mapping start" => ("a mapping", "write `key: value` pairs, indented below this key"),
        "string scalar" => {
            ("a single value, not a list or a mapping", "write one value; quote it if it contains `: ` or `#`")
        }
        other => return (format!("wrong type: expected {}", clean(other)), None),
    };
    (format!("wrong type: expected {what}"), Some(hint.to_owned()))
}

/// `written` is the value as it stands in the file, to tell a negative or too large number from
/// one badly written.
fn invalid_scalar(ty: &str, written: &str) -> (String, Option<String>) {
    let max = match ty {
        "bool" | "boolean" => return ("expected true or false".to_owned(), None),
        "u8" => u128::from(u8::MAX),
        "u16" => u128::from(u16::MAX),
        "u32" => u128::from(u32::MAX),
        "u64" | "usize" => u128::from(u64::MAX),
        "u128" => u128::MAX,
        // Written `50%` most often: the one such key (`failure_rate`) is a fraction.
        "f64" | "f32" | "floating point" => {
            let hint = if written.ends_with('%') { "write a fraction: 50% is 0.5" } else { "write a number, e.g. 0.5" };
            return ("expected a number".to_owned(), Some(hint.to_owned()));
        }
        other => return (format!("invalid value: expected {}", clean(other)), None),
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if written.strip_prefix('-').is_some_and(digits) {
        return ("expected a whole number, not a negative one".to_owned(), None);
    }
    if digits(written) {
        return (format!("{written} is too large: at most {max}"), None);
    }
    ("expected a whole number".to_owned(), Some("write digits only, e.g. 100".to_owned()))
}

/// The plain scalar that starts at `(line, column)` of `text` (both from 1), up to what ends it
/// in a flow or block mapping.
fn written_at(text: &str, (line, column): (usize, usize)) -> &str {
    let Some(line) = text.lines().nth(line - 1) else { return "" };
    let start = line.char_indices().nth(column - 1).map_or(line.len(), |(at, _)| at);
    let rest = &line[start..];
    rest[..rest.find([' ', '\t', ',', '}', ']', '#']).unwrap_or(rest.len())].trim_end()
}

fn syntax_hint(msg: &str) -> Option<String> {
    let hint = if msg.contains("tab") {
        "indent with spaces: YAML does not allow tabs for indentation"
    } else if msg.contains("bracket") || msg.contains("brace") || msg.contains("flow") {
        "close every `[` with `]` and every `{` with `}`"
    } else if msg.contains("':'") {
        "a stray `:` often means a `[` or `{` above was not closed; otherwise quote the value"
    } else if msg.contains("indent") || msg.contains("did not find expected") || msg.contains("mapping values") {
        "check the indentation: keys of one mapping, and items of one list, must start in the same column"
    } else {
        return None;
    };
    Some(hint.to_owned())
}

/// Where the quote open at the end of the nearest line above `error_line` starts (1-based line and
/// column), if any: the lines in between would be the quoted value's continuation.
fn unclosed_quote(text: &str, error_line: usize) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().take(error_line.saturating_sub(1)).collect();
    lines.iter().enumerate().rev().find_map(|(i, line)| open_quote_at_end(line).map(|column| (i + 1, column)))
}

/// The column of the quote still open at the end of `line`, read as YAML: `"` with backslash
/// escapes, `'` with `''`, a `'` opens only where a value starts (not in `don't`), and `#` after a
/// space starts a comment.
fn open_quote_at_end(line: &str) -> Option<usize> {
    let mut open: Option<(char, usize)> = None;
    let mut previous = ' ';
    let mut chars = line.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        match open {
            Some(('"', _)) if c == '\\' => {
                chars.next();
            }
            Some(('\'', _)) if c == '\'' && chars.peek().is_some_and(|&(_, next)| next == '\'') => {
                chars.next();
            }
            Some((quote, _)) if c == quote => open = None,
            Some(_) => {}
            None if c == '#' && previous.is_whitespace() => break,
            None if c == '"' || (c == '\'' && (previous.is_whitespace() || ":-[{,".contains(previous))) => {
                open = Some((c, i + 1));
            }
            None => {}
        }
        previous = c;
    }
    open.map(|(_, column)| column)
}

/// Nothing but whitespace and comments.
/// Nothing but blank lines, comments and document markers (`---`, `...`).
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// One line, no control characters: messages may quote the user's text.
fn clean(msg: &str) -> String {
    msg.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The path of the deepest key (or value) that starts at `at`; `None` for the document root.
fn path_at(root: &Spanned<Node>, at: (usize, usize), prefer_key: bool) -> Option<String> {
    let mut found = Found::default();
    find(root, &mut String::new(), at, &mut found);
    let best = if prefer_key { found.key.or(found.node) } else { found.node.or(found.key) };
    best.filter(|p| !p.is_empty())
}

/// The path and start of the deepest mapping with a key at `at`.
fn mapping_at(root: &Spanned<Node>, at: (usize, usize)) -> Option<(String, (usize, usize))> {
    let mut found = Found::default();
    find(root, &mut String::new(), at, &mut found);
    found.mapping
}

/// The deepest matches so far. A mapping starts where its first key does, so both can match.
#[derive(Default)]
struct Found {
    key: Option<String>,
    node: Option<String>,
    /// The mapping holding the key at the spot, and where it starts.
    mapping: Option<(String, (usize, usize))>,
}

fn find(node: &Spanned<Node>, path: &mut String, at: (usize, usize), found: &mut Found) {
    if start(node) == at {
        found.node = Some(path.clone());
    }
    let len = path.len();
    match &node.value {
        Node::Scalar => {}
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let _ = write!(path, "[{i}]");
                find(item, path, at, found);
                path.truncate(len);
            }
        }
        Node::Map(entries) => {
            for (key, value) in entries {
                if start(key) == at {
                    found.mapping = Some((path.clone(), start(node)));
                }
                *path = path_key(path, &key.value);
                if start(key) == at {
                    found.key = Some(path.clone());
                }
                find(value, path, at, found);
                path.truncate(len);
            }
        }
    }
}

fn start<T>(spanned: &Spanned<T>) -> (usize, usize) {
    position(spanned.referenced)
}

/// Any YAML document, shape only.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::{open_quote_at_end, unclosed_quote};

    #[test]
    fn open_quote_at_end_reads_escapes_apostrophes_and_comments() {
        assert_eq!(open_quote_at_end(r#"    address: "127.0.0.1:8080"#), Some(14));
        assert_eq!(open_quote_at_end(r#"  a: "x\"y"  # "z"#), None, "an escaped quote, then a comment");
        assert_eq!(open_quote_at_end(r#"  a: "x\"y"#), Some(6));
        assert_eq!(open_quote_at_end("  a: 'it''s"), Some(6), "'' is an escaped quote");
        assert_eq!(open_quote_at_end("  a: 'it''s'"), None);
        assert_eq!(open_quote_at_end("  # don't"), None);
        assert_eq!(open_quote_at_end("  a: don't"), None, "an apostrophe inside a plain value");
        assert_eq!(open_quote_at_end("  a: [x, 'y"), Some(10));
        assert_eq!(open_quote_at_end(r##"  a: "#x"##), Some(6), "a # inside quotes is no comment");
    }

    #[test]
    fn unclosed_quote_is_the_nearest_line_above_left_open() {
        let text = "a: \"one\n  two\nb: 1\n";
        assert_eq!(unclosed_quote(text, 3), Some((1, 4)), "line 2 continues the value");
        assert_eq!(unclosed_quote("a: 1\nb: 2\n", 2), None);
    }
}

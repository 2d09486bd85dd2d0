//! Durations (`250ms`, `30s`, `5m`, `1h`) and sizes (`512B`, `64KiB`, `10MB`, `1024`) as ops write them.

use std::time::Duration;

use super::suggest;

/// Why a duration or size did not parse, with a fix when there is an obvious one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct UnitError {
    pub message: String,
    pub hint: Option<String>,
}

impl UnitError {
    fn new(message: String, hint: impl Into<Option<String>>) -> Self {
        UnitError { message, hint: hint.into() }
    }
}

const DURATION_UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
const DURATION_EXAMPLE: &str = "add a unit, e.g. 250ms, 30s, 5m";
const DURATION_FORMAT: &str = "write a whole number followed by ms, s, m or h, e.g. 250ms, 30s, 5m";

const SIZE_UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];
const SIZE_EXAMPLE: &str = "write bytes or a number with a unit, e.g. 512B, 64KiB, 10MiB, 1GB";

/// A positive whole number with one unit: `ms`, `s`, `m` or `h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number(text, "duration", DURATION_FORMAT)?;
    if unit.is_empty() {
        // A bare number is the most common slip: seconds? milliseconds? Make the author say.
        return Err(UnitError::new(format!("duration {text:?} has no unit"), DURATION_EXAMPLE.to_owned()));
    }
    let Some(&(_, millis_per_unit)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(unknown_unit(unit, DURATION_UNITS.iter().map(|(u, _)| *u)));
    };
    if number == 0 {
        return Err(UnitError::new(
            format!("duration {text:?} is zero; it must be greater than zero"),
            "use a positive duration, e.g. 250ms or 30s".to_owned(),
        ));
    }
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::new(format!("duration {text:?} is too large"), None))
}

/// A positive byte count: a plain integer, or a whole number with `B`, `KiB`/`MiB`/`GiB`
/// (1024-based) or `KB`/`MB`/`GB` (1000-based).
pub(crate) fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text, "size", SIZE_EXAMPLE)?;
    let bytes_per_unit = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
            Some(&(_, bytes)) => bytes,
            None => return Err(unknown_unit(unit, SIZE_UNITS.iter().map(|(u, _)| *u))),
        }
    };
    if number == 0 {
        return Err(UnitError::new(
            format!("size {text:?} is zero; it must be greater than zero"),
            SIZE_EXAMPLE.to_owned(),
        ));
    }
    number.checked_mul(bytes_per_unit).ok_or_else(|| UnitError::new(format!("size {text:?} is too large"), None))
}

/// Splits `30s` into `(30, "s")`; a plain number has an empty unit.
fn split_number<'a>(text: &'a str, what: &str, example: &str) -> Result<(u64, &'a str), UnitError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(UnitError::new(format!("{what} is empty"), example.to_owned()));
    }
    if trimmed.starts_with('-') {
        return Err(UnitError::new(
            format!("{what} {text:?} is negative"),
            format!("{what}s must be greater than zero; {example}"),
        ));
    }
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, rest) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(UnitError::new(format!("{what} {text:?} does not start with a number"), example.to_owned()));
    }
    if rest.starts_with(['.', ',']) {
        return Err(UnitError::new(
            format!("{what} {text:?} is not a whole number"),
            format!("use a smaller unit instead of a fraction; {example}"),
        ));
    }
    let number = digits.parse::<u64>().map_err(|_| UnitError::new(format!("{what} {text:?} is too large"), None))?;
    // `10 MiB` reads naturally; allow the space.
    Ok((number, rest.trim_start()))
}

fn unknown_unit<'a>(unit: &str, known: impl Iterator<Item = &'a str> + Clone) -> UnitError {
    let list = known.clone().collect::<Vec<_>>().join(", ");
    let hint = match suggest::closest(unit, known) {
        Some(s) => format!("did you mean `{s}`? units: {list}"),
        None => format!("units: {list}"),
    };
    UnitError::new(format!("unknown unit `{}`", unit.escape_debug()), hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_each_unit_converts() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 2 s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn parse_duration_bare_number_hints_unit() {
        let err = parse_duration("30").unwrap_err();
        assert_eq!(err.message, "duration \"30\" has no unit");
        assert_eq!(err.hint.as_deref(), Some("add a unit, e.g. 250ms, 30s, 5m"));
    }

    #[test]
    fn parse_duration_zero_rejected() {
        assert!(parse_duration("0s").unwrap_err().message.contains("zero"));
    }

    #[test]
    fn parse_duration_negative_rejected() {
        assert!(parse_duration("-5s").unwrap_err().message.contains("negative"));
    }

    #[test]
    fn parse_duration_unknown_unit_suggests() {
        let err = parse_duration("30sec").unwrap_err();
        assert_eq!(err.message, "unknown unit `sec`");
        assert_eq!(err.hint.as_deref(), Some("units: ms, s, m, h"));
        assert_eq!(parse_duration("5M").unwrap_err().hint.as_deref(), Some("did you mean `m`? units: ms, s, m, h"));
    }

    #[test]
    fn parse_duration_fraction_and_garbage_rejected() {
        assert!(parse_duration("1.5s").unwrap_err().message.contains("whole number"));
        assert!(parse_duration("soon").unwrap_err().message.contains("does not start with a number"));
        assert!(parse_duration("").unwrap_err().message.contains("empty"));
        assert!(parse_duration("99999999999999999999h").unwrap_err().message.contains("too large"));
        assert!(parse_duration("9999999999999999h").unwrap_err().message.contains("too large"));
    }

    #[test]
    fn parse_size_units_convert() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2_000));
        assert_eq!(parse_size("3 MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn parse_size_wrong_case_suggests_unit() {
        let err = parse_size("10mib").unwrap_err();
        assert_eq!(err.message, "unknown unit `mib`");
        assert!(err.hint.unwrap_or_default().starts_with("did you mean `MiB`?"));
    }

    #[test]
    fn parse_size_zero_and_garbage_rejected() {
        assert!(parse_size("0").unwrap_err().message.contains("zero"));
        assert!(parse_size("0KiB").unwrap_err().message.contains("zero"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1KiB").unwrap_err().message.contains("negative"));
        assert!(parse_size("99999999999GiB").unwrap_err().message.contains("too large"));
    }
}

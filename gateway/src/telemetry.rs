//! Logging setup: human-readable by default, one JSON object per line with `--log-format json`.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides `level` when set.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Checks a `--log-level` filter: each comma-separated directive is a level (`info`), or a target
/// with its level (`gateway=debug`). tracing takes a lone word that is no level for a target, so
/// `warning` or `verbose` would switch off every line, rejected reloads and opened breakers with them.
pub fn log_filter(filter: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level).trim();
        if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "`{level}` is not a log level: trace, debug, info, warn, error or off, alone or after a target (`gateway=debug`)"
            ));
        }
    }
    EnvFilter::builder().parse(default_filter(filter)).map_err(|error| error.to_string())?;
    Ok(filter.to_owned())
}

/// `level` for everything but two libraries. The Redis client is kept to errors: it warns once per
/// node and attempt while a cluster node is down (dozens of lines a second), where the gateway
/// says so itself, once per outage. The file watcher is kept to warnings: it logs at info each
/// watch that a replaced directory took with it, which reads like an error.
fn default_filter(level: &str) -> String {
    format!("{level},redis=error,notify=warn")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_takes_levels_alone_or_after_a_target_only() {
        for good in ["info", "WARN", "off", "gateway=debug", "info,gateway::proxy=trace", "gateway[conn{peer=x}]=debug"]
        {
            assert_eq!(log_filter(good).as_deref(), Ok(good));
        }
        for bad in ["warning", "verbose", "", "info,", "gateway=loud", "gateway"] {
            let error = log_filter(bad).expect_err(bad);
            assert!(error.contains("is not a log level"), "{bad}: {error}");
        }
    }
}

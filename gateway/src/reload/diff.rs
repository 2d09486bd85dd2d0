//! What a reload changed, by name, and what it cannot apply without a restart.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::config::model::Listener;
use crate::config::Config;

/// Names a section's summary lists at most: a reload of a generated config that changes thousands
/// of routes logs a line, not a page.
const SUMMARY_NAMES: usize = 20;

/// Names added, removed and changed in one section of the config.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    /// By name, through a map: a config of thousands of routes would take seconds pairwise.
    fn between<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Changes {
        let mut changes = Changes::default();
        let old_by_name: HashMap<&str, &T> = old.iter().map(|item| (name(item), item)).collect();
        for item in new {
            match old_by_name.get(name(item)) {
                None => changes.added.push(name(item).to_string()),
                Some(&previous) if previous != item => changes.changed.push(name(item).to_string()),
                Some(_) => {}
            }
        }
        let new_names: HashSet<&str> = new.iter().map(&name).collect();
        changes.removed = old.iter().map(&name).filter(|o| !new_names.contains(o)).map(str::to_string).collect();
        changes
    }

    /// `+a +b -c ~d`, or `unchanged`; past [`SUMMARY_NAMES`] names, how many more.
    fn summary(&self) -> String {
        let mut out = String::new();
        let signed = [('+', &self.added), ('-', &self.removed), ('~', &self.changed)];
        let mut all = signed.iter().flat_map(|(sign, names)| names.iter().map(move |name| (sign, name)));
        for (sign, name) in all.by_ref().take(SUMMARY_NAMES) {
            let _ = write!(out, "{}{sign}{name}", if out.is_empty() { "" } else { " " });
        }
        let more = all.count();
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
        if out.is_empty() {
            "unchanged".to_string()
        } else {
            out
        }
    }
}

/// The one-line summary a successful reload logs:
/// `listeners: unchanged; routes: +a ~b; upstreams: unchanged; jwt providers: ~main; rate limits:
/// unchanged`, then the other sections that changed (`; also changed: server, access_log`). A
/// listener changes with its TLS settings and certificates. Only the listeners bound at start
/// (`running`, same name and address) take changes: the file's others are named apart, as waiting
/// for a restart, so that a certificate change to one of them does not read as applied.
pub(super) fn summary(running: &Config, old: &Config, new: &Config) -> String {
    let live = |l: &&Listener| running.listeners.iter().any(|r| r.name == l.name && r.address == l.address);
    let live_in = |c: &Config| c.listeners.iter().filter(live).cloned().collect::<Vec<_>>();
    let listeners = Changes::between(&live_in(old), &live_in(new), |l| &l.name);
    let waiting: Vec<&str> = new.listeners.iter().filter(|l| !live(l)).map(|l| l.name.as_str()).collect();
    let waiting = match waiting.is_empty() {
        true => String::new(),
        false => format!(" (not bound until a restart: {})", waiting.join(", ")),
    };
    let routes = Changes::between(&old.routes, &new.routes, |r| &r.name);
    let upstreams = Changes::between(&old.upstreams, &new.upstreams, |u| &u.name);
    let providers = Changes::between(&old.jwt_providers, &new.jwt_providers, |p| &p.name);
    let limits = Changes::between(&old.rate_limits, &new.rate_limits, |l| &l.name);
    let others = [
        ("admin", old.admin != new.admin),
        ("server", old.server != new.server),
        ("shutdown", old.shutdown != new.shutdown),
        ("identity_headers", old.identity_headers != new.identity_headers),
        ("redis", old.redis != new.redis),
        ("access_log", old.access_log != new.access_log),
    ];
    let others: Vec<&str> = others.iter().filter(|(_, changed)| *changed).map(|(name, _)| *name).collect();
    let others = if others.is_empty() { String::new() } else { format!("; also changed: {}", others.join(", ")) };
    format!(
        "listeners: {}{waiting}; routes: {}; upstreams: {}; jwt providers: {}; rate limits: {}{others}",
        listeners.summary(),
        routes.summary(),
        upstreams.summary(),
        providers.summary(),
        limits.summary()
    )
}

/// Bound listeners the new config switches between HTTPS and plain HTTP. That applies live, as
/// asked, but a slip in the file (a `tls:` block deleted or mis-indented) would otherwise turn an
/// HTTPS port into a cleartext one with nothing in the log.
pub(super) fn protocol_switches(running: &Config, old: &Config, new: &Config) -> Vec<String> {
    let find = |c: &Config, bound: &Listener| {
        c.listeners.iter().find(|l| l.name == bound.name && l.address == bound.address).cloned()
    };
    running
        .listeners
        .iter()
        .filter_map(|bound| Some((find(old, bound)?, find(new, bound)?)))
        .filter(|(before, after)| before.tls.is_some() != after.tls.is_some())
        .map(|(_, after)| match after.tls {
            Some(_) => {
                format!("listener {:?} ({}) now serves HTTPS only: its tls block was added", after.name, after.address)
            }
            None => format!(
                "listener {:?} ({}) now serves plain HTTP, unencrypted: its tls block was removed",
                after.name, after.address
            ),
        })
        .collect()
}

/// Why the new config cannot be applied in full: sockets are bound once, at start.
pub(super) fn restart_required(running: &Config, new: &Config) -> Vec<String> {
    let mut reasons = Vec::new();
    // Names and addresses only: TLS settings and certificates reload live.
    let sockets = |c: &Config| c.listeners.iter().map(|l| (l.name.clone(), l.address)).collect::<Vec<_>>();
    if sockets(running) != sockets(new) {
        let describe =
            |c: &Config| c.listeners.iter().map(|l| format!("{}={}", l.name, l.address)).collect::<Vec<_>>().join(", ");
        reasons.push(format!(
            "listener changes need a restart: running [{}], file has [{}]",
            describe(running),
            describe(new)
        ));
    }
    if running.admin != new.admin {
        let describe = |c: &Config| c.admin.as_ref().map_or("none".to_string(), |a| a.address.to_string());
        reasons.push(format!(
            "admin listener changes need a restart: running {}, file has {}",
            describe(running),
            describe(new)
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_between_lists_added_removed_changed_by_name() {
        let old = [("a", 1), ("b", 1), ("c", 1)];
        let new = [("b", 1), ("c", 2), ("d", 1)];
        let changes = Changes::between(&old, &new, |item| item.0);
        assert_eq!(changes, Changes { added: vec!["d".into()], removed: vec!["a".into()], changed: vec!["c".into()] });
        assert_eq!(changes.summary(), "+d -a ~c");
        assert_eq!(Changes::between(&old, &old, |item| item.0).summary(), "unchanged");
        let names: Vec<String> = (0..25).map(|i| format!("r{i}")).collect();
        let many = Changes { added: names, ..Changes::default() };
        assert!(many.summary().starts_with("+r0 +r1 "), "{}", many.summary());
        assert!(many.summary().ends_with(" +r19 and 5 more"), "{}", many.summary());
    }

    /// `listeners` (YAML flow items), one upstream, a catch-all route to it and `extra`, as read
    /// from `file` (relative paths in it are relative to its directory).
    fn parsed(file: &str, listeners: &str, extra: &str) -> Config {
        let text = format!(
            "listeners: [{listeners}]\nupstreams: {{ u: {{ endpoints: [http://127.0.0.1:9001] }} }}\n\
             routes: [{{ name: all, upstream: u }}]\n{extra}"
        );
        crate::config::parse(file, &text).unwrap_or_else(|e| panic!("{e}")).config
    }

    #[test]
    fn summary_names_listeners_and_the_other_sections_that_changed() {
        let config = |extra: &str| parsed("gw.yaml", "{ name: public, address: 127.0.0.1:0 }", extra);
        let old = config("");
        assert_eq!(
            summary(&old, &old, &old),
            "listeners: unchanged; routes: unchanged; upstreams: unchanged; jwt providers: unchanged; rate limits: unchanged"
        );
        let new = config("server: { max_headers: 50 }\nshutdown: { drain_timeout: 5s }\n");
        let changed = summary(&old, &old, &new);
        assert!(changed.ends_with("; also changed: server, shutdown"), "{changed}");
    }

    #[test]
    fn protocol_switches_name_bound_listeners_that_gain_or_lose_tls() {
        let dir = std::env::temp_dir().join(format!("gateway-diff-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.join("s.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("s.key"), key.serialize_pem()).unwrap();
        let file = dir.join("gateway.yaml").display().to_string();
        let config = |tls: &str| parsed(&file, &format!("{{ name: public, address: 127.0.0.1:8443{tls} }}"), "");
        let (plain, tls) = (config(""), config(", tls: { certificates: [{ cert: s.crt, key: s.key }] }"));
        assert_eq!(
            protocol_switches(&tls, &tls, &plain),
            ["listener \"public\" (127.0.0.1:8443) now serves plain HTTP, unencrypted: its tls block was removed"]
        );
        assert_eq!(
            protocol_switches(&plain, &plain, &tls),
            ["listener \"public\" (127.0.0.1:8443) now serves HTTPS only: its tls block was added"]
        );
        assert!(protocol_switches(&tls, &tls, &tls).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_applies_listener_changes_to_bound_listeners_only() {
        let config = |listeners: &str| parsed("gw.yaml", listeners, "");
        let running = config("{ name: public, address: 127.0.0.1:8080 }");
        let renamed = config("{ name: web, address: 127.0.0.1:8080 }");
        // The socket bound as `public` keeps its settings: nothing changed, `web` waits.
        assert_eq!(
            summary(&running, &running, &renamed).split(';').next(),
            Some("listeners: -public (not bound until a restart: web)")
        );
        // A later change to `web` alone changes nothing that serves.
        let web_moved = config("{ name: web, address: 127.0.0.1:8081 }");
        assert_eq!(
            summary(&running, &renamed, &web_moved).split(';').next(),
            Some("listeners: unchanged (not bound until a restart: web)")
        );
        let added = config("{ name: public, address: 127.0.0.1:8080 }, { name: extra, address: 127.0.0.1:9090 }");
        assert_eq!(
            summary(&running, &running, &added).split(';').next(),
            Some("listeners: unchanged (not bound until a restart: extra)")
        );
    }
}

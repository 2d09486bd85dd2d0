//! Checks the client-facing sections: `listeners`, `admin`, `server`, `shutdown`.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::{check_name, duration, size, Report};
use crate::access_log::Target;
use crate::config::model::{defaults, Admin, Listener, Server, Shutdown};
use crate::config::raw::{RawAccessLog, RawAdmin, RawListener, RawServer, RawShutdown};

/// A listener that parsed, with what is needed to report clashes against it.
struct Bound<'r> {
    name: &'r str,
    address: SocketAddr,
    line: u64,
}

pub(super) fn listeners(
    report: &mut Report<'_>,
    raw: &Spanned<Vec<RawListener>>,
    raw_admin: Option<&RawAdmin>,
) -> (Vec<Listener>, Option<Admin>) {
    if raw.value.is_empty() {
        report
            .error(raw.referenced, "listeners", "at least one listener is required")
            .hint("add one, e.g. `- { name: public, address: 127.0.0.1:8080 }`");
    }
    let mut listeners = Vec::new();
    let mut bound: Vec<Bound<'_>> = Vec::new();
    for (i, listener) in raw.value.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let name_path = format!("{path}.name");
        let name = &listener.name;
        if check_name(report, "listener", name, &name_path) {
            let earlier = raw.value.iter().take(i).enumerate().find(|(_, l)| l.name.value == name.value);
            if let Some((first, l)) = earlier {
                let line = l.name.referenced.line();
                report
                    .error(
                        name.referenced,
                        &name_path,
                        format!("listener name {:?} is already used by listeners[{first}] (line {line})", name.value),
                    )
                    .hint("listener names must be unique");
            }
        }
        let address_path = format!("{path}.address");
        let Some(address) = socket_address(report, &listener.address, &address_path) else { continue };
        if let Some(other) = bound.iter().find(|b| conflicts(b.address, address)) {
            report_conflict(report, listener.address.referenced, &address_path, address, other);
        }
        bound.push(Bound { name: &name.value, address, line: listener.address.referenced.line() });
        let tls = listener.tls.as_ref().and_then(|tls| super::tls::listener_tls(report, tls, &format!("{path}.tls")));
        let redirect_https = listener.redirect_https.as_ref().and_then(|redirect| {
            let (at, port) = (redirect.value.port.referenced, redirect.value.port.value);
            if listener.tls.is_some() {
                report
                    .error(redirect.referenced, &format!("{path}.redirect_https"), "this listener already serves TLS")
                    .hint("put redirect_https on a plain listener, pointing at the TLS listener's port");
                None
            } else if port == 0 {
                report.error(at, &format!("{path}.redirect_https.port"), "the HTTPS port must not be 0");
                None
            } else {
                Some(port)
            }
        });
        listeners.push(Listener { name: name.value.clone(), address, tls, redirect_https });
    }

    let admin = raw_admin.and_then(|admin| {
        let address = socket_address(report, &admin.address, "admin.address")?;
        if let Some(other) = bound.iter().find(|b| conflicts(b.address, address)) {
            report_conflict(report, admin.address.referenced, "admin.address", address, other);
        }
        Some(Admin { address })
    });
    (listeners, admin)
}

fn socket_address(report: &mut Report<'_>, raw: &Spanned<String>, path: &str) -> Option<SocketAddr> {
    let text = raw.value.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address);
    }
    let problem = if text.parse::<IpAddr>().is_ok() {
        report.error(raw.referenced, path, format!("address {:?} has no port", raw.value))
    } else {
        report.error(raw.referenced, path, format!("address {:?} is not an IP:PORT", raw.value))
    };
    problem.hint("write an IP and a port, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (port 0 picks a free port; host names are not resolved)");
    None
}

/// Two sockets that cannot both be bound: same port (0 means "any free port", so never clashes)
/// and the same IP, or a wildcard IP covering the other one.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    // A `[::]` wildcard also takes IPv4 on Linux's default dual-stack sockets; `0.0.0.0` takes IPv4 only.
    let covers = |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

fn report_conflict(report: &mut Report<'_>, at: Location, path: &str, address: SocketAddr, other: &Bound<'_>) {
    let message = if other.address == address {
        format!("address {address} is already used by listener {:?} (line {})", other.name, other.line)
    } else {
        format!(
            "address {address} overlaps listener {:?} at {} (line {}): both cannot bind port {}",
            other.name,
            other.address,
            other.line,
            address.port()
        )
    };
    report.error(at, path, message).hint("give each listener its own port (port 0 picks a free one)");
}

pub(super) fn server(report: &mut Report<'_>, raw: Option<&RawServer>) -> Server {
    let default = RawServer::default();
    let raw = raw.unwrap_or(&default);
    let max_header_size =
        size(report, raw.max_header_size.as_ref(), "server.max_header_size", defaults::MAX_HEADER_SIZE as u64);
    if let Some(written) = raw.max_header_size.as_ref().filter(|_| max_header_size < defaults::MIN_HEADER_SIZE as u64) {
        report
            .error(
                written.referenced,
                "server.max_header_size",
                format!("max_header_size {:?} is below the minimum of 8KiB", written.value),
            )
            .hint("ordinary browser and proxy requests can carry several KiB of headers; use at least 8KiB (the default is 64KiB)");
    }
    let max_headers = match &raw.max_headers {
        Some(n) if n.value == 0 => {
            report
                .error(n.referenced, "server.max_headers", "max_headers must be at least 1")
                .hint(format!("the default is {}", defaults::MAX_HEADERS));
            defaults::MAX_HEADERS
        }
        Some(n) => n.value,
        None => defaults::MAX_HEADERS,
    };
    let at_least_one = |report: &mut Report<'_>, raw: &Option<Spanned<usize>>, key: &str, hint: &str| match raw {
        Some(n) if n.value == 0 => {
            report.error(n.referenced, &format!("server.{key}"), format!("{key} must be at least 1")).hint(hint);
            None
        }
        Some(n) => Some(n.value),
        None => None,
    };
    let max_connections = at_least_one(
        report,
        &raw.max_connections,
        "max_connections",
        "leave it out to derive it from the open file limit",
    );
    let max_connections_per_ip =
        at_least_one(report, &raw.max_connections_per_ip, "max_connections_per_ip", "leave it out for no such cap");
    Server {
        max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        max_headers,
        max_connections,
        max_connections_per_ip,
        header_read_timeout: duration(
            report,
            raw.header_read_timeout.as_ref(),
            "server.header_read_timeout",
            defaults::HEADER_READ_TIMEOUT,
        ),
        idle_timeout: duration(report, raw.idle_timeout.as_ref(), "server.idle_timeout", defaults::IDLE_TIMEOUT),
        max_body_size: size(report, raw.max_body_size.as_ref(), "server.max_body_size", defaults::MAX_BODY_SIZE),
        trusted_proxies: trusted_proxies(report, raw.trusted_proxies.as_deref().unwrap_or_default()),
    }
}

/// CIDRs, or plain IPs meaning that one address (/32 or /128).
fn trusted_proxies(report: &mut Report<'_>, raw: &[Spanned<String>]) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let text = entry.value.trim();
        let net = text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
        match net {
            // Host bits (`10.1.2.3/8`) are ignored, as every CIDR matcher does.
            Some(net) => {
                if net.prefix_len() == 0 {
                    report
                        .warn(
                            entry.referenced,
                            &format!("server.trusted_proxies[{i}]"),
                            format!("{net} trusts every address: any client can set the address rate limits and upstreams see through X-Forwarded-For"),
                        )
                        .hint("list the proxies in front of the gateway, e.g. the load balancer's subnet");
                }
                nets.push(net.trunc());
            }
            None => {
                report
                    .error(
                        entry.referenced,
                        &format!("server.trusted_proxies[{i}]"),
                        format!("{:?} is not an IP address or CIDR", entry.value),
                    )
                    .hint("write an IP (10.1.2.3, ::1) or a network (10.0.0.0/8, fd00::/8)");
            }
        }
    }
    nets
}

pub(super) fn shutdown(report: &mut Report<'_>, raw: Option<&RawShutdown>) -> Shutdown {
    let drain = raw.and_then(|s| s.drain_timeout.as_ref());
    let grace = raw.and_then(|s| s.accept_grace.as_ref());
    Shutdown {
        drain_timeout: duration(report, drain, "shutdown.drain_timeout", defaults::DRAIN_TIMEOUT),
        accept_grace: duration(report, grace, "shutdown.accept_grace", defaults::ACCEPT_GRACE),
    }
}

/// `access_log.path`: `stdout`, or a file (relative to the config file) in a directory that exists.
pub(super) fn access_log(report: &mut Report<'_>, raw: Option<&Spanned<RawAccessLog>>) -> Option<Target> {
    let path = &raw?.value.path;
    if path.value == "stdout" {
        return Some(Target::Stdout);
    }
    if path.value.trim().is_empty() {
        report.error(path.referenced, "access_log.path", "path must not be empty").hint(ACCESS_LOG_HINT);
        return None;
    }
    let file = crate::config::resolve(report.file, &path.value);
    let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        (report.error(path.referenced, "access_log.path", format!("directory {} does not exist", dir.display())))
            .hint(ACCESS_LOG_HINT);
        return None;
    }
    if file.is_dir() {
        (report.error(path.referenced, "access_log.path", format!("{} is a directory, not a file", file.display())))
            .hint("name a file in it, e.g. access.log at the end of the path");
        return None;
    }
    Some(Target::File(file))
}

const ACCESS_LOG_HINT: &str = "write `stdout`, or a file in an existing directory, e.g. /var/log/gateway/access.log";

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn access_log_path_that_is_a_directory_refused() {
        let text = "listeners:\n  - { name: public, address: 127.0.0.1:0 }\naccess_log: { path: /tmp }\nupstreams:\n  echo: { endpoints: [http://127.0.0.1:9001] }\nroutes:\n  - { name: all, upstream: echo }\n";
        let problems = crate::config::parse("gw.yaml", text).err().map(|p| p.to_string()).unwrap_or_default();
        assert!(problems.contains("gw.yaml:3:21: access_log.path: /tmp is a directory, not a file"), "{problems}");
    }

    #[test]
    fn conflicts_same_address_true() {
        assert!(conflicts(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
    }

    #[test]
    fn conflicts_port_zero_false() {
        assert!(!conflicts(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }

    #[test]
    fn conflicts_wildcard_covers_specific_ip() {
        assert!(conflicts(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(conflicts(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(!conflicts(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!conflicts(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!conflicts(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
    }
}

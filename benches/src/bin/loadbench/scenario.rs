//! The scenarios: what each sends, to which gateway route, and how the report describes it.

use std::path::Path;

use anyhow::bail;
use benches::client::{self, Protocol, Tls};
use benches::{jwt, report, stack};
use clap::ValueEnum;

use super::Setup;

/// A way to send the load, as `--scenarios` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// HTTP/1.1 keep-alive straight to the echo.
    Direct,
    /// HTTP/1.1 keep-alive through the gateway.
    Gateway,
    /// Like `gateway-jwt` (same tokens, same bytes) to a route that checks nothing: the baseline
    /// that isolates what the JWT check costs.
    GatewayBearer,
    /// HTTP/1.1 keep-alive through the gateway to a route that checks a JWT (RS256) per request.
    GatewayJwt,
    /// HTTP/1.1 keep-alive through the gateway to a route with a rate limit that never limits,
    /// counted in-process: the cost of the decision.
    GatewayLocalLimit,
    /// Like `gateway-local-limit`, counted in Redis (decisions batched per worker) by a gateway of its
    /// own with `redis:` and a redis-server the bench starts.
    GatewayRedisLimit,
    /// Like `gateway`, through a gateway of its own that also writes a JSON access log to a file
    /// (one line per request, by its writer thread): the cost of the log.
    GatewayAccessLog,
    /// HTTP/2 cleartext (prior knowledge) through the gateway.
    GatewayH2,
    /// HTTP/1.1 keep-alive over TLS 1.3 through the gateway.
    GatewayHttps,
    /// HTTP/2 over TLS 1.3 (ALPN h2) through the gateway.
    GatewayHttpsH2,
    /// A new TLS 1.3 connection (full handshake) per HTTP/1.1 request through the gateway.
    GatewayHttpsNewConn,
    /// Every gateway feature on, in a gateway of its own: HTTPS keep-alive to a route that checks
    /// a JWT and then a rate limit per token subject, counted in Redis (in-process without
    /// redis-server), with metrics and a JSON access log to a file.
    GatewayAll,
    /// HTTP/1.1 keep-alive through nginx.
    Nginx,
    /// HTTP/1.1 keep-alive through `hyperfloor`, about the least a hyper 1.x proxy does (the
    /// gateway's forwarding headers, nothing else): the gateway's ratio to it is what the gateway's
    /// own work costs, its ratio to nginx what hyper costs.
    HyperFloor,
}

/// The process a scenario's client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    Echo,
    Gateway(Gateway),
    Nginx,
    HyperFloor,
}

/// The gateway process that serves a scenario. Each runs only the features its scenarios need,
/// so that one scenario's feature (a Redis connection, an access log) costs nothing in the others
/// and every ratio against `gateway` isolates what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gateway {
    /// `gateway`: every gateway scenario not below; the baseline the ratios divide by.
    Plain,
    /// `gateway-redis`: `gateway-redis-limit`, its limit counted in Redis.
    Redis,
    /// `gateway-log`: `gateway-access-log`, the plain config plus a JSON access log to a file.
    Log,
    /// `gateway-all`: `gateway-all`, every feature on, the access log included.
    All,
}

impl Gateway {
    /// Every gateway, in the order the bench starts them.
    pub(crate) const EVERY: [Gateway; 4] = [Gateway::Plain, Gateway::Redis, Gateway::Log, Gateway::All];

    /// The process name: its config is `<name>.yaml`, its access log `access-<name>.log`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Gateway::Plain => "gateway",
            Gateway::Redis => "gateway-redis",
            Gateway::Log => "gateway-log",
            Gateway::All => "gateway-all",
        }
    }
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Gateway => "gateway",
            Scenario::GatewayH2 => "gateway-h2",
            Scenario::GatewayHttps => "gateway-https",
            Scenario::GatewayHttpsH2 => "gateway-https-h2",
            Scenario::GatewayHttpsNewConn => "gateway-https-new-conn",
            Scenario::GatewayBearer => "gateway-bearer",
            Scenario::GatewayJwt => "gateway-jwt",
            Scenario::GatewayLocalLimit => "gateway-local-limit",
            Scenario::GatewayRedisLimit => "gateway-redis-limit",
            Scenario::GatewayAccessLog => "gateway-access-log",
            Scenario::GatewayAll => "gateway-all",
            Scenario::Nginx => "nginx",
            Scenario::HyperFloor => "hyper-floor",
        }
    }

    pub(crate) fn server(self) -> Server {
        match self {
            Scenario::Direct => Server::Echo,
            Scenario::Nginx => Server::Nginx,
            Scenario::HyperFloor => Server::HyperFloor,
            Scenario::Gateway
            | Scenario::GatewayH2
            | Scenario::GatewayHttps
            | Scenario::GatewayHttpsH2
            | Scenario::GatewayHttpsNewConn
            | Scenario::GatewayBearer
            | Scenario::GatewayJwt
            | Scenario::GatewayLocalLimit => Server::Gateway(Gateway::Plain),
            Scenario::GatewayRedisLimit => Server::Gateway(Gateway::Redis),
            Scenario::GatewayAccessLog => Server::Gateway(Gateway::Log),
            Scenario::GatewayAll => Server::Gateway(Gateway::All),
        }
    }

    pub(crate) fn tls(self) -> bool {
        matches!(
            self,
            Scenario::GatewayHttps | Scenario::GatewayHttpsH2 | Scenario::GatewayHttpsNewConn | Scenario::GatewayAll
        )
    }

    /// Sends a token with every request.
    pub(crate) fn jwt(self) -> bool {
        matches!(self, Scenario::GatewayBearer | Scenario::GatewayJwt | Scenario::GatewayAll)
    }

    /// Its gateway counts its rate limit in Redis, given whether redis-server runs (without it,
    /// `gateway-redis-limit` is skipped and `gateway-all` counts in-process).
    pub(crate) fn counts_in_redis(self, redis_running: bool) -> bool {
        match self {
            Scenario::GatewayRedisLimit => true,
            Scenario::GatewayAll => redis_running,
            _ => false,
        }
    }

    /// Its gateway writes a JSON access log to a file.
    pub(crate) fn access_log(self) -> bool {
        matches!(self, Scenario::GatewayAccessLog | Scenario::GatewayAll)
    }

    /// The request path: `path`, under the prefix of the scenario's route (the gateway strips it).
    pub(crate) fn path(self, path: &str) -> String {
        match self {
            Scenario::GatewayBearer => format!("{}{path}", jwt::UNCHECKED_PATH_PREFIX),
            Scenario::GatewayJwt => format!("{}{path}", jwt::PATH_PREFIX),
            Scenario::GatewayLocalLimit | Scenario::GatewayRedisLimit => format!("{}{path}", stack::LIMIT_PATH_PREFIX),
            Scenario::GatewayAll => format!("{}{path}", stack::ALL_PATH_PREFIX),
            _ => path.to_owned(),
        }
    }

    pub(crate) fn http2(self) -> bool {
        matches!(self, Scenario::GatewayH2 | Scenario::GatewayHttpsH2)
    }

    /// How the client speaks; `tls` holds the client configs (needed by TLS scenarios).
    pub(crate) fn protocol(self, tls: Option<&TlsClients>, h2_streams: usize) -> anyhow::Result<Protocol> {
        let tls = match (self.tls(), tls) {
            (false, _) => None,
            (true, Some(t)) => Some(if self.http2() { t.h2.clone() } else { t.http1.clone() }),
            (true, None) => bail!("{}: no TLS client config (the gateway was started without TLS)", self.name()),
        };
        Ok(Protocol {
            http2: self.http2(),
            streams: h2_streams,
            tls,
            new_conn_per_request: self == Scenario::GatewayHttpsNewConn,
        })
    }

    /// What the client talked to, and how.
    pub(crate) fn description(self, setup: &Setup, h2_streams: usize) -> String {
        let path = match self.server() {
            Server::Echo => "client -> echo".to_owned(),
            Server::Gateway(gateway) => {
                let counted = if self.counts_in_redis(setup.redis) { ", limits counted in redis-server" } else { "" };
                format!("client -> {} ({} worker threads{counted}) -> echo", gateway.name(), setup.gateway_workers)
            }
            Server::Nginx => format!("client -> nginx ({} workers) -> echo", setup.nginx_workers),
            Server::HyperFloor => format!(
                "client -> hyperfloor ({} worker threads; hyper, the gateway's forwarding headers, nothing else) -> echo",
                setup.gateway_workers
            ),
        };
        let wire = match self {
            Scenario::Direct | Scenario::Gateway | Scenario::Nginx | Scenario::HyperFloor => {
                "HTTP/1.1 keep-alive".to_owned()
            }
            Scenario::GatewayH2 => format!("HTTP/2 cleartext (prior knowledge), {h2_streams} stream(s) per connection"),
            Scenario::GatewayHttps => "HTTP/1.1 over TLS 1.3 (ALPN http/1.1), keep-alive".to_owned(),
            Scenario::GatewayHttpsH2 => format!("HTTP/2 over TLS 1.3 (ALPN h2), {h2_streams} stream(s) per connection"),
            Scenario::GatewayHttpsNewConn => {
                "HTTP/1.1 over TLS 1.3, per request a new TCP connection + full handshake (no resumption), \
                 `Connection: close`"
                    .to_owned()
            }
            Scenario::GatewayBearer => {
                "HTTP/1.1 keep-alive; the gateway-jwt requests to a route without auth".to_owned()
            }
            Scenario::GatewayJwt => format!("HTTP/1.1 keep-alive; {}", token_pool(setup.jwt_users)),
            Scenario::GatewayLocalLimit => format!("HTTP/1.1 keep-alive; {} in-process", per_ip_limit()),
            Scenario::GatewayRedisLimit => {
                format!("HTTP/1.1 keep-alive; {} in Redis (each worker batches the decisions waiting on it into one pipeline)", per_ip_limit())
            }
            Scenario::GatewayAccessLog => format!(
                "HTTP/1.1 keep-alive; the gateway requests, with a JSON access log to a file ({}): one line per \
                 request, written by the gateway's writer thread; the ratio to gateway is the log's cost",
                stack::access_log_file(Gateway::Log.name())
            ),
            Scenario::GatewayAll => format!(
                "all features on: HTTP/1.1 over TLS 1.3 keep-alive + {} + a per-subject rate limit ({}) counted \
                 {} + metrics (recorded, as in every gateway scenario) + JSON access log to a file ({})",
                token_pool(setup.jwt_users),
                budget(),
                if setup.redis { "in Redis" } else { "in-process (redis-server not installed)" },
                stack::access_log_file(Gateway::All.name())
            ),
        };
        format!("{path}; {wire}")
    }
}

/// What the JWT scenarios send, for their descriptions.
fn token_pool(users: usize) -> String {
    format!(
        "JWT route, `Authorization: Bearer` in turn from {} RS256 tokens of as many users (the gateway caches \
         up to 16,384 verified tokens)",
        report::fmt_int(users as f64)
    )
}

/// Every limit's budget, never reached.
fn budget() -> String {
    format!(
        "{} requests per {} per key, never reached",
        report::fmt_int(stack::LIMIT_REQUESTS.into()),
        stack::LIMIT_WINDOW
    )
}

/// What the limit scenarios' route does, for their descriptions.
fn per_ip_limit() -> String {
    format!(
        "route with a rate limit per client address ({}; every connection is from 127.0.0.1, so one key), counted",
        budget()
    )
}

/// TLS client configs for the gateway's TLS listener, one per ALPN id.
pub(crate) struct TlsClients {
    pub(crate) http1: Tls,
    pub(crate) h2: Tls,
}

impl TlsClients {
    /// Trusts `ca` and sends SNI `localhost`, the name on the dev certificate.
    pub(crate) fn new(ca: &Path) -> anyhow::Result<TlsClients> {
        let tls = |alpn: &[u8]| -> anyhow::Result<Tls> {
            Ok(Tls { config: client::tls_client_config(ca, alpn)?, server_name: "localhost".try_into()? })
        };
        Ok(TlsClients { http1: tls(client::ALPN_HTTP1)?, h2: tls(client::ALPN_H2)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_name_is_its_command_line_value() {
        for s in Scenario::value_variants() {
            let value = s.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), s.name());
        }
    }

    #[test]
    fn scenario_protocol_matches_name() {
        let none = None;
        let plain = Scenario::Gateway.protocol(none, 4).expect("plain");
        assert!(!plain.http2 && plain.tls.is_none() && !plain.new_conn_per_request);
        let h2 = Scenario::GatewayH2.protocol(none, 4).expect("h2");
        assert!(h2.http2 && h2.tls.is_none());
        assert_eq!(h2.streams_per_connection(), 4);
        assert!(Scenario::GatewayHttps.protocol(none, 1).is_err(), "TLS needs client configs");
        assert!(Scenario::GatewayHttpsNewConn.tls() && !Scenario::GatewayHttpsNewConn.http2());
        assert!(Scenario::GatewayHttpsH2.tls() && Scenario::GatewayHttpsH2.http2());
        assert_eq!(Scenario::Nginx.server(), Server::Nginx);
        assert_eq!(Scenario::Direct.server(), Server::Echo);
    }

    #[test]
    fn jwt_scenarios_send_tokens_under_the_token_route() {
        let protocol = Scenario::GatewayJwt.protocol(None, 1).expect("jwt");
        assert!(!protocol.http2 && protocol.tls.is_none() && !protocol.new_conn_per_request);
        assert!(Scenario::GatewayAll.tls() && !Scenario::GatewayAll.http2() && Scenario::GatewayAll.jwt());
        assert_eq!(Scenario::GatewayJwt.path("/"), "/jwt/");
        assert_eq!(Scenario::GatewayAll.path("/a?b"), "/all/a?b");
        assert_eq!(Scenario::Gateway.path("/"), "/");
        assert!(!Scenario::GatewayHttps.jwt());
    }

    #[test]
    fn limit_scenarios_go_to_the_limit_route_of_their_gateway() {
        for s in [Scenario::GatewayLocalLimit, Scenario::GatewayRedisLimit] {
            assert_eq!(s.path("/"), "/limit/");
            assert!(!s.tls() && !s.http2() && !s.jwt());
        }
        assert!(!Scenario::GatewayLocalLimit.counts_in_redis(true));
        assert!(Scenario::GatewayRedisLimit.counts_in_redis(false));
        assert!(Scenario::GatewayAll.counts_in_redis(true) && !Scenario::GatewayAll.counts_in_redis(false));
        // The baseline every ratio divides by stays on the gateway without Redis, and unlimited.
        assert!(!Scenario::Gateway.counts_in_redis(true));
        assert_eq!(Scenario::Gateway.path("/"), "/");
    }

    /// The Redis, access-log and all-features gateways serve one scenario each, so no feature is
    /// paid for in another scenario; everything else shares the plain gateway.
    #[test]
    fn gateway_scenarios_served_by_their_own_gateway() {
        let served_by = |gateway| {
            let served = Scenario::value_variants().iter().filter(|s| s.server() == Server::Gateway(gateway));
            served.map(|s| s.name()).collect::<Vec<_>>()
        };
        assert_eq!(served_by(Gateway::Redis), ["gateway-redis-limit"]);
        assert_eq!(served_by(Gateway::Log), ["gateway-access-log"]);
        assert_eq!(served_by(Gateway::All), ["gateway-all"]);
        // The others: direct, nginx, hyper-floor and the three above.
        assert_eq!(served_by(Gateway::Plain).len(), Scenario::value_variants().len() - 6);
        for s in Scenario::value_variants() {
            let logging = [Server::Gateway(Gateway::Log), Server::Gateway(Gateway::All)];
            assert_eq!(s.access_log(), logging.contains(&s.server()), "{}", s.name());
            if s.counts_in_redis(false) {
                assert_eq!(s.server(), Server::Gateway(Gateway::Redis), "{}", s.name());
            }
        }
        let names: Vec<_> = Gateway::EVERY.iter().map(|g| g.name()).collect();
        assert_eq!(names, ["gateway", "gateway-redis", "gateway-log", "gateway-all"]);
    }

    /// `gateway-access-log` differs from `gateway` in its gateway's access log only: same
    /// protocol, same path, no token, no limit.
    #[test]
    fn access_log_scenario_sends_the_gateway_requests() {
        let s = Scenario::GatewayAccessLog;
        assert_eq!(s.name(), "gateway-access-log");
        assert_eq!(s.server(), Server::Gateway(Gateway::Log));
        assert!(s.access_log() && !Scenario::Gateway.access_log());
        assert_eq!(s.path("/bytes/256"), Scenario::Gateway.path("/bytes/256"));
        assert!(!s.tls() && !s.http2() && !s.jwt());
        assert!(!s.counts_in_redis(true));
        let protocol = s.protocol(None, 4).expect("cleartext needs no TLS config");
        assert!(!protocol.http2 && protocol.tls.is_none() && !protocol.new_conn_per_request);
        let setup = Setup { cpus: 2, gateway_workers: 2, nginx_workers: 2, jwt_users: 1, redis: true };
        let description = s.description(&setup, 1);
        assert!(
            description.starts_with("client -> gateway-log (2 worker threads) -> echo; HTTP/1.1 keep-alive"),
            "{description}"
        );
        assert!(description.contains("access-gateway-log.log"), "{description}");
    }
}

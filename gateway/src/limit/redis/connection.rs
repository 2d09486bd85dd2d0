//! Keeping the store connected: connect, probe that Redis can count, watch the connection, and
//! reconnect with backoff; and which errors condemn a connection.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{RedisStore, WARN_EVERY};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an established connection is probed (see [`probe`]), and how long the answer may take.
pub(super) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The probe's key: outside the counters' `gw:rl:{..}:<index>` names, shared by every gateway.
const PROBE_KEY: &str = "gw:rl:probe";
const PROBE_EXPIRY_MS: u64 = 10_000;
/// Error codes of a server that cannot count now, whatever the keys: an outage, not a failed call.
/// (`NOAUTH`, `WRONGPASS`, `OOM` and `MISCONF` have no kind of their own in the client.)
const CANNOT_COUNT: [&str; 8] =
    ["READONLY", "OOM", "NOAUTH", "WRONGPASS", "NOPERM", "MASTERDOWN", "LOADING", "MISCONF"];

/// How connections are made: to one server, or to a Redis Cluster through one of its nodes.
pub(super) enum Connector {
    Server(Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

impl Connector {
    pub(super) async fn connect(&self) -> RedisResult<Link> {
        match self {
            Connector::Server(client, settings) => {
                client.get_multiplexed_async_connection_with_config(settings).await.map(Link::Server)
            }
            Connector::Cluster(client) => client.get_async_connection().await.map(Link::Cluster),
        }
    }
}

/// A connection to one server, or to a Redis Cluster, which routes each command or pipeline by
/// its keys' hash slot: a pipeline must stay in one slot.
#[derive(Clone)]
pub(super) enum Link {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(connection) => connection.req_packed_command(cmd),
            Link::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Link {
    /// A handle on the same connection whose answers may take `patience` (a cluster's is set
    /// when it is made; every call is also bounded from outside).
    pub(super) fn patient(&self, patience: Duration) -> Link {
        let mut link = self.clone();
        if let Link::Server(connection) = &mut link {
            connection.set_response_timeout(patience);
        }
        link
    }

    /// Runs `commands`, each on the key it names, answers ignored: one pipeline on a server; on a
    /// cluster one per hash tag, all at once.
    pub(super) async fn exec(&self, commands: Vec<(String, Cmd)>) -> RedisResult<()> {
        let mut pipes: Vec<Pipeline> = Vec::new();
        match self {
            Link::Server(_) => pipes.push(commands.into_iter().fold(redis::pipe(), |mut pipe, (_, command)| {
                pipe.add_command(command).ignore();
                pipe
            })),
            Link::Cluster(_) => {
                let mut by_tag: HashMap<String, usize> = HashMap::new();
                for (key, command) in commands {
                    let at = *by_tag.entry(slot_tag(&key).to_owned()).or_insert_with(|| {
                        pipes.push(redis::pipe());
                        pipes.len() - 1
                    });
                    pipes[at].add_command(command).ignore();
                }
            }
        }
        let calls = pipes.iter().map(|pipe| {
            let mut link = self.clone();
            async move { pipe.exec_async(&mut link).await }
        });
        futures_util::future::try_join_all(calls).await.map(|_| ())
    }
}

/// The part of `key` Redis hashes to pick its cluster slot: the text between the first `{` and
/// the next `}` when that is not empty, else the whole key.
pub(super) fn slot_tag(key: &str) -> &str {
    let tagged = key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag);
    tagged.filter(|tag| !tag.is_empty()).unwrap_or(key)
}

/// Connects and probes (see [`connect`]), then waits for the connection to break (see [`watch`]),
/// and connects again; backs off (100 ms doubling to 5 s) after failed attempts and after
/// connections that broke within 5 s. Logs transitions only: WARN once per outage, INFO when
/// connected; a connection that keeps breaking within 5 s of being made logs them once a minute.
pub(super) async fn keep_connected(
    store: Weak<RedisStore>,
    connector: Arc<Connector>,
    mut reconnect_requests: mpsc::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut outage_logged = false;
    // When an outage was last logged at WARN, and whether the one under way was not (a flap).
    let mut warned_at: Option<Instant> = None;
    let mut quiet = false;
    loop {
        let Some(patience) = store.upgrade().map(|live| live.patience()) else { return };
        let attempt = connect(&connector, patience).await;
        let Some(live) = store.upgrade() else { return };
        match attempt {
            Ok(connection) => {
                if quiet {
                    tracing::debug!(url = %live.shown_url, "connected to Redis");
                } else {
                    tracing::info!(url = %live.shown_url, "connected to Redis");
                }
                live.set_last_error(None);
                live.connection.store(Some(Arc::new(connection)));
                drop(live);
                let connected_at = Instant::now();
                if !watch(&store, &mut reconnect_requests).await {
                    return;
                }
                let Some(live) = store.upgrade() else { return };
                let error = live.last_error();
                let flapped = connected_at.elapsed() < MAX_BACKOFF;
                quiet = flapped && warned_at.is_some_and(|at| at.elapsed() < WARN_EVERY);
                if quiet {
                    tracing::debug!(url = %live.shown_url, %error, "lost the connection to Redis again");
                } else {
                    tracing::warn!(url = %live.shown_url, %error, "lost the connection to Redis: counting in-process");
                    warned_at = Some(Instant::now());
                }
                outage_logged = true;
                drop(live);
                if !flapped {
                    backoff = MIN_BACKOFF;
                    continue;
                }
            }
            Err(error) => {
                let error = live.scrub(&error);
                if outage_logged {
                    tracing::debug!(url = %live.shown_url, %error, "cannot use Redis yet");
                } else {
                    tracing::warn!(url = %live.shown_url, %error, "cannot use Redis: counting in-process");
                    outage_logged = true;
                    warned_at = Some(Instant::now());
                }
                live.set_last_error(Some(error));
                drop(live);
            }
        }
        // Wake-ups while waiting carry nothing new (there is no connection to lose).
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                request = reconnect_requests.recv() => if request.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A new connection that passed the probe, or why there is none (unscrubbed).
async fn connect(connector: &Connector, patience: Duration) -> Result<Link, String> {
    let connection = connector.connect().await.map_err(|e| describe(&e))?;
    probe(&connection, patience).await.map_err(|error| format!("connected, but Redis cannot count: {error}"))?;
    Ok(connection)
}

/// Whether Redis can count on `connection`: the commands the counting uses (INCRBY, PEXPIRE,
/// DECRBY, MGET) on [`PROBE_KEY`], which they leave at 0 with a short expiry. A PING would pass on
/// a read-only replica, a full server or without the password, where every call then fails.
async fn probe(connection: &Link, patience: Duration) -> Result<(), String> {
    let mut probe = connection.patient(patience);
    let mut pipe = redis::pipe();
    pipe.cmd("INCRBY").arg(PROBE_KEY).arg(1).ignore();
    pipe.cmd("PEXPIRE").arg(PROBE_KEY).arg(PROBE_EXPIRY_MS).ignore();
    pipe.cmd("DECRBY").arg(PROBE_KEY).arg(1).ignore();
    pipe.cmd("MGET").arg(PROBE_KEY).ignore();
    match tokio::time::timeout(patience, pipe.exec_async(&mut probe)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err(format!("no answer to the probe within {}ms", patience.as_millis())),
    }
}

/// Waits until a check reports the connection broken, or a probe every [`HEALTH_INTERVAL`] finds
/// it so: an idle gateway must notice an outage too, or its first request after one would meet a
/// dead socket (or a server that cannot count). After a probe that passed, sets the expiries owed.
/// False when the store is gone.
async fn watch(store: &Weak<RedisStore>, reconnect_requests: &mut mpsc::Receiver<()>) -> bool {
    let mut ticks = tokio::time::interval_at(Instant::now() + HEALTH_INTERVAL, HEALTH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = reconnect_requests.recv() => return request.is_some(),
            _ = ticks.tick() => {
                let Some(live) = store.upgrade() else { return false };
                let Some(connection) = live.connection.load_full() else { continue };
                let patience = live.patience();
                match probe(&connection, patience).await {
                    Ok(()) => live.pay_owed_expiries(&connection, patience).await,
                    Err(error) => {
                        live.set_last_error(Some(live.scrub(&error)));
                        live.drop_connection(&connection);
                    }
                }
            }
        }
    }
}

/// What `error` says, with a server's error replies as Redis wrote them (`NOPERM this user has
/// no permissions ...`), which the operator can look up.
pub(super) fn describe(error: &RedisError) -> String {
    match error.clone().into_server_errors() {
        Some(errors) => {
            let mut replies: Vec<String> = Vec::new();
            for (_, error) in errors.iter() {
                let reply = format!("{} {}", error.code(), error.details().unwrap_or_default());
                // A refused batch answers the same for each of its commands.
                if !replies.contains(&reply) {
                    replies.push(reply);
                }
            }
            replies.join("; ")
        }
        None => error.to_string(),
    }
}

/// Whether Redis says it cannot count now, whatever the keys (see [`CANNOT_COUNT`]).
fn cannot_count(error: &RedisError) -> bool {
    let codes = error.clone().into_server_errors();
    codes.is_some_and(|errors| errors.iter().any(|(_, error)| CANNOT_COUNT.contains(&error.code())))
}

/// Whether `error` calls for a new connection: the connection is broken, or Redis cannot count.
pub(super) fn condemns(error: &RedisError) -> bool {
    is_connection_level(error) || cannot_count(error)
}

/// Whether the connection itself is broken (I/O, dropped, protocol out of step): a new one is
/// needed. A response timeout is not: the server may only be slow.
fn is_connection_level(error: &RedisError) -> bool {
    !error.is_timeout() && (error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error())
}

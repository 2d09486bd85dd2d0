//! Shared sliding-window counters in Redis: decisions batched into pipelines over a multiplexed
//! connection per worker, kept up by a background task that reconnects with backoff.
//!
//! Counters live at `gw:rl:{<key>}:<window index>`, the index picked by this gateway's clock
//! (instances should run NTP). The `{..}` hash tag keeps a key's two counters in one Redis Cluster
//! slot; inside it `%`, `{` and `}` are percent-encoded (see [`hash_tag`]). On a cluster a batch
//! goes out as one pipeline per key, as a pipeline must stay in one slot.
//!
//! Connected means able to count: a connection is only used once a probe (the commands the
//! counting uses, on a key of its own) has passed, and the probe is repeated every second. A
//! server that answers with errors saying it cannot count now (read-only replica, out of memory,
//! not authenticated, no permission, loading) is an outage like an unreachable one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, Client, RedisError, TlsCertificates};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::batch::{Batcher, Question};
use self::connection::{condemns, describe, keep_connected, Connector, Link, HEALTH_TIMEOUT};
use self::count::{Outcome, OwedExpiries, Plan, SettledCounts};
use super::Decision;
use crate::config::Redis;
use crate::metrics;
use crate::throttle::Throttle;
use crate::worker;

/// Failed calls (timed out or answered with an error) in a row that condemn the connection: one
/// slow call is only slow, but a connection into a black hole (host gone, no reset), or to a
/// server that refuses every call, would otherwise fail every request forever.
const FAILURES_IN_A_ROW: u32 = 3;
/// Owed expiries set per pipeline (see [`RedisStore::pay_owed_expiries`]).
const OWED_PER_CALL: usize = 1_024;
/// A repeating warning (decisions timing out, failing follow-ups, flapping connections) is logged
/// at most this often; `last_error` shows the latest one meanwhile.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why Redis could not decide; the caller then decides in-process. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// No connection: not made yet, lost and not back yet, or never to be made (no tokio runtime
    /// when the store started, or an invalid URL: see `status()`).
    #[error("not connected to Redis")]
    NotConnected,
    /// No answer within `timeout`; the connection is kept (the call may still be counted).
    #[error("Redis timed out after {}ms", .0.as_millis())]
    TimedOut(Duration),
    /// What Redis (or the connection) said.
    #[error("Redis error: {0}")]
    Redis(String),
}

/// A worker thread's own connection, and the queue its decisions wait in for the next call.
#[derive(Default)]
struct WorkerConnection {
    connection: ArcSwapOption<Link>,
    /// Held while connecting, so the worker's concurrent requests wait for one connection.
    connecting: tokio::sync::Mutex<()>,
    batcher: Batcher,
}

/// The connection to the Redis server every gateway instance counts through.
pub struct RedisStore {
    /// Itself, for the batching tasks: they must not keep the store alive.
    me: Weak<RedisStore>,
    config: Redis,
    /// `config.url` with the password replaced by `***`: the only form logs and status show.
    shown_url: String,
    /// Password forms to scrub from error texts (they should never be there; defence in depth).
    secrets: Vec<String>,
    /// The control connection: `None` while disconnected, which sends every decision in-process.
    /// Its driver task runs on the runtime `start` ran on; it is health-checked and backs
    /// `status()`, and serves decisions on threads that are not workers.
    connection: ArcSwapOption<Link>,
    /// One connection per worker thread, made on the worker's first decision, so its driver runs
    /// on that worker's runtime and a decision never leaves the request's thread (a hop to
    /// another thread and back costs more than the round trip to Redis). Dropped with the control
    /// connection.
    workers: Box<[WorkerConnection]>,
    /// What the worker connections are made with; `None` when the URL is invalid.
    connector: Option<Arc<Connector>>,
    last_error: Mutex<Option<String>>,
    /// Calls failed (timed out or refused) since the last reply.
    failures_in_a_row: AtomicU32,
    /// Counters that may have been left without expiry, set by the health check.
    owed: Mutex<OwedExpiries>,
    decisions_timing_out: Throttle,
    follow_ups_failing: Throttle,
    owed_forgotten: Throttle,
    /// Wakes the connection task to reconnect; dropping it (with the store) ends the task.
    reconnect: mpsc::Sender<()>,
}

impl RedisStore {
    /// Never blocks, never fails: connects in the background on the current tokio runtime,
    /// reconnecting with backoff (100 ms doubling to 5 s). Without a runtime it never connects and
    /// every check is [`Unavailable::NotConnected`]. That runtime must keep running: it drives the
    /// connection for callers on every runtime. The task ends when the store is dropped.
    pub fn start(config: &Redis, workers: usize) -> Arc<RedisStore> {
        let (reconnect, reconnect_requests) = mpsc::channel(1);
        let certificates =
            config.ca.as_ref().map(|ca| TlsCertificates { client_tls: None, root_cert: Some(ca.pem.clone()) });
        let client = match &certificates {
            Some(certificates) => Client::build_with_tls(config.url.as_str(), certificates.clone()),
            None => Client::open(config.url.as_str()),
        };
        let mut secrets: Vec<String> = password_in_url(&config.url).into_iter().map(str::to_owned).collect();
        if let Some(password) = client.as_ref().ok().and_then(|c| c.get_connection_info().redis_settings().password()) {
            secrets.push(password.to_owned());
        }
        secrets.retain(|secret| !secret.is_empty());
        let store = Arc::new_cyclic(|me| RedisStore {
            me: me.clone(),
            config: config.clone(),
            shown_url: redact_url(&config.url),
            secrets,
            connection: ArcSwapOption::empty(),
            workers: (0..workers.max(1)).map(|_| WorkerConnection::default()).collect(),
            connector: client.as_ref().ok().and_then(|client| connector(config, client, certificates)).map(Arc::new),
            last_error: Mutex::new(None),
            failures_in_a_row: AtomicU32::new(0),
            owed: Mutex::default(),
            decisions_timing_out: Throttle::new(WARN_EVERY),
            follow_ups_failing: Throttle::new(WARN_EVERY),
            owed_forgotten: Throttle::new(WARN_EVERY),
            reconnect,
        });
        let never = match (&store.connector, client, tokio::runtime::Handle::try_current()) {
            (Some(connector), Ok(_), Ok(runtime)) => {
                runtime.spawn(keep_connected(Arc::downgrade(&store), connector.clone(), reconnect_requests));
                None
            }
            (_, Err(error), _) => Some(format!("invalid Redis URL: {}", store.scrub(&error.to_string()))),
            (None, Ok(_), _) => Some("cannot set up the Redis Cluster client".to_owned()),
            (Some(_), Ok(_), Err(_)) => Some("no tokio runtime where the store started".to_owned()),
        };
        if let Some(reason) = never {
            tracing::warn!(url = %store.shown_url, %reason, "Redis is never used: rate limits are counted in-process");
            store.set_last_error(Some(reason));
        }
        store
    }

    pub fn config(&self) -> &Redis {
        &self.config
    }

    /// One decision for `key` (e.g. "per_user:alice", any text), counted in Redis when allowed,
    /// within `config.timeout`. It goes out in the next pipeline of the calling worker, along
    /// with the other decisions asked for meanwhile (see `batch`). On one server, a connection-level
    /// failure or an error saying Redis cannot count (see `connection`) drops the connection and
    /// wakes the reconnecting task, and so do [`FAILURES_IN_A_ROW`] failed calls; one timeout or
    /// another error only fails the decisions of that call (on a cluster, always so).
    pub async fn check(&self, key: impl Into<String>, limit: u32, window: Duration) -> Result<Decision, Unavailable> {
        if self.connection.load().is_none() {
            return Err(Unavailable::NotConnected);
        }
        let batcher = &self.workers.get(worker::index()).unwrap_or(&self.workers[0]).batcher;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        // Keys rarely need escaping: then the key itself becomes the tag, not a copy of it.
        let key = key.into();
        let escaped = match hash_tag(&key) {
            Cow::Owned(tag) => Some(tag),
            Cow::Borrowed(_) => None,
        };
        batcher.decide(&self.me, escaped.unwrap_or(key), limit, window_ms, self.config.timeout).await
    }

    /// Decides `batch` in order on the calling worker's connection, with one pipeline (see
    /// `count`), or on a cluster one per key (a pipeline must stay in one hash slot) all at once:
    /// per question a decision, or why none could be made (on a cluster, for the keys of a node
    /// that failed to answer only). `settled` is the worker's. Making the worker's connection and
    /// the calls share one `config.timeout`, so a batch never holds up the worker's queue longer.
    async fn decide_batch(
        &self,
        batch: &[Question],
        settled: &mut SettledCounts,
    ) -> Vec<Result<Decision, Unavailable>> {
        let Some(control) = self.connection.load_full() else {
            return vec![Err(Unavailable::NotConnected); batch.len()];
        };
        let deadline = Instant::now() + self.config.timeout;
        let connection = self.worker_connection(deadline).await.unwrap_or(control);
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        if matches!(*connection, Link::Server(_)) {
            let plan = Plan::new(batch, now_ms, settled);
            let reply = call(&connection, &plan, deadline).await;
            return match self.decide(&connection, batch, &plan, reply, settled) {
                Ok(decisions) => decisions.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error); batch.len()],
            };
        }
        let mut groups: Vec<(Vec<usize>, Vec<Question>)> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (at, question) in batch.iter().enumerate() {
            let group = *group_of.entry(question.tag.as_str()).or_insert_with(|| {
                groups.push((Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[group].0.push(at);
            groups[group].1.push(question.clone());
        }
        let plans: Vec<Plan> = groups.iter().map(|(_, questions)| Plan::new(questions, now_ms, settled)).collect();
        let replies = futures_util::future::join_all(plans.iter().map(|plan| call(&connection, plan, deadline))).await;
        let mut decided = vec![Err(Unavailable::NotConnected); batch.len()];
        for (((at, questions), plan), reply) in groups.iter().zip(&plans).zip(replies) {
            let outcome = self.decide(&connection, questions, plan, reply, settled);
            for (k, &at) in at.iter().enumerate() {
                decided[at] = outcome.as_ref().map(|decisions| decisions[k]).map_err(Clone::clone);
            }
        }
        decided
    }

    /// Reads `batch`'s decisions off the `reply` to `plan`'s call on `connection`, and sends the
    /// follow-ups; or records why the call failed.
    fn decide(
        &self,
        connection: &Arc<Link>,
        batch: &[Question],
        plan: &Plan,
        reply: Reply,
        settled: &mut SettledCounts,
    ) -> Result<Vec<Decision>, Unavailable> {
        let (reply, took) = match reply {
            Reply::Answered(reply, took) => (reply, took),
            Reply::Failed(error) => return Err(self.call_failed(plan, connection, Some(&error))),
            Reply::TimedOut => return Err(self.call_failed(plan, connection, None)),
        };
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        let metrics = &metrics::global().redis;
        metrics.call_time.observe(took.as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        let Some(Outcome { decisions, take_back, to_expire }) = plan.decide(batch, &reply, settled) else {
            // The INCRBYs went through, whatever they answered.
            self.owe_expiries(plan.counters());
            let error = format!("unexpected reply to a batch of {} decisions: {reply:?}", batch.len());
            self.set_last_error(Some(error.clone()));
            return Err(Unavailable::Redis(error));
        };
        self.follow_up(connection.clone(), &take_back, &to_expire);
        Ok(decisions)
    }

    /// Records a call that failed (`error`) or timed out (`None`), whose INCRBYs may have been
    /// applied all the same: its counters are owed their expiry. Condemns `connection` when the
    /// error says Redis cannot count or this is one failure too many.
    fn call_failed(&self, plan: &Plan, connection: &Arc<Link>, error: Option<&RedisError>) -> Unavailable {
        self.owe_expiries(plan.counters());
        let failure = match error {
            Some(error) => Unavailable::Redis(self.scrub(&describe(error))),
            None => Unavailable::TimedOut(self.config.timeout),
        };
        self.set_last_error(Some(match &failure {
            Unavailable::Redis(text) => text.clone(),
            other => other.to_string(),
        }));
        // A cluster connection heals its node connections itself, and a new one needs every node
        // to answer: a failing node only fails its keys' calls, and the probe watches the rest.
        if matches!(**connection, Link::Cluster(_)) {
            return failure;
        }
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= FAILURES_IN_A_ROW || error.is_some_and(condemns) {
            self.drop_connection(connection);
        }
        failure
    }

    /// Sends the DECRBYs and PEXPIREs a decided batch calls for, without waiting: the answers need
    /// not wait for them. When they fail, the expiries are owed (set once Redis answers again); the
    /// denied counts not taken back keep a key's budget spent a little sooner, until the window ends.
    fn follow_up(&self, connection: Arc<Link>, take_back: &[(&str, u64)], to_expire: &[(&str, u64)]) {
        if take_back.is_empty() && to_expire.is_empty() {
            return;
        }
        let take_backs = take_back.iter().map(|&(counter, denied)| (counter, command("DECRBY", counter, denied)));
        let expiries = to_expire.iter().map(|&(counter, ms)| (counter, command("PEXPIRE", counter, ms)));
        let commands = take_backs.chain(expiries).map(|(counter, command)| (counter.to_owned(), command)).collect();
        let expiring: Vec<(String, u64)> = to_expire.iter().map(|&(counter, ms)| (counter.to_owned(), ms)).collect();
        let (store, timeout) = (self.me.clone(), self.config.timeout);
        tokio::spawn(async move {
            let error = match tokio::time::timeout(timeout, connection.exec(commands)).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => Some(error),
                Err(_) => None,
            };
            if let Some(store) = store.upgrade() {
                store.owe_expiries(expiring.iter().map(|(counter, ms)| (counter.as_str(), *ms)));
                store.follow_up_failed(&connection, error.as_ref());
            }
        });
    }

    /// A follow-up failed (`error`) or timed out (`None`): shown in `last_error`, logged once a
    /// minute at most, and an outage when the error says Redis cannot count (the connection task
    /// then warns once).
    fn follow_up_failed(&self, connection: &Arc<Link>, error: Option<&RedisError>) {
        let why = match error {
            Some(error) => self.scrub(&describe(error)),
            None => format!("no answer within {}ms", self.config.timeout.as_millis()),
        };
        self.set_last_error(Some(format!("cannot take back denied counts or set counter expiries: {why}")));
        if error.is_some_and(condemns) && matches!(**connection, Link::Server(_)) {
            self.drop_connection(connection);
        } else if self.follow_ups_failing.allows() {
            // The expiries are owed, and set once Redis answers again.
            tracing::warn!(error = %why, "cannot take back denied counts or set counter expiries (logged once a minute)");
        }
    }

    /// Remembers `counters` as owed their expiry; warns (once a minute at most) when the list is
    /// full and some are forgotten.
    fn owe_expiries<'a>(&self, counters: impl Iterator<Item = (&'a str, u64)>) {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        let before = owed.forgotten();
        counters.for_each(|(counter, expiry_ms)| {
            owed.owe(counter, expiry_ms);
        });
        let forgotten = owed.forgotten();
        drop(owed);
        if forgotten > before && self.owed_forgotten.allows() {
            tracing::warn!(
                forgotten,
                "too many Redis counters owe an expiry: those past the limit may stay without one"
            );
        }
    }

    /// Sets the owed expiries on `connection` (the health check's, once the probe passed), in
    /// pipelines of [`OWED_PER_CALL`]; what fails stays owed for the next check.
    async fn pay_owed_expiries(&self, connection: &Link, patience: Duration) {
        loop {
            let owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner).take(OWED_PER_CALL);
            if owed.is_empty() {
                return;
            }
            let commands =
                owed.iter().map(|(counter, ms)| (counter.clone(), command("PEXPIRE", counter, *ms))).collect();
            let call = connection.patient(patience);
            if !matches!(tokio::time::timeout(patience, call.exec(commands)).await, Ok(Ok(()))) {
                self.owe_expiries(owed.iter().map(|(counter, ms)| (counter.as_str(), *ms)));
                return;
            }
        }
    }

    /// A decision waited its whole `timeout` (see `batch`): logged once a minute at most, as with
    /// a round trip near `timeout` this happens to many decisions while every call is in time.
    fn decision_timed_out(&self) {
        let error = format!(
            "decisions time out after {}ms (each may wait for the call already out, then its own: keep \
             redis.timeout above twice the round trip)",
            self.config.timeout.as_millis()
        );
        if self.decisions_timing_out.allows() {
            tracing::warn!(%error, "Redis decisions time out: deciding them in-process (logged once a minute at most)");
        }
        self.set_last_error(Some(error));
    }

    /// The calling worker's connection, made now if it has none (by `deadline`); `None` off worker
    /// threads or when it cannot be made (the control connection serves then).
    async fn worker_connection(&self, deadline: Instant) -> Option<Arc<Link>> {
        let slot = self.workers.get(worker::index())?;
        if let Some(connection) = slot.connection.load_full() {
            return Some(connection);
        }
        let _connecting = tokio::time::timeout_at(deadline, slot.connecting.lock()).await.ok()?;
        if let Some(connection) = slot.connection.load_full() {
            return Some(connection);
        }
        let connect = self.connector.as_ref()?.connect();
        let connection = Arc::new(tokio::time::timeout_at(deadline, connect).await.ok()?.ok()?);
        slot.connection.store(Some(connection.clone()));
        Some(connection)
    }

    /// For `GET /admin/ratelimit`. `connected` turns false when a call or the probe every second
    /// finds the connection broken or Redis unable to count, and back once a probe passes;
    /// `last_error` is the latest failure since the last connect (`null`: none).
    pub fn status(&self) -> Value {
        let last_error = self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let connected = self.connection.load().is_some();
        json!({ "url": self.shown_url, "cluster": self.config.cluster, "connected": connected, "last_error": last_error })
    }

    /// Condemns `broken` (the control connection or a worker's), unless it was replaced already:
    /// Redis counts as unreachable until the task has reconnected, so every connection goes and
    /// decisions are made in-process meanwhile.
    fn drop_connection(&self, broken: &Arc<Link>) {
        let is = |slot: &ArcSwapOption<Link>| slot.load().as_ref().is_some_and(|c| Arc::ptr_eq(c, broken));
        if !(is(&self.connection) || self.workers.iter().any(|worker| is(&worker.connection))) {
            return;
        }
        self.connection.store(None);
        for worker in self.workers.iter() {
            worker.connection.store(None);
        }
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        // Full: a wake is pending already.
        let _ = self.reconnect.try_send(());
    }

    /// How long a probe may take. Generous: only a server that is gone, not one that is busy,
    /// should cost the connection.
    fn patience(&self) -> Duration {
        self.config.timeout.max(HEALTH_TIMEOUT)
    }

    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .field("timeout", &self.config.timeout)
            .field("connect_timeout", &self.config.connect_timeout)
            .field("connected", &self.connection.load().is_some())
            .finish_non_exhaustive()
    }
}

/// How connections to `config` are made with `client` (its URL parsed): a cluster client through
/// that node when `config.cluster`; `None` if one cannot be set up.
fn connector(config: &Redis, client: &Client, certificates: Option<TlsCertificates>) -> Option<Connector> {
    if !config.cluster {
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout));
        return Some(Connector::Server(client.clone(), settings));
    }
    let mut builder = ClusterClient::builder([client.get_connection_info().clone()])
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.timeout);
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates);
    }
    builder.build().ok().map(Connector::Cluster)
}

/// What came of one call.
enum Reply {
    /// The reply, and how long it took.
    Answered(Vec<redis::Value>, Duration),
    Failed(RedisError),
    TimedOut,
}

/// Sends `plan`'s pipeline on `connection` and waits for the reply until `deadline`.
async fn call(connection: &Link, plan: &Plan, deadline: Instant) -> Reply {
    let sent = Instant::now();
    let mut link = connection.clone();
    match tokio::time::timeout_at(deadline, plan.pipeline().query_async(&mut link)).await {
        Ok(Ok(reply)) => Reply::Answered(reply, sent.elapsed()),
        Ok(Err(error)) if !error.is_timeout() => Reply::Failed(error),
        Ok(Err(_)) | Err(_) => Reply::TimedOut,
    }
}

/// `name counter n`, e.g. `PEXPIRE gw:rl:{..}:7 120000`.
fn command(name: &str, counter: &str, n: u64) -> redis::Cmd {
    let mut command = redis::cmd(name);
    command.arg(counter).arg(n);
    command
}

/// `key` as it goes inside the `{..}` hash tag: `%`, `{` and `}` percent-encoded, so a `}` cannot
/// end the tag early and distinct keys stay distinct. The empty key becomes `%` (which no encoding
/// yields): an empty tag `{}` would hash the whole name and split a key's two counters across slots.
fn hash_tag(key: &str) -> Cow<'_, str> {
    if key.is_empty() {
        return Cow::Borrowed("%");
    }
    if !key.contains(['%', '{', '}']) {
        return Cow::Borrowed(key);
    }
    let mut tag = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    Cow::Owned(tag)
}

/// Where the user information of `url` ends: its last `@` (a password may hold `@`, `/` or `?`
/// unencoded; cutting at the last `@` redacts too much rather than too little).
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = start + url[start..].rfind('@')?;
    Some((start, end))
}

/// The password in `user:password@`, as written.
fn password_in_url(url: &str) -> Option<&str> {
    let (start, end) = userinfo(url)?;
    url[start..end].split_once(':').map(|(_, password)| password)
}

/// `url` with the password of `user:password@` and of `?pass=` (unix sockets) replaced by `***`.
fn redact_url(url: &str) -> String {
    let mut shown = match userinfo(url) {
        Some((start, end)) => match url[start..end].find(':') {
            Some(colon) => format!("{}***{}", &url[..start + colon + 1], &url[end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    if let Some(query) = shown.find('?') {
        let params: Vec<String> = shown[query + 1..]
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name == "pass" || name == "password" => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        shown = format!("{}?{}", &shown[..query], params.join("&"));
    }
    shown
}

mod batch;
mod connection;
mod count;
#[cfg(test)]
mod tests;

use redis::aio::MultiplexedConnection;

use super::*;
use e2e::eventually;
use e2e::redis::RedisServer;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Bound for "did not hang": far above any timeout configured here.
const HANG: Duration = Duration::from_secs(10);

fn config(url: &str) -> Redis {
    Redis {
        url: url.to_owned(),
        ca: None,
        cluster: false,
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
    }
}

/// How many times the server has run `command` for the decisions since its stats were last reset:
/// the probe every second (see `probe`) runs INCRBY, PEXPIRE, DECRBY and MGET once each, and is
/// not counted. Only for tests where nothing is denied, so DECRBY is the probe's alone.
async fn calls(connection: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(connection).await.unwrap();
    let count = |command: &str| {
        let line = info.lines().find(|line| line.starts_with(&format!("cmdstat_{command}:")));
        line.and_then(|line| line.split(['=', ',']).nth(1)?.parse::<u64>().ok()).unwrap_or(0)
    };
    count(command) - count("decrby")
}

/// The counter's expiry in ms, once it has one (it is set right after the call that created it).
async fn expiry_ms(admin: &MultiplexedConnection, counter: &str) -> i64 {
    let ttl = || async {
        let mut admin = admin.clone();
        redis::cmd("PTTL").arg(counter).query_async::<i64>(&mut admin).await.unwrap()
    };
    eventually("the counter has an expiry", || async { ttl().await > 0 }).await;
    ttl().await
}

/// A fresh server, and a store (one worker) connected to it.
async fn connected_store() -> (RedisServer, Arc<RedisStore>) {
    let server = RedisServer::start();
    let store = RedisStore::start(&config(&server.url()), 1);
    connected(&store).await;
    (server, store)
}

/// A connection of the test's own to `server`, to set it up and look inside.
async fn admin(server: &RedisServer) -> MultiplexedConnection {
    Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn connected(store: &RedisStore) {
    eventually("connected", || async { store.status()["connected"] == true }).await;
}

#[test]
fn slot_tag_is_what_redis_hashes_for_the_slot() {
    use super::connection::slot_tag;
    assert_eq!(slot_tag("gw:rl:{per_user:alice}:42"), "per_user:alice");
    assert_eq!(slot_tag("gw:rl:{a}{b}:1"), "a", "the first tag");
    assert_eq!(slot_tag("gw:rl:{}:1"), "gw:rl:{}:1", "an empty tag hashes the whole key");
    assert_eq!(slot_tag("gw:rl:probe"), "gw:rl:probe");
    assert_eq!(slot_tag("gw:rl:{open"), "gw:rl:{open");
}

#[test]
fn hash_tag_encodes_braces_and_percent_only() {
    assert_eq!(hash_tag("per_user:alice"), "per_user:alice");
    assert!(matches!(hash_tag("per_user:alice"), Cow::Borrowed(_)));
    assert_eq!(hash_tag("a}b{c%d"), "a%7Db%7Bc%25d");
    assert_eq!(hash_tag("x%7D"), "x%257D");
    assert_ne!(hash_tag("x}"), hash_tag("x%7D"));
    assert_eq!(hash_tag(""), "%");
}

#[test]
fn redact_url_hides_passwords() {
    assert_eq!(redact_url("redis://:s3cret@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
    assert_eq!(redact_url("rediss://user:p%40ss@host:6380"), "rediss://user:***@host:6380");
    assert_eq!(redact_url("redis://user:a@b/c@host"), "redis://user:***@host");
    assert_eq!(redact_url("redis://user@host"), "redis://user@host");
    assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    assert_eq!(
        redact_url("redis+unix:///run/redis.sock?db=1&pass=secret"),
        "redis+unix:///run/redis.sock?db=1&pass=***"
    );
    assert_eq!(password_in_url("redis://user:a@b/c@host"), Some("a@b/c"));
    assert_eq!(password_in_url("redis://host"), None);
}

#[test]
fn start_without_runtime_never_connects() {
    let store = RedisStore::start(&config("redis://:pw123@127.0.0.1:1"), 1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let outcome = runtime.block_on(store.check("k", 1, MINUTE));
    assert_eq!(outcome, Err(Unavailable::NotConnected));
    let status = store.status();
    assert_eq!(status["connected"], false);
    assert!(status["last_error"].as_str().unwrap().contains("no tokio runtime"));
    assert!(!format!("{status} {store:?}").contains("pw123"));
}

#[tokio::test]
async fn start_invalid_url_reports_why() {
    let store = RedisStore::start(&config("http://:pw123@host"), 1);
    assert_eq!(store.check("k", 1, MINUTE).await, Err(Unavailable::NotConnected));
    let last_error = store.status()["last_error"].as_str().unwrap().to_owned();
    assert!(last_error.contains("invalid Redis URL"), "{last_error}");
    assert!(!last_error.contains("pw123"));
}

#[tokio::test]
async fn check_allows_up_to_limit_then_denies() {
    let (_server, store) = connected_store().await;
    for remaining in [2, 1, 0] {
        let decision = store.check("per_user:alice", 3, MINUTE).await.unwrap();
        assert!(decision.allowed);
        assert_eq!((decision.limit, decision.remaining), (3, remaining));
    }
    let denied = store.check("per_user:alice", 3, MINUTE).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert!(denied.retry_after > Duration::ZERO);
    assert!(denied.retry_after <= 2 * MINUTE);
    assert!(store.check("per_user:bob", 3, MINUTE).await.unwrap().allowed);
}

#[tokio::test]
async fn check_two_stores_share_a_budget() {
    let server = RedisServer::start();
    let (one, two) = (RedisStore::start(&config(&server.url()), 1), RedisStore::start(&config(&server.url()), 1));
    connected(&one).await;
    connected(&two).await;
    for store in [&one, &two, &one, &two] {
        assert!(store.check("shared", 4, MINUTE).await.unwrap().allowed);
    }
    assert!(!one.check("shared", 4, MINUTE).await.unwrap().allowed);
    assert!(!two.check("shared", 4, MINUTE).await.unwrap().allowed);
}

#[tokio::test]
async fn check_keys_with_braces_stay_distinct() {
    let (_server, store) = connected_store().await;
    for key in ["jwt:}", "jwt:%7D", "jwt:{", "jwt:", ""] {
        assert!(store.check(key, 1, MINUTE).await.unwrap().allowed, "{key:?}");
    }
    assert!(!store.check("jwt:}", 1, MINUTE).await.unwrap().allowed);
}

#[tokio::test]
async fn check_server_killed_unavailable_then_reconnects() {
    let mut server = RedisServer::start();
    let store = RedisStore::start(&config(&server.url()), 1);
    connected(&store).await;
    assert!(store.check("k", 100, MINUTE).await.is_ok());

    server.stop();
    let outcome = tokio::time::timeout(HANG, store.check("k", 100, MINUTE)).await.expect("check hung");
    assert!(outcome.is_err(), "{outcome:?}");
    let outcome = tokio::time::timeout(HANG, store.check("k", 100, MINUTE)).await.expect("check hung");
    assert!(outcome.is_err(), "{outcome:?}");
    eventually("disconnected", || async { store.status()["connected"] == false }).await;
    assert!(store.status()["last_error"].is_string());

    server.restart();
    eventually("checks succeed again", || async { store.check("k", 100, MINUTE).await.is_ok() }).await;
    assert_eq!(store.status()["last_error"], Value::Null);
}

#[tokio::test]
async fn check_slow_server_times_out_and_keeps_connection() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL").query_async::<()>(&mut admin).await.unwrap();

    let outcome = tokio::time::timeout(HANG, store.check("k", 5, MINUTE)).await.expect("check hung");
    assert_eq!(outcome, Err(Unavailable::TimedOut(Duration::from_millis(200))));
    assert_eq!(store.status()["connected"], true);
    eventually("checks succeed after the pause", || async { store.check("k", 5, MINUTE).await.is_ok() }).await;
}

#[tokio::test]
async fn check_timeouts_in_a_row_drop_connection_then_reconnects() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd("CLIENT").arg("PAUSE").arg(2000).arg("ALL").query_async::<()>(&mut admin).await.unwrap();

    for _ in 0..FAILURES_IN_A_ROW {
        let outcome = tokio::time::timeout(HANG, store.check("k", 5, MINUTE)).await.expect("check hung");
        assert_eq!(outcome, Err(Unavailable::TimedOut(Duration::from_millis(200))));
    }
    // The askers are answered at their deadline, the call's own timeout fires just after.
    eventually("connection condemned", || async { store.status()["connected"] == false }).await;
    assert_eq!(store.check("k", 5, MINUTE).await, Err(Unavailable::NotConnected));
    eventually("checks succeed after the pause", || async { store.check("k", 5, MINUTE).await.is_ok() }).await;
}

#[tokio::test]
async fn check_batches_concurrent_decisions_into_few_calls() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut admin).await.unwrap();

    // 600 decisions asked at once on one worker, over two keys with budgets of their own; the
    // queue holds more than one call's worth, and the same key comes many times in one call.
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..600 {
        let (key, limit) = if i % 3 == 0 { ("few", 40) } else { ("many", 150) };
        let store = Arc::clone(&store);
        asks.spawn(async move { (i, key, store.check(key, limit, MINUTE).await.unwrap()) });
    }
    let mut decisions: Vec<_> = asks.join_all().await;
    // In the order asked (this runtime runs the tasks in the order spawned).
    decisions.sort_by_key(|(i, _, _)| *i);
    for (key, limit, asked) in [("few", 40, 200), ("many", 150, 400)] {
        let mine: Vec<Decision> = decisions.iter().filter(|(_, k, _)| *k == key).map(|(_, _, d)| *d).collect();
        assert_eq!(mine.len(), asked);
        let allowed: Vec<u32> = mine.iter().filter(|d| d.allowed).map(|d| d.remaining).collect();
        // Exactly the budget allowed, each seeing the count its predecessors left.
        let expected: Vec<u32> = (0..limit).rev().collect();
        assert_eq!(allowed, expected, "{key}");
        assert!(mine.iter().filter(|d| !d.allowed).all(|d| d.remaining == 0 && d.retry_after > Duration::ZERO));
    }
    // A call adds to each of its keys once: one INCRBY per key and call.
    // Denials here: DECRBY is not the probe's alone, and a probe or two more is within the bounds.
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await.unwrap();
    let line = info.lines().find(|line| line.starts_with("cmdstat_incrby:")).unwrap();
    let increments: u64 = line.split(['=', ',']).nth(1).unwrap().parse().unwrap();
    assert!((2..=12).contains(&increments), "600 decisions took {increments} INCRBYs");
    // Each call is in /metrics, with the decisions it carried.
    let text = metrics::global().render(&metrics::Readings::default());
    let sum = |name: &str| {
        let line = text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    assert!(sum("gateway_redis_batch_decisions_sum") >= 600.0, "{text}");
    assert!(sum("gateway_redis_call_seconds_count") >= increments as f64 / 2.0, "{text}");
    // What the denied ones added is taken back.
    let few = only_counter(&mut admin, "few").await;
    eventually("denied counts taken back", || {
        let mut admin = admin.clone();
        let few = few.clone();
        async move { redis::cmd("GET").arg(few).query_async::<u64>(&mut admin).await.unwrap() == 40 }
    })
    .await;
}

#[tokio::test]
async fn check_given_up_while_queued_is_not_counted() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    // Well past the 200 ms timeout, so the first call times out even if it goes out late; short of
    // the three timed-out calls in a row (this one and the polls below) that drop the connection,
    // and with it the call still queued in Redis.
    redis::cmd("CLIENT").arg("PAUSE").arg(500).arg("WRITE").query_async::<()>(&mut admin).await.unwrap();

    // The first call times out in the pause; the second decision is asked meanwhile and its asker
    // leaves before that call returns.
    let first = store.check("k", 5, MINUTE);
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_millis(10), store.check("k", 5, MINUTE)).await
    };
    let (first, second) = tokio::join!(first, second);
    assert!(second.is_err(), "the second asker gave up");
    assert_eq!(first, Err(Unavailable::TimedOut(Duration::from_millis(200))));
    eventually("the pause is over", || async { store.check("other", 5, MINUTE).await.is_ok() }).await;
    let counted: u64 =
        redis::cmd("GET").arg(only_counter(&mut admin, "k").await).query_async(&mut admin).await.unwrap();
    assert_eq!(counted, 1, "only the first call counts");
}

#[test]
fn check_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let store = RedisStore::start(&config("redis://127.0.0.1:1"), 1);
    assert_send(&store.check("k", 1, MINUTE));
}

#[tokio::test]
async fn status_redacts_password() {
    let server = RedisServer::with_password("s3cret-pw");
    let store = RedisStore::start(&config(&server.url()), 1);
    connected(&store).await;
    let status = store.status();
    assert_eq!(status["url"], format!("redis://:***@127.0.0.1:{}", server.port()));
    assert!(!format!("{status} {store:?}").contains("s3cret"));
    assert!(store.check("k", 1, MINUTE).await.unwrap().allowed);

    let wrong = RedisStore::start(&config(&format!("redis://:wrong-pw@127.0.0.1:{}", server.port())), 1);
    eventually("auth failure reported", || async { wrong.status()["last_error"].is_string() }).await;
    let status = wrong.status();
    assert_eq!(status["connected"], false);
    assert!(!status.to_string().contains("wrong-pw"), "{status}");
    assert_eq!(wrong.check("k", 1, MINUTE).await, Err(Unavailable::NotConnected));
}

#[test]
fn check_works_from_another_runtime() {
    let server = RedisServer::start();
    let home = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let store = home.block_on(async {
        let store = RedisStore::start(&config(&server.url()), 1);
        connected(&store).await;
        store
    });
    let worker = Arc::clone(&store);
    let decision = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(worker.check("k", 2, MINUTE))
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(decision.allowed);
    assert_eq!(decision.remaining, 1);
}

#[tokio::test]
async fn start_task_ends_when_store_dropped() {
    let server = RedisServer::start();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let store = RedisStore::start(&config(&server.url()), 1);
    connected(&store).await;
    assert!(metrics.num_alive_tasks() > before);
    let weak = Arc::downgrade(&store);
    drop(store);
    assert_eq!(weak.strong_count(), 0, "the task holds no strong reference while it waits");
    eventually("tasks gone", || async { metrics.num_alive_tasks() == before }).await;
}

#[tokio::test]
async fn start_task_ends_when_store_dropped_while_backing_off() {
    let port = RedisServer::start().port(); // stopped at once: nothing listens there
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let store = RedisStore::start(&config(&format!("redis://127.0.0.1:{port}")), 1);
    eventually("connect failure reported", || async { store.status()["last_error"].is_string() }).await;
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    let weak = Arc::downgrade(&store);
    drop(store);
    assert_eq!(weak.strong_count(), 0, "the task holds no strong reference while it waits");
    eventually("task gone", || async { metrics.num_alive_tasks() == before }).await;
}

#[tokio::test]
async fn check_counts_previous_window_and_expires_after_two_windows() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    assert!(store.check("e", 5, HOUR).await.unwrap().allowed);
    let current = only_counter(&mut admin, "e").await;
    let ttl = expiry_ms(&admin, &current).await;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");

    // The previous window's count weighs on this one: a huge one leaves no room (until the last
    // milliseconds of the hour, when it has faded to almost nothing). Set for another key, as
    // `e`'s may be remembered already.
    let previous = previous_counter(&current).replace("{e}", "{f}");
    redis::cmd("SET").arg(&previous).arg(1_000_000).query_async::<()>(&mut admin).await.unwrap();
    let denied = store.check("f", 5, HOUR).await.unwrap();
    assert!(!denied.allowed && denied.retry_after > Duration::ZERO, "{denied:?}");
}

#[tokio::test]
async fn check_reads_a_settled_previous_count_once_per_window() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    // Past the first seconds of the hour, when the previous hour's counters have settled.
    let into_hour = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() % 3_600_000;
    if into_hour < 2_000 {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut admin).await.unwrap();
    assert!(store.check("s", 5, HOUR).await.unwrap().allowed);
    let previous = previous_counter(&only_counter(&mut admin, "s").await);

    // Counted after it settled, so not seen: the count read first stands for the rest of the hour.
    redis::cmd("SET").arg(&previous).arg(1_000_000).query_async::<()>(&mut admin).await.unwrap();
    let decision = store.check("s", 5, HOUR).await.unwrap();
    assert!(decision.allowed && decision.remaining == 3, "{decision:?}");
    assert_eq!(calls(&mut admin, "mget").await, 1, "one read of the previous count");
    assert_eq!(calls(&mut admin, "incrby").await, 2);
}

/// The counter before `counter` (`gw:rl:{<tag>}:<index>`) of the same key.
fn previous_counter(counter: &str) -> String {
    let (prefix, index) = counter.rsplit_once(':').unwrap();
    format!("{prefix}:{}", index.parse::<u64>().unwrap() - 1)
}

/// The one counter of `key` (it must have exactly one).
async fn only_counter(admin: &mut MultiplexedConnection, key: &str) -> String {
    let mut counters: Vec<String> =
        redis::cmd("KEYS").arg(format!("gw:rl:{{{key}}}:*")).query_async(admin).await.unwrap();
    assert_eq!(counters.len(), 1, "{counters:?}");
    counters.remove(0)
}

#[tokio::test]
async fn check_sets_an_expiry_once_per_counter_and_again_when_it_was_lost() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut admin).await.unwrap();
    for _ in 0..5 {
        assert!(store.check("x", 100, HOUR).await.unwrap().allowed);
    }
    let counter = only_counter(&mut admin, "x").await;
    let ttl = expiry_ms(&admin, &counter).await;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");
    assert_eq!(calls(&mut admin, "pexpire").await, 1, "only the call that created the counter sets its expiry");

    // Gone (as under `maxmemory` eviction or a FLUSHALL): the next call creates it anew, and it
    // gets an expiry again instead of living forever.
    redis::cmd("DEL").arg(&counter).query_async::<()>(&mut admin).await.unwrap();
    assert!(store.check("x", 100, HOUR).await.unwrap().allowed);
    let ttl = expiry_ms(&admin, &counter).await;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");
    assert_eq!(calls(&mut admin, "pexpire").await, 2);
}

/// A call that times out may still be counted (here after the pause): its counter gets its
/// expiry once Redis answers again, though the reply that would have set it never came.
#[tokio::test]
async fn check_timed_out_call_counter_gets_its_expiry_once_redis_answers() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd("CLIENT").arg("PAUSE").arg(500).arg("WRITE").query_async::<()>(&mut admin).await.unwrap();

    assert_eq!(store.check("t", 5, HOUR).await, Err(Unavailable::TimedOut(Duration::from_millis(200))));
    eventually("the INCRBY applied after the pause", || {
        let mut admin = admin.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg("gw:rl:{t}:*").query_async(&mut admin).await.unwrap();
            keys.len() == 1
        }
    })
    .await;
    let counter = only_counter(&mut admin, "t").await;
    let ttl = expiry_ms(&admin, &counter).await;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");
}

async fn acl_default_user(admin: &mut MultiplexedConnection, rule: &str) {
    redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).query_async::<()>(admin).await.unwrap();
}

/// A Redis that counts but refuses the expiry after is an outage (reported, not one warning per
/// batch); the counter left without expiry gets it once Redis can count again.
#[tokio::test]
async fn check_expiry_refused_is_an_outage_and_the_expiry_is_set_after() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    acl_default_user(&mut admin, "-pexpire").await;

    assert!(store.check("p", 5, HOUR).await.unwrap().allowed);
    eventually("an outage", || async { store.status()["connected"] == false }).await;
    let last_error = store.status()["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last_error.contains("NOPERM"), "{last_error}");
    assert_eq!(store.check("p", 5, HOUR).await, Err(Unavailable::NotConnected));
    let counter = only_counter(&mut admin, "p").await;
    let ttl: i64 = redis::cmd("PTTL").arg(&counter).query_async(&mut admin).await.unwrap();
    assert_eq!(ttl, -1, "refused");

    acl_default_user(&mut admin, "+pexpire").await;
    connected(&store).await;
    let ttl = expiry_ms(&admin, &counter).await;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");
    assert_eq!(store.check("p", 5, HOUR).await.unwrap().remaining, 3);
}

/// Puts `server` in a state where it cannot count (`refuse`), checks that a decision then finds
/// an outage naming `code` and no more decisions go to Redis, and that `repair` ends it.
async fn assert_outage_until_repaired(refuse: &[&str], code: &str, repair: &[&str]) {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    redis::cmd(refuse[0]).arg(&refuse[1..]).query_async::<()>(&mut admin).await.unwrap();

    assert!(store.check("k", 5, HOUR).await.is_err());
    eventually("an outage", || async { store.status()["connected"] == false }).await;
    let last_error = store.status()["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last_error.contains(code), "{last_error}");
    assert_eq!(store.check("k", 5, HOUR).await, Err(Unavailable::NotConnected));

    redis::cmd(repair[0]).arg(&repair[1..]).query_async::<()>(&mut admin).await.unwrap();
    connected(&store).await;
    assert!(store.check("k", 5, HOUR).await.unwrap().allowed);
    assert_eq!(store.status()["last_error"], Value::Null);
}

#[tokio::test]
async fn check_read_only_replica_is_an_outage_until_it_can_count() {
    let nowhere = RedisServer::start().port(); // stopped at once: the master is never reached
    let nowhere = nowhere.to_string();
    assert_outage_until_repaired(&["REPLICAOF", "127.0.0.1", &nowhere], "READONLY", &["REPLICAOF", "NO", "ONE"]).await;
}

#[tokio::test]
async fn check_out_of_memory_is_an_outage_until_it_can_count() {
    let refuse = ["CONFIG", "SET", "maxmemory", "1"];
    assert_outage_until_repaired(&refuse, "OOM", &["CONFIG", "SET", "maxmemory", "0"]).await;
}

/// Without the password the server requires, connections are made but cannot count: never
/// reported connected (it used to flap between connected and lost).
#[tokio::test]
async fn start_without_the_required_password_is_never_connected() {
    let server = RedisServer::with_password("needed-pw");
    let store = RedisStore::start(&config(&format!("redis://127.0.0.1:{}", server.port())), 1);
    let reported = || store.status()["last_error"].as_str().is_some_and(|error| error.contains("NOAUTH"));
    eventually("NOAUTH reported", || async {
        assert_eq!(store.status()["connected"], false);
        reported()
    })
    .await;
    // Two probes' worth of attempts.
    let until = tokio::time::Instant::now() + 2 * connection::HEALTH_INTERVAL;
    while tokio::time::Instant::now() < until {
        assert_eq!(store.status()["connected"], false);
        assert_eq!(store.check("k", 1, MINUTE).await, Err(Unavailable::NotConnected));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reported(), "{}", store.status());
}

/// The process id of the server behind `admin`.
async fn server_pid(admin: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query_async(admin).await.unwrap();
    info.lines().find_map(|line| line.strip_prefix("process_id:")).unwrap().trim().to_owned()
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid).status().unwrap();
    assert!(status.success());
}

/// A decision asked while its worker is busy making its connection and calling waits `timeout`
/// at most: it used to wait for the batch before it to end, up to twice that. On a paused clock:
/// Redis is stopped (it accepts connections but answers nothing), so the clock jumps from timer
/// to timer.
#[tokio::test]
async fn check_queued_behind_a_slow_batch_waits_no_longer_than_timeout() {
    let (server, store) = connected_store().await;
    let mut admin = admin(&server).await;
    // The worker has no connection yet: its first batch makes one, then calls.
    let pid = server_pid(&mut admin).await;
    signal(&pid, "STOP");
    tokio::time::pause();
    let timeout = Duration::from_millis(200);

    let first = store.check("q", 5, MINUTE);
    let second = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let asked = tokio::time::Instant::now();
        (store.check("q", 5, MINUTE).await, asked.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(first, second);
    signal(&pid, "CONT");
    assert_eq!(first, Err(Unavailable::TimedOut(timeout)));
    assert_eq!(second, Err(Unavailable::TimedOut(timeout)));
    // The timer's resolution is a millisecond.
    assert!(waited <= timeout + Duration::from_millis(1), "waited {waited:?}");
}

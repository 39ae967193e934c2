//! Faults against a real redis-server, counted: a killed server fails every call in
//! flight exactly once and each dead connection closes once, then the pool refills
//! after a restart on the same port; `CLIENT KILL` of one connection fails only that
//! connection's calls; a command that outlives its timeout leaves the connection open
//! and its late reply is dropped, never handed to the next call.
//!
//! (A reply over `RespLimits::max_bulk_length` is covered in `redis_commands.rs`.)

mod redis_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use bytes::Bytes;
use redis_support::RedisServer;
use switchboard::protocol::resp::{Command, Redis, RedisError, RespConnector, RespProtocol, Value};
use switchboard::transport::{Connector, TcpConnector};
use switchboard::{
    Call, CallError, CloseReason, Connection, ConnectionConfig, ConnectionEvent, ConnectionId,
    GetStats, Pool, PoolConfig, PoolHandle,
};
use tokio::sync::mpsc;

type Handle = PoolHandle<RespConnector<TcpConnector>, RespProtocol>;

/// Bounds every single wait (a reply, a refill, a restart).
const WAIT: Duration = Duration::from_secs(15);

/// The pool's reconnect backoff ceiling; a restarted server is served again within
/// this plus [`SLACK`].
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Margin for a noisy machine on top of any configured delay.
const SLACK: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// Keeps every [`ConnectionEvent`] the pool forwards.
#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Vec<ConnectionEvent>>>);

impl Actor for EventLog {
    type Context = Context<Self>;
}

impl Handler<ConnectionEvent> for EventLog {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(event);
    }
}

impl EventLog {
    /// How many times each connection reported `Connected`, and each `Closed` reason.
    fn lives(
        &self,
    ) -> (
        BTreeMap<ConnectionId, usize>,
        BTreeMap<ConnectionId, Vec<CloseReason>>,
    ) {
        let mut connected = BTreeMap::new();
        let mut closed: BTreeMap<ConnectionId, Vec<CloseReason>> = BTreeMap::new();
        for event in self.0.lock().unwrap().iter() {
            match event {
                ConnectionEvent::Connected { id, .. } => *connected.entry(*id).or_default() += 1,
                ConnectionEvent::Closed { id, reason } => {
                    closed.entry(*id).or_default().push(reason.clone())
                }
                _ => {}
            }
        }
        (connected, closed)
    }
}

/// A pool of exactly `size` connections to `server` (opened up front), with a short
/// reconnect backoff and a call timeout long enough that only faults end calls.
fn pool(server: &RedisServer, size: usize, events: Option<&EventLog>) -> Handle {
    let config = PoolConfig::builder()
        .min_idle(size)
        .max_size(size)
        .checkout_timeout(WAIT)
        .backoff_base(Duration::from_millis(20))
        .backoff_max(BACKOFF_MAX)
        .build()
        .unwrap();
    let connection = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut builder = Pool::builder(RespConnector::new(TcpConnector::new()), RespProtocol::new())
        .config(config)
        .connection(connection)
        .authority(server.authority());
    if let Some(events) = events {
        builder = builder.events(events.clone().start().recipient());
    }
    builder.start()
}

/// Waits until the pool holds `size` open connections, and returns their ids.
async fn full(pool: &Handle, server: &RedisServer, size: usize) -> Vec<ConnectionId> {
    within("the pool fills up", async {
        loop {
            let status = pool.status().await.unwrap();
            if let Some(authority) = status.authority(&server.authority()) {
                if authority.size == size && authority.connections.len() == size {
                    return authority.connections.iter().map(|c| c.id).collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends `DEBUG SLEEP <seconds>` on a connection of its own and returns once redis
/// sleeps (a PING on another connection goes unanswered for a second): redis runs
/// commands one at a time, so every client stalls meanwhile. The sleep has begun
/// before this returns, so no command sent afterwards is answered during it.
fn stall(server: &RedisServer, seconds: u32) -> TcpStream {
    let seconds = seconds.to_string();
    let mut sleeper = TcpStream::connect(server.addr()).unwrap();
    let command = format!(
        "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{seconds}\r\n",
        seconds.len()
    );
    sleeper.write_all(command.as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "redis never slept");
        let mut probe = TcpStream::connect(server.addr()).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        probe.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut pong = [0; 7];
        match probe.read_exact(&mut pong) {
            Ok(()) => std::thread::sleep(Duration::from_millis(20)),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return sleeper
            }
            Err(error) => panic!("probing redis: {error}"),
        }
    }
}

type RedisConnection = Connection<<TcpConnector as Connector>::Io, RespProtocol>;

/// A `BLPOP list 0` (it blocks only this redis client) with ten `INCR counter`s
/// pipelined behind it on the same connection; the task yields every outcome, in order.
fn blocked_pipeline(
    addr: &Addr<RedisConnection>,
    list: &'static str,
    counter: &'static str,
) -> tokio::task::JoinHandle<Vec<Result<Value, CallError>>> {
    let blpop = addr.send(Call::new(Command::new("BLPOP").arg(list).arg(0)));
    let incrs: Vec<_> = (0..10)
        .map(|_| addr.send(Call::new(Command::incr(counter))))
        .collect();
    actix::spawn(async move {
        let mut outcomes = vec![blpop.await.unwrap()];
        for incr in incrs {
            outcomes.push(incr.await.unwrap());
        }
        outcomes
    })
}

/// Whether `error` says the connection broke under the call (not redis's answer, not
/// a timeout).
fn connection_lost(error: &RedisError) -> bool {
    matches!(
        error,
        RedisError::Call(CallError::Closed(
            CloseReason::PeerClosed | CloseReason::Io(_)
        ))
    )
}

#[actix::test]
async fn a_killed_server_fails_each_call_in_flight_once_then_the_pool_refills() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    const SIZE: usize = 4;
    const CALLERS: usize = 32;
    let events = EventLog::default();
    let pool = pool(&server, SIZE, Some(&events));
    let redis = Redis::new(pool.clone(), server.authority());
    let first = full(&pool, &server, SIZE).await;
    within("a first command", redis.ping()).await.unwrap();

    // Redis sleeps, so none of the callers' INCRs is answered; each caller reports
    // every outcome of its future on the channel (a future resolves once: a second
    // report, or a missing one, shows up in the count).
    let _sleeper = stall(&server, 30);
    let (outcomes, mut reports) = mpsc::unbounded_channel();
    for n in 0..CALLERS {
        let redis = redis.clone();
        let outcomes = outcomes.clone();
        actix::spawn(async move {
            let _ = outcomes.send((n, redis.incr(format!("counter:{n}")).await));
        });
    }
    drop(outcomes);
    // All of them written and waiting on the pool's connections.
    within("every call in flight", async {
        loop {
            let status = pool.status().await.unwrap();
            let in_flight: usize = status.authorities[0]
                .connections
                .iter()
                .map(|c| c.in_flight)
                .sum();
            if in_flight >= CALLERS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    server.kill();

    let mut failed = BTreeMap::new();
    while let Some((n, outcome)) = within("each caller resolves", reports.recv()).await {
        let error = outcome.expect_err("no reply came from a sleeping, killed server");
        assert!(connection_lost(&error), "caller {n}: {error:?}");
        *failed.entry(n).or_insert(0) += 1;
    }
    assert_eq!(failed.len(), CALLERS, "every caller got an error");
    assert!(failed.values().all(|&count| count == 1), "{failed:?}");

    // Each dead connection closed exactly once, for a broken transport.
    within("the dead connections report closed", async {
        loop {
            let (_, closed) = events.lives();
            if first.iter().all(|id| closed.contains_key(id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    server.restart();
    let restarted = tokio::time::Instant::now();
    tokio::time::timeout(BACKOFF_MAX + SLACK, async {
        loop {
            match redis.incr("after").await {
                Ok(count) => {
                    assert_eq!(count, 1, "the restarted server starts empty");
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not served within {:?}", BACKOFF_MAX + SLACK));
    let served_after = restarted.elapsed();

    let second = full(&pool, &server, SIZE).await;
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "all new connections: {first:?} then {second:?}"
    );
    let (connected, closed) = events.lives();
    for id in &first {
        assert_eq!(
            connected.get(id),
            Some(&1),
            "connection {id:?} connected once"
        );
        let reasons = &closed[id];
        assert_eq!(
            reasons.len(),
            1,
            "connection {id:?} closed once: {reasons:?}"
        );
        assert!(
            matches!(reasons[0], CloseReason::PeerClosed | CloseReason::Io(_)),
            "{reasons:?}"
        );
    }
    for id in &second {
        assert_eq!(
            connected.get(id),
            Some(&1),
            "connection {id:?} connected once"
        );
        assert!(!closed.contains_key(id), "connection {id:?} is open");
    }
    let status = pool.status().await.unwrap();
    assert_eq!(status.connections, SIZE);
    assert_eq!(
        status.counters.created,
        2 * SIZE as u64,
        "{:?}",
        status.counters
    );
    let closed_total: u64 = status.counters.closed.values().sum();
    assert_eq!(closed_total, SIZE as u64, "{:?}", status.counters.closed);
    eprintln!("served again {served_after:?} after the restart");
}

#[actix::test]
async fn client_kill_fails_only_that_connections_calls() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let events = EventLog::default();
    let pool = pool(&server, 3, Some(&events));
    full(&pool, &server, 3).await;
    let authority = server.authority();

    // Three leases: the pool's three connections, each asked its redis client id.
    let mut leases = Vec::new();
    let mut client_ids = Vec::new();
    for _ in 0..3 {
        let lease = within("checkout", pool.checkout(&authority)).await.unwrap();
        let id = within("CLIENT ID", lease.call(Command::new("CLIENT").arg("ID")))
            .await
            .unwrap()
            .as_integer()
            .expect("CLIENT ID is an integer");
        leases.push(lease);
        client_ids.push(id);
    }
    let [victim, bystander, quiet] = <[_; 3]>::try_from(leases).ok().unwrap();

    // On the victim and the bystander: a BLPOP that blocks only its own client, with
    // a pipeline of INCRs queued behind it.
    // On the victim and the bystander: a BLPOP blocked on an empty list, with a
    // pipeline of INCRs queued behind it.
    let victim_calls = blocked_pipeline(victim.addr(), "victim:list", "victim:count");
    let bystander_calls = blocked_pipeline(bystander.addr(), "bystander:list", "bystander:count");
    within("both BLPOPs blocked", async {
        while server
            .command(&["CLIENT", "LIST"])
            .matches("cmd=blpop")
            .count()
            != 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let killed = server.command(&["CLIENT", "KILL", "ID", &client_ids[0].to_string()]);
    assert_eq!(killed, ":1\r\n");

    // Every call on the victim fails once, as a closed connection.
    let outcomes = within("the victim's calls", victim_calls).await.unwrap();
    assert_eq!(outcomes.len(), 11);
    for outcome in &outcomes {
        assert!(
            matches!(
                outcome,
                Err(CallError::Closed(
                    CloseReason::PeerClosed | CloseReason::Io(_)
                ))
            ),
            "{outcome:?}"
        );
    }

    // The bystander's calls are still waiting; once its list has an item they all
    // succeed, in order.
    assert!(!bystander_calls.is_finished(), "the bystander is untouched");
    assert_eq!(
        server.command(&["LPUSH", "bystander:list", "item"]),
        ":1\r\n"
    );
    let outcomes = within("the bystander's calls", bystander_calls)
        .await
        .unwrap();
    let popped = outcomes[0].as_ref().unwrap().as_slice().unwrap().to_vec();
    assert_eq!(popped[1].as_bytes().unwrap(), &Bytes::from_static(b"item"));
    let counts: Vec<i64> = outcomes[1..]
        .iter()
        .map(|outcome| outcome.as_ref().unwrap().as_integer().unwrap())
        .collect();
    assert_eq!(counts, (1..=10).collect::<Vec<i64>>());
    assert_eq!(server.command(&["GET", "victim:count"]), "$-1\r\n");

    // The quiet connection still answers, as the same redis client.
    let same = within("CLIENT ID", quiet.call(Command::new("CLIENT").arg("ID")))
        .await
        .unwrap();
    assert_eq!(same.as_integer(), Some(client_ids[2]));
    let victim_id = victim.id();
    drop((victim, bystander, quiet));

    // The pool replaces the dead connection only: three open, four ever created, the
    // other two still the same redis clients.
    full(&pool, &server, 3).await;
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.created, 4, "{:?}", status.counters);
    let open: Vec<ConnectionId> = status.authorities[0]
        .connections
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(!open.contains(&victim_id), "{open:?}");
    let list = server.command(&["CLIENT", "LIST"]);
    for (n, id) in client_ids.iter().enumerate() {
        assert_eq!(
            list.contains(&format!("id={id} ")),
            n != 0,
            "client {id}: {list}"
        );
    }
    let (_, closed) = events.lives();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[&victim_id].len(), 1, "{closed:?}");
}

#[actix::test]
async fn a_timed_out_command_leaves_the_connection_and_its_late_reply_is_dropped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = pool(&server, 1, None);
    full(&pool, &server, 1).await;
    assert_eq!(server.command(&["SET", "k", "v"]), "+OK\r\n");

    // The pool's one connection, held by a lease, so every call below goes over it (a
    // lease, not `Redis`: a connection once in shared use is never leased).
    let lease = within("checkout", pool.checkout(&server.authority()))
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    let slept = lease.send(Call::new(Command::new("DEBUG").arg("SLEEP").arg(2)).timeout(short));
    // Queued behind the sleep, also given up on, but still run by redis in order.
    let overwrite = lease.send(Call::new(Command::set("k", "after")).timeout(short));
    let slept = within("DEBUG SLEEP", slept).await.unwrap();
    assert!(
        matches!(slept, Err(CallError::Timeout { after }) if after == short),
        "{slept:?}"
    );
    let overwrite = within("SET", overwrite).await.unwrap();
    assert!(
        matches!(overwrite, Err(CallError::Timeout { .. })),
        "{overwrite:?}"
    );

    // Sent while redis still sleeps: the `+OK`s of the two abandoned calls arrive
    // first and are dropped; the GET gets its own reply, the overwritten value.
    let value = within("GET after the timeout", lease.call(Command::get("k")))
        .await
        .expect("the connection stays open under in-order correlation");
    assert_eq!(value, Value::Bulk(Bytes::from_static(b"after")));
    let value = within("GET again", lease.call(Command::get("k")))
        .await
        .unwrap();
    assert_eq!(value, Value::Bulk(Bytes::from_static(b"after")));

    let stats = within("stats", lease.send(GetStats)).await.unwrap();
    assert_eq!(stats.timeouts, 2, "{stats:?}");
    assert_eq!(stats.late_replies, 2, "{stats:?}");
    let id = lease.id();
    drop(lease);
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.created, 1, "the connection was kept");
    assert_eq!(status.authorities[0].connections[0].id, id);
}

//! A Redis client built on the Pool: typed commands pipelined by many callers over
//! shared connections, a raw command, and pub/sub through the Broker.
//!
//! ```text
//! cargo run --release --example redis_client [-- --addr HOST:PORT] [--callers N] [--commands M]
//! ```
//!
//! With `--addr` it talks to that server. Without it, it starts a `redis-server` of
//! its own on a free loopback port (with persistence off, in a temporary directory)
//! and stops it at the end; it says so and exits if `redis-server` is not installed.
//!
//! What it does, printing as it goes:
//! 1. `SET`, `GET`, `INCR` and `DEL` through [`Redis`], the typed client; an `INCR` on
//!    a value that is not a number comes back as redis's own error, typed.
//! 2. N callers (default 64) each run M `INCR`s (default 2,000) on their own counter
//!    over a pool of two shared connections: redis answers in order, the connection
//!    hands each caller its own replies, and every counter ends at exactly M.
//! 3. A raw command (`CLIENT LIST`) shows the pool's connections as redis sees them,
//!    with the name the handshake gave them.
//! 4. A [`Broker`] over the same kind of pool subscribes to a channel; messages
//!    published through the broker and by another connection arrive in order.
//!
//! It exits non-zero if any check fails.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use switchboard::broker::{Delivery, ProducerId, Publish};
use switchboard::protocol::resp::{Command, Redis, RespConnector, RespProtocol, Value};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Broker, Pool, PoolConfig};
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

struct Args {
    addr: Option<SocketAddr>,
    callers: u32,
    commands: u32,
}

fn args() -> Result<Args> {
    let mut args = Args {
        addr: None,
        callers: 64,
        commands: 2_000,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = Some(value()?.parse()?),
            "--callers" => args.callers = value()?.parse()?,
            "--commands" => args.commands = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// A `redis-server` this example started, stopped when dropped.
struct OwnServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` on a free loopback port and waits (up to 10 s) for it.
fn start_redis() -> Result<Option<(OwnServer, SocketAddr)>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir =
        std::env::temp_dir().join(format!("switchboard-redis-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spawned = Process::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let server = OwnServer { child, dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start listening within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((server, addr)))
}

fn pool_config(size: usize) -> Result<PoolConfig> {
    Ok(PoolConfig::builder()
        .min_idle(size)
        .max_size(size)
        .checkout_timeout(Duration::from_secs(2))
        .build()?)
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

struct Collect(mpsc::UnboundedSender<Delivery>);
impl Actor for Collect {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The broker hands deliveries over with `try_send` and never waits: actix's
        // default mailbox (16) would lose messages of any burst (each loss told in
        // the next delivery's `missed_before`). 4,096 holds every burst here.
        ctx.set_mailbox_capacity(4096);
    }
}
impl Handler<Delivery> for Collect {
    type Result = ();
    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        let _ = self.0.send(delivery);
    }
}

async fn typed_commands(redis: &Redis<RespConnector<TcpConnector>>) -> Result<()> {
    redis.set("greeting", "hello").await?;
    let greeting = redis.get("greeting").await?;
    println!("GET greeting -> {greeting:?}");
    check(
        greeting.as_deref() == Some(&b"hello"[..]),
        "GET returns what SET stored",
    )?;
    redis.del("visits").await?;
    let visits = redis.incr("visits").await?;
    println!("INCR visits -> {visits}");
    check(visits == 1, "INCR on a new key is 1")?;
    let error = redis.incr("greeting").await.unwrap_err();
    println!("INCR greeting -> error: {error}");
    check(
        error.remote().is_some(),
        "redis's error comes back as a remote error",
    )?;
    check(redis.del("greeting").await?, "DEL removes the key")?;
    Ok(())
}

async fn pipelined_callers(
    redis: &Redis<RespConnector<TcpConnector>>,
    callers: u32,
    commands: u32,
) -> Result<()> {
    for caller in 0..callers {
        redis.del(format!("counter:{caller}")).await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let redis = redis.clone();
            actix::spawn(async move {
                let key = format!("counter:{caller}");
                for expected in 1..=i64::from(commands) {
                    // Each reply is this caller's own: the count it just made.
                    match redis.incr(key.as_str()).await {
                        Ok(count) if count == expected => {}
                        other => return Err(format!("{key}: expected {expected}, got {other:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let total = u64::from(callers) * u64::from(commands);
    println!(
        "{callers} callers x {commands} INCRs over 2 shared connections: {total} replies, each the caller's own, in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    let status = redis.pool().status().await?;
    println!("pool: {} connections", status.connections);
    Ok(())
}

async fn raw_command(redis: &Redis<RespConnector<TcpConnector>>) -> Result<()> {
    let list = redis.command(Command::new("CLIENT").arg("LIST")).await?;
    let text = match &list {
        Value::Bulk(text) | Value::Verbatim { text, .. } => {
            String::from_utf8_lossy(text).into_owned()
        }
        other => return Err(format!("CLIENT LIST answered {other:?}").into()),
    };
    let ours = text
        .lines()
        .filter(|line| line.contains("name=switchboard-example"))
        .count();
    println!("CLIENT LIST: {ours} connections named switchboard-example");
    check(
        ours >= 2,
        "the pool's connections carry the handshake's name",
    )
}

async fn pub_sub(authority: Authority) -> Result<()> {
    let connector = RespConnector::new(TcpConnector::new()).client_name("switchboard-example");
    let broker = Broker::builder(
        Pool::builder(connector, RespProtocol::new()).config(pool_config(2)?),
        authority,
    )
    .start();
    let (sender, mut deliveries) = mpsc::unbounded_channel();
    broker
        .subscribe("example:news", Collect(sender).start().recipient())
        .await?;
    for n in 1..=5 {
        let confirmed = broker
            .publish(Publish::ordered(
                ProducerId(1),
                "example:news",
                format!("story {n}"),
            ))
            .await?;
        println!("published story {n}: {:?} receiver(s)", confirmed.receivers);
    }
    for n in 1..=5 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.recv())
            .await?
            .ok_or("the subscriber stopped")?;
        println!(
            "delivered #{}: {}",
            delivery.seq,
            String::from_utf8_lossy(&delivery.payload)
        );
        check(delivery.payload == format!("story {n}"), "in order")?;
    }
    broker.pool().close().await;
    Ok(())
}

async fn run(addr: SocketAddr, callers: u32, commands: u32) -> Result<()> {
    let authority = Authority::tcp(addr.ip().to_string(), addr.port());
    let connector = RespConnector::new(TcpConnector::new()).client_name("switchboard-example");
    let pool = Pool::builder(connector, RespProtocol::new())
        .config(pool_config(2)?)
        .authority(authority.clone())
        .start();
    let redis = Redis::new(pool.clone(), authority.clone()).timeout(Duration::from_secs(2));

    println!("-- typed commands");
    typed_commands(&redis).await?;
    println!("-- pipelining from many callers");
    pipelined_callers(&redis, callers, commands).await?;
    println!("-- a raw command");
    raw_command(&redis).await?;
    pool.close().await;
    println!("-- pub/sub through the Broker");
    pub_sub(authority).await?;
    println!("all checks passed");
    Ok(())
}

fn main() -> Result<()> {
    let args = args()?;
    let (_own, addr) = match args.addr {
        Some(addr) => (None, addr),
        None => match start_redis()? {
            Some((server, addr)) => {
                println!("started redis-server on {addr}");
                (Some(server), addr)
            }
            None => {
                println!("redis-server is not installed: install it, or pass --addr HOST:PORT");
                return Ok(());
            }
        },
    };
    actix::System::new().block_on(run(addr, args.callers, args.commands))
}

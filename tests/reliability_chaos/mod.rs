//! The load and the faults of the soak (scenario 13, `tests/reliability_soak.rs`):
//! ordered producers, unordered publishers and requesters that record how each of
//! their operations resolved; subscribers that record what they were delivered; and
//! the chaos that steers a [`FaultProxy`](switchboard::testkit::FaultProxy) from a
//! seeded RNG. The soak checks what they recorded.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use switchboard::broker::{
    BrokerError, Confirmed, Delivery, ProducerId, Publish, Request, Unconfirmed,
};
use switchboard::testkit::{AcceptMode, Direction, Fault, ProxyHandle};

use crate::broker_support::{tagged, untag, Client};

/// Topics of the ordered producers; the unordered publishers use the next one.
pub const ORDERED_TOPICS: usize = 2;
/// Operations a second of each ordered producer, unordered publisher and requester:
/// the load lasts as long as the chaos instead of spending the operation budget in
/// its first seconds.
pub const PRODUCER_RATE: u32 = 400;
pub const UNORDERED_RATE: u32 = 400;
pub const REQUEST_RATE: u32 = 200;
/// Requests one requester keeps in flight, and how long each may take.
pub const REQUEST_WINDOW: usize = 4;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Tags of the unordered publishers and requesters, apart from the producers'.
pub const UNORDERED_TAG: u32 = 100;
pub const REQUEST_TAG: u32 = 200;
/// The shortest latency spike of a stall: well past the client's heartbeat timeout
/// (400 ms, plus up to a heartbeat interval before it is noticed).
pub const STALL: Duration = Duration::from_millis(600);
/// A loop that just saw a failure waits this long before its next operation.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(5);

/// One delivery, as a subscriber saw it.
#[derive(Clone, Copy)]
pub struct Seen {
    pub seq: u64,
    pub producer: u32,
    pub n: u32,
    /// Milliseconds since the run started.
    pub at_ms: u32,
}

/// A subscriber: records every delivery, in delivery order.
pub struct Recorder {
    pub seen: Rc<RefCell<Vec<Seen>>>,
    pub started: Instant,
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The broker hands deliveries over with `try_send`: a full mailbox would lose
        // them, and this test is not about that.
        ctx.set_mailbox_capacity(1 << 20);
    }
}

impl Handler<Delivery> for Recorder {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        let (producer, n) = untag(&delivery.payload);
        self.seen.borrow_mut().push(Seen {
            seq: delivery.seq,
            producer,
            n,
            at_ms: ms_since(self.started),
        });
    }
}

/// A recorder, and what it subscribed to.
pub struct Subscriber {
    /// Which broker it subscribed through.
    pub broker: &'static str,
    pub topic: usize,
    pub seen: Rc<RefCell<Vec<Seen>>>,
}

/// The name of topic number `topic`: the ordered ones, then the unordered one.
pub fn topic_name(topic: usize) -> Bytes {
    if topic < ORDERED_TOPICS {
        Bytes::from(format!("soak.ordered.{topic}"))
    } else {
        Bytes::from_static(b"soak.unordered")
    }
}

/// Milliseconds since `started`.
pub fn ms_since(started: Instant) -> u32 {
    u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------
// Load: producers, unordered publishers, requesters
// ---------------------------------------------------------------------------------

/// What one publish resolved with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Confirmed(u64),
    /// Unconfirmed, and `maybe_delivered()`.
    MaybeDelivered(&'static str),
    /// Unconfirmed, and never delivered to anyone.
    NotDelivered(&'static str),
}

/// Shared by the load loops: the clock, the operation budget, failures by kind.
pub struct RunState {
    pub started: Instant,
    pub until: Instant,
    pub budget: Cell<u64>,
    pub failures: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
}

impl RunState {
    /// Whether time and budget are left.
    fn open(&self) -> bool {
        Instant::now() < self.until && self.budget.get() > 0
    }

    /// Takes one operation from the budget, if time and budget are left.
    fn may_issue(&self) -> bool {
        if !self.open() {
            return false;
        }
        self.budget.set(self.budget.get() - 1);
        true
    }

    fn fail(&self, what: &'static str, kind: &'static str) {
        *self.failures.borrow_mut().entry((what, kind)).or_default() += 1;
    }
}

/// Spaces one loop's operations, so that the load lasts as long as the chaos instead
/// of spending the operation budget in its first seconds. A loop that fell behind (a
/// stall) goes on at its pace rather than bursting to catch up.
pub struct Pace {
    pub interval: Duration,
    pub next: Instant,
}

impl Pace {
    fn per_second(rate: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / rate,
            next: Instant::now(),
        }
    }

    async fn ready(&self) {
        tokio::time::sleep_until(self.next.into()).await;
    }

    fn advance(&mut self) {
        self.next = self.next.max(Instant::now()) + self.interval;
    }

    /// After a failure: wait a little, so that a pool that is down (and fails
    /// checkouts at once) is not asked in a busy loop.
    fn back_off(&mut self) {
        self.next = self.next.max(Instant::now() + FAILURE_PAUSE);
    }
}

/// One publisher's messages: how each resolved, how many times, and when.
pub struct PublisherLog {
    pub producer: u32,
    pub topic: usize,
    pub ordered: bool,
    pub outcomes: Vec<Option<Outcome>>,
    pub resolutions: Vec<u8>,
    pub resolved_ms: Vec<u32>,
}

/// A payload: the tag, then `padding` bytes.
pub fn payload(producer: u32, n: u32, padding: usize) -> Bytes {
    let mut bytes = BytesMut::with_capacity(8 + padding);
    bytes.put_slice(&tagged(producer, n));
    bytes.put_bytes(b'.', padding);
    bytes.freeze()
}

/// Publishes until the run ends, at `rate` a second with at most `window` in
/// flight; ordered for `producer`, or unordered.
#[allow(clippy::too_many_arguments)]
pub async fn publish_loop(
    client: Client,
    producer: u32,
    topic: usize,
    ordered: bool,
    window: usize,
    rate: u32,
    mut rng: fastrand::Rng,
    run: Rc<RunState>,
) -> PublisherLog {
    let name = topic_name(topic);
    let mut log = PublisherLog {
        producer,
        topic,
        ordered,
        outcomes: Vec::new(),
        resolutions: Vec::new(),
        resolved_ms: Vec::new(),
    };
    let mut pace = Pace::per_second(rate);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let (n, result): (usize, Result<Confirmed, Unconfirmed>) = (n, result);
                log.resolutions[n] += 1;
                log.resolved_ms[n] = ms_since(run.started);
                let outcome = match result {
                    Ok(confirmed) => Outcome::Confirmed(confirmed.seq),
                    Err(unconfirmed) => {
                        let kind = unconfirmed.error.kind();
                        run.fail(if ordered { "ordered" } else { "unordered" }, kind);
                        pace.back_off();
                        if unconfirmed.maybe_delivered() {
                            Outcome::MaybeDelivered(kind)
                        } else {
                            Outcome::NotDelivered(kind)
                        }
                    }
                };
                log.outcomes[n] = Some(outcome);
            }
            () = pace.ready(), if in_flight.len() < window && run.open() => {
                pace.advance();
                if !run.may_issue() {
                    continue;
                }
                let n = log.outcomes.len() as u32;
                log.outcomes.push(None);
                log.resolutions.push(0);
                log.resolved_ms.push(0);
                let message = payload(producer, n, rng.usize(0..64));
                let publish = if ordered {
                    Publish::ordered(ProducerId(u64::from(producer)), name.clone(), message)
                } else {
                    Publish::unordered(name.clone(), message)
                };
                // Queued to the broker now: a producer's publishes keep this order.
                let outcome = client.publish(publish);
                in_flight.push(async move { (n as usize, outcome.await) });
            }
            else => return log,
        }
    }
}

/// What one request loop saw.
#[derive(Default)]
pub struct RequestLog {
    pub resolutions: Vec<u8>,
    pub answered: u64,
    /// Answers that were not the request's own payload.
    pub wrong: u64,
    pub failed: u64,
}

/// Sends echo requests until the run ends, at `REQUEST_RATE` a second with at most
/// `REQUEST_WINDOW` in flight (one tick in 500 adds a burst of 64 to 256 at once, and
/// one request in 200 carries 64 KiB to 1 MiB), and checks each answer is its own
/// request's payload.
pub async fn request_loop(
    client: Client,
    requester: u32,
    mut rng: fastrand::Rng,
    run: Rc<RunState>,
) -> RequestLog {
    let mut log = RequestLog::default();
    let mut pace = Pace::per_second(REQUEST_RATE);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((n, sent, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                let (n, sent, answer): (usize, Bytes, Result<Bytes, BrokerError>) = (n, sent, answer);
                log.resolutions[n] += 1;
                match answer {
                    Ok(answer) => {
                        log.answered += 1;
                        if answer != sent {
                            log.wrong += 1;
                        }
                    }
                    Err(error) => {
                        log.failed += 1;
                        run.fail("request", error.kind());
                        pace.back_off();
                    }
                }
            }
            () = pace.ready(), if in_flight.len() < REQUEST_WINDOW && run.open() => {
                pace.advance();
                if !run.may_issue() {
                    continue;
                }
                // Now and then a burst of requests at once (the traffic shape that
                // once found a warm pool unable to grow), and now and then a big
                // payload; mostly one request of up to 4 KiB, so that slicing and
                // bandwidth limits cut frames apart.
                let count = if rng.usize(0..500) == 0 { rng.usize(64..=256) } else { 1 };
                for _ in 0..count {
                    let n = log.resolutions.len() as u32;
                    log.resolutions.push(0);
                    let padding = if rng.usize(0..200) == 0 {
                        rng.usize(64 * 1024..=1024 * 1024)
                    } else {
                        rng.usize(0..4096)
                    };
                    let payload = payload(REQUEST_TAG + requester, n, padding);
                    let request = Request::new("echo", payload.clone()).timeout(REQUEST_TIMEOUT);
                    let client = client.clone();
                    in_flight
                        .push(async move { (n as usize, payload, client.request(request).await) });
                }
            }
            else => return log,
        }
    }
}

// ---------------------------------------------------------------------------------
// Chaos
// ---------------------------------------------------------------------------------

/// One thing the chaos did.
#[derive(Debug, Clone, Copy)]
pub enum Chaos {
    /// A fault added to a direction.
    Inject(Direction, Fault),
    /// Every open link reset; how many there were.
    Reset(usize),
    /// What new connects meet from now on.
    Accept(AcceptMode),
    /// Every fault cleared, and connects forwarded again.
    Heal,
}

impl Chaos {
    /// A short name for what it did, for counts; `None` for a heal.
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Chaos::Inject(Direction::Both, Fault::Latency(delay)) if *delay >= STALL => "stall",
            Chaos::Inject(_, Fault::Latency(_)) => "latency",
            Chaos::Inject(_, Fault::Slice(_)) => "slice",
            Chaos::Inject(_, Fault::Bandwidth(_)) => "bandwidth",
            Chaos::Inject(_, Fault::Blackhole) => "blackhole",
            Chaos::Inject(_, Fault::CloseAfter(_)) => "close-after",
            Chaos::Inject(..) => "other",
            Chaos::Reset(_) => "reset",
            Chaos::Accept(AcceptMode::Refuse) => "refuse-connects",
            Chaos::Accept(_) => "hang-connects",
            Chaos::Heal => return None,
        })
    }
}

impl std::fmt::Display for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chaos::Inject(direction, fault) => write!(f, "inject {fault:?} {direction:?}"),
            Chaos::Reset(links) => write!(f, "reset {links} links"),
            Chaos::Accept(mode) => write!(f, "accept {mode:?}"),
            Chaos::Heal => write!(f, "heal"),
        }
    }
}

/// What the chaos did, and when (milliseconds since the run started).
pub type ChaosLog = Rc<RefCell<Vec<(u32, Chaos)>>>;

/// A direction, at random.
pub fn direction(rng: &mut fastrand::Rng) -> Direction {
    match rng.u8(0..3) {
        0 => Direction::Upstream,
        1 => Direction::Downstream,
        _ => Direction::Both,
    }
}

/// A fault that slows links down rather than cutting them.
pub fn slowdown(rng: &mut fastrand::Rng) -> Fault {
    match rng.u8(0..3) {
        0 => Fault::Latency(Duration::from_millis(rng.u64(1..=150))),
        1 => Fault::Slice(rng.usize(1..=64)),
        _ => Fault::Bandwidth(rng.u64(2_000..=200_000)),
    }
}

/// Until the run's end: a healthy gap, then a fault (sometimes two) for a random
/// short period, then heal (and reset the links a blackhole went through). Heals and
/// forwards again at the end.
pub async fn chaos(proxy: ProxyHandle, mut rng: fastrand::Rng, run: Rc<RunState>, log: ChaosLog) {
    let record = |chaos: Chaos| log.borrow_mut().push((ms_since(run.started), chaos));
    while Instant::now() < run.until {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..=400))).await;
        if Instant::now() >= run.until {
            break;
        }
        let mut period = Duration::from_millis(rng.u64(50..=800));
        // Whether the fault loses bytes on links it leaves open.
        let mut lossy = false;
        let mut inject = Vec::with_capacity(2);
        match rng.u8(0..10) {
            0 => inject.push((
                direction(&mut rng),
                Fault::Latency(Duration::from_millis(rng.u64(1..=150))),
            )),
            1 => inject.push((direction(&mut rng), Fault::Slice(rng.usize(1..=64)))),
            2 => inject.push((
                direction(&mut rng),
                Fault::Bandwidth(rng.u64(1_000..=100_000)),
            )),
            3 => {
                // Long enough, often, to trip the client's heartbeat timeout.
                period = Duration::from_millis(rng.u64(100..=1200));
                inject.push((direction(&mut rng), Fault::Blackhole));
                lossy = true;
            }
            4 => {
                let reset = proxy.reset().await;
                record(Chaos::Reset(reset));
            }
            5 => inject.push((direction(&mut rng), Fault::CloseAfter(rng.u64(0..=4096)))),
            6 => {
                proxy.set_accept(AcceptMode::Refuse).await;
                record(Chaos::Accept(AcceptMode::Refuse));
            }
            7 => {
                proxy.set_accept(AcceptMode::Blackhole).await;
                record(Chaos::Accept(AcceptMode::Blackhole));
            }
            _ => {
                // A stall: a spike well past the client's heartbeat timeout, healed
                // before the timeout fires. The client still gives up on the link
                // (nothing arrives until the spike is over) and moves its producers
                // to a fresh, fast link while their last messages on the old one are
                // still on the way: what the server's producer fences are for.
                // Both ways: with only the upstream slow, the server's own pings keep
                // the client's heartbeat content; with only the downstream slow, the
                // client's messages are not held up.
                let delay = rng.u64(STALL.as_millis() as u64..=1200);
                period = Duration::from_millis(rng.u64(100..=400));
                inject.push((
                    Direction::Both,
                    Fault::Latency(Duration::from_millis(delay)),
                ));
            }
        }
        if !inject.is_empty() && rng.u8(0..5) == 0 {
            inject.push((direction(&mut rng), slowdown(&mut rng)));
        }
        for (direction, fault) in inject {
            proxy.inject(direction, fault).await;
            record(Chaos::Inject(direction, fault));
        }
        tokio::time::sleep(period).await;
        if lossy {
            // The proxy's blackhole drops what it reads; healed, a link would go on
            // after a hole in its byte stream, which no TCP connection can do (its
            // bytes arrive late, or the connection dies). The links that went
            // through the blackhole die with it.
            let reset = proxy.reset().await;
            record(Chaos::Reset(reset));
        }
        proxy.heal().await;
        proxy.set_accept(AcceptMode::Forward).await;
        record(Chaos::Heal);
    }
    proxy.heal().await;
    proxy.set_accept(AcceptMode::Forward).await;
    record(Chaos::Heal);
}

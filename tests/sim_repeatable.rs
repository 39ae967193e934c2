//! Repeatability: a simulation is a function of its seed. The same scenario (calls
//! through a partition, a hold and a crash of the server) run twice with one seed
//! gives the same trace, call for call and event for event, at the same simulated
//! times; run with another seed it takes other latencies and other random picks, and
//! its trace differs (which shows the trace is fine-grained enough for the first
//! comparison to mean something).
//!
//! One test in this file, so that nothing else runs in this process meanwhile.
#![cfg(feature = "sim")]

mod sim_support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use sim_support::{
    add_server, connection_config, now, seed, simulation, start_pool, until_full, Calls, EventLog,
    CLIENT, REFILL, SERVER, SIZE, WAIT,
};
use switchboard::testkit::sim::{self, Faults};
use switchboard::{ConnectionEvent, ConnectionId};

/// The calls' timeout in this scenario: shorter than the hold, so held calls time out.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the scenario under `seed`; returns its trace: one line per call that ended
/// and per connection event, in the order they happened, each with its simulated
/// time. Connections are named by the order they connected in (their ids come from
/// a counter of the whole process, which the second run continues).
fn scenario(seed: u64) -> Vec<String> {
    let mut sim = simulation(seed);
    add_server(&mut sim);
    let faults = Faults::new();
    let control = faults.clone();
    let trace = Rc::new(RefCell::new(Vec::new()));
    let record = trace.clone();
    sim.client(CLIENT, async move {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let mut batches = Vec::new();
        let mut batch = |calls: Calls| batches.push(calls);

        let calls = Calls::start(&pool, "calm", 20).await;
        calls.all_ended(WAIT).await;
        batch(calls);

        turmoil::partition(CLIENT, SERVER);
        let calls = Calls::start(&pool, "partitioned", 10).await;
        calls.all_ended(CALL_TIMEOUT + WAIT).await;
        batch(calls);
        tokio::time::sleep(Duration::from_secs(4)).await;
        turmoil::repair(CLIENT, SERVER);
        until_full(&pool, REFILL + WAIT).await;

        turmoil::hold(CLIENT, SERVER);
        let calls = Calls::start(&pool, "held", 10).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        turmoil::release(CLIENT, SERVER);
        calls.all_ended(WAIT).await;
        batch(calls);
        let calls = Calls::start(&pool, "released", 10).await;
        calls.all_ended(WAIT).await;
        batch(calls);

        let calls = Calls::start(&pool, "crashed", 10).await;
        control.crash(SERVER);
        calls.all_ended(WAIT).await;
        batch(calls);
        tokio::time::sleep(Duration::from_secs(2)).await;
        control.bounce(SERVER);
        until_full(&pool, REFILL + WAIT).await;
        let calls = Calls::start(&pool, "bounced", 10).await;
        calls.all_ended(WAIT).await;
        batch(calls);

        let mut lines: Vec<(Duration, String)> = Vec::new();
        for calls in &batches {
            for end in calls.ended() {
                let kind = end.kind(calls.prefix());
                lines.push((end.at, format!("{}-{} {kind}", calls.prefix(), end.call)));
            }
        }
        let mut names: HashMap<ConnectionId, usize> = HashMap::new();
        for (at, event) in log.events() {
            let mut name = |id: ConnectionId| {
                let next = names.len();
                format!("c{}", names.entry(id).or_insert(next))
            };
            let line = match event {
                ConnectionEvent::Connected { id, .. } => format!("{} connected", name(id)),
                ConnectionEvent::Rtt { id, rtt } => format!("{} rtt {rtt:?}", name(id)),
                ConnectionEvent::Closing { id } => format!("{} closing", name(id)),
                ConnectionEvent::Load { id, in_flight, .. } => {
                    format!("{} load {in_flight}", name(id))
                }
                ConnectionEvent::Closed { id, reason } => {
                    format!("{} closed {}", name(id), reason.kind())
                }
                other => format!("{other:?}"),
            };
            lines.push((at, line));
        }
        // Stable: what happened at the same time keeps the order it was recorded in.
        lines.sort_by_key(|(at, _)| *at);
        assert_eq!(names.len(), 3 * SIZE, "three generations of connections");
        record.borrow_mut().extend(
            lines
                .into_iter()
                .map(|(at, line)| format!("{:>8.3?} {line}", at)),
        );
        record.borrow_mut().push(format!("{:?} end", now()));
        Ok(())
    });
    sim::run(&mut sim, &faults).expect("the scenario runs");
    drop(sim);
    Rc::try_unwrap(trace)
        .expect("the simulation is gone")
        .into_inner()
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let seed = seed();
    let first = scenario(seed);
    let second = scenario(seed);
    assert!(first.len() > 50, "a trace worth comparing: {first:#?}");
    if first != second {
        let at = first
            .iter()
            .zip(&second)
            .position(|(one, other)| one != other)
            .unwrap_or(first.len().min(second.len()));
        panic!(
            "the runs diverge at line {at}:\nfirst:  {:?}\nsecond: {:?}\n\nfirst run: {first:#?}",
            first.get(at),
            second.get(at)
        );
    }

    let other = scenario(seed.wrapping_add(1));
    assert_ne!(first, other, "another seed, another run");
}

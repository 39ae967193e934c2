//! In-order correlation (pipelined protocols without ids, like RESP), through a small
//! line protocol defined here: one request per line, one reply line per request in
//! order, `PING` answered by any line, `PUSH ...` lines unsolicited.
#![cfg(feature = "testkit")]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard::protocol::{Correlation, Inbound, Protocol, RemoteError};
use switchboard::testkit::Probe;
use switchboard::{
    Call, CallError, CloseReason, Connection, ConnectionConfig, ConnectionEvent, GetStats, Overload,
};
use tokio::io::DuplexStream;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

#[derive(Debug, Clone, Copy)]
struct LineProtocol;

impl Protocol for LineProtocol {
    type Frame = String;
    type Codec = LinesCodec;
    type CodecError = LinesCodecError;
    type Request = String;
    type Reply = String;
    type Push = String;

    fn codec(&self) -> LinesCodec {
        LinesCodec::new_with_max_length(1024)
    }

    fn correlation(&self) -> Correlation {
        Correlation::InOrder
    }

    fn request(&self, _id: u64, request: String) -> String {
        request
    }

    fn ping(&self, _id: u64) -> String {
        "PING".to_owned()
    }

    fn classify(&self, line: String) -> Inbound<Self> {
        if let Some(push) = line.strip_prefix("PUSH ") {
            Inbound::Push(push.to_owned())
        } else if let Some(error) = line.strip_prefix("ERR ") {
            Inbound::Reply {
                id: 0,
                reply: Err(RemoteError::new(error.to_owned())),
            }
        } else {
            Inbound::Reply {
                id: 0,
                reply: Ok(line),
            }
        }
    }
}

type Peer = Framed<DuplexStream, LinesCodec>;

fn start(
    config: ConnectionConfig,
) -> (
    actix::Addr<Connection<DuplexStream, LineProtocol>>,
    Peer,
    Probe<ConnectionEvent>,
) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let events = Probe::start();
    let conn = Connection::builder(client, LineProtocol)
        .config(config)
        .events(events.recipient())
        .start();
    (conn, Framed::new(server, LinesCodec::new()), events)
}

async fn next_line(peer: &mut Peer) -> String {
    tokio::time::timeout(Duration::from_secs(60), peer.next())
        .await
        .expect("a line within a minute")
        .expect("stream open")
        .expect("a valid line")
}

fn config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(10))
        .heartbeat_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[actix::test]
async fn pipelined_replies_reach_their_callers_in_order() {
    let (conn, mut peer, _events) = start(config());
    let calls: Vec<_> = (0..100)
        .map(|i| conn.send(Call::new(format!("req {i}"))))
        .collect();
    let calls = futures::future::join_all(calls);
    let answer = async {
        for i in 0..100 {
            assert_eq!(
                next_line(&mut peer).await,
                format!("req {i}"),
                "requests leave in order"
            );
            let reply = if i % 10 == 3 {
                format!("ERR no {i}")
            } else {
                format!("reply {i}")
            };
            peer.send(reply).await.unwrap();
        }
    };
    let (results, ()) = tokio::join!(calls, answer);
    for (i, result) in results.into_iter().enumerate() {
        match result.unwrap() {
            Ok(reply) => assert_eq!(reply, format!("reply {i}")),
            Err(CallError::Remote(error)) => {
                assert_eq!(i % 10, 3);
                assert_eq!(error.to_string(), format!("no {i}"));
            }
            Err(other) => panic!("call {i}: {other:?}"),
        }
    }
}

#[actix::test]
async fn a_late_reply_is_consumed_not_handed_to_the_next_call() {
    tokio::time::pause();
    let (conn, mut peer, _events) = start(config());

    let slow = conn.send(Call::new("slow".to_owned()).timeout(Duration::from_secs(1)));
    let (slow, line) = tokio::join!(slow, next_line(&mut peer));
    assert_eq!(line, "slow");
    assert!(matches!(slow.unwrap(), Err(CallError::Timeout { .. })));

    let next = conn.send(Call::new("next".to_owned()));
    let answer = async {
        assert_eq!(next_line(&mut peer).await, "next");
        peer.send("late answer to slow".to_owned()).await.unwrap();
        peer.send("answer to next".to_owned()).await.unwrap();
    };
    let (next, ()) = tokio::join!(next, answer);
    assert_eq!(next.unwrap().unwrap(), "answer to next");

    let stats = conn.send(GetStats).await.unwrap();
    assert_eq!(
        (stats.timeouts, stats.late_replies, stats.in_flight),
        (1, 1, 0)
    );
}

#[actix::test]
async fn abandoned_calls_keep_their_place_in_line_and_count_against_max_in_flight() {
    tokio::time::pause();
    let config = ConnectionConfig::builder()
        .max_in_flight(2)
        .build()
        .unwrap();
    let (conn, mut peer, _events) = start(config);
    let short = Duration::from_millis(100);
    let (a, b) = tokio::join!(
        conn.send(Call::new("a".to_owned()).timeout(short)),
        conn.send(Call::new("b".to_owned()).timeout(short))
    );
    assert!(matches!(a.unwrap(), Err(CallError::Timeout { .. })));
    assert!(matches!(b.unwrap(), Err(CallError::Timeout { .. })));

    // Both still wait for their replies on the wire: the pipeline is full.
    let c = conn.send(Call::new("c".to_owned())).await.unwrap();
    assert!(
        matches!(
            c,
            Err(CallError::Overloaded(Overload::InFlight { limit: 2 }))
        ),
        "{c:?}"
    );

    assert_eq!(next_line(&mut peer).await, "a");
    assert_eq!(next_line(&mut peer).await, "b");
    peer.send("late a".to_owned()).await.unwrap();
    peer.send("late b".to_owned()).await.unwrap();
    // The actor handles its mailbox before it reads, so wait until it has read the
    // late replies: only then are their places in line free.
    for _ in 0..100 {
        if conn.send(GetStats).await.unwrap().late_replies == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let d = conn.send(Call::new("d".to_owned()));
    let answer = async {
        assert_eq!(next_line(&mut peer).await, "d");
        peer.send("reply d".to_owned()).await.unwrap();
    };
    let (d, ()) = tokio::join!(d, answer);
    assert_eq!(d.unwrap().unwrap(), "reply d");
}

#[actix::test]
async fn heartbeat_ping_takes_a_place_in_line() {
    tokio::time::pause();
    let (conn, mut peer, mut events) = start(config());
    assert!(matches!(
        events.expect(Duration::from_secs(1)).await,
        ConnectionEvent::Connected { .. }
    ));

    // Quiet for the interval: the connection pings.
    assert_eq!(next_line(&mut peer).await, "PING");
    // A call made while the ping is outstanding queues behind it.
    let call = conn.send(Call::new("after ping".to_owned()));
    let answer = async {
        assert_eq!(next_line(&mut peer).await, "after ping");
        peer.send("PONG".to_owned()).await.unwrap();
        peer.send("reply".to_owned()).await.unwrap();
    };
    let (reply, ()) = tokio::join!(call, answer);
    assert_eq!(
        reply.unwrap().unwrap(),
        "reply",
        "the pong went to the heartbeat, not the call"
    );
    events
        .within(Duration::from_secs(1), |event| {
            matches!(event, ConnectionEvent::Rtt { .. })
        })
        .await;
}

#[actix::test]
async fn a_reply_with_nothing_outstanding_is_a_protocol_violation() {
    let (conn, mut peer, mut events) = start(config());
    peer.send("unsolicited".to_owned()).await.unwrap();
    let closed = events
        .within(Duration::from_secs(5), |event| {
            matches!(event, ConnectionEvent::Closed { .. })
        })
        .await;
    let ConnectionEvent::Closed { reason, .. } = closed else {
        unreachable!()
    };
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
    // The connection is gone: a call now fails, it does not hang.
    let after = conn.send(Call::new("x".to_owned())).await;
    assert!(
        matches!(after, Err(_) | Ok(Err(CallError::Closed(_)))),
        "{after:?}"
    );
}

#[actix::test]
async fn a_line_over_the_codec_limit_closes_the_connection() {
    let (conn, mut peer, mut events) = start(config());
    let call = conn.send(Call::new("x".to_owned()));
    let attack = async {
        assert_eq!(next_line(&mut peer).await, "x");
        peer.send("y".repeat(4096)).await.unwrap();
    };
    let (result, ()) = tokio::join!(call, attack);
    match result.unwrap() {
        Err(CallError::Closed(CloseReason::Decode(_))) => {}
        other => panic!("expected the call to fail with Decode, got {other:?}"),
    }
    events
        .within(Duration::from_secs(5), |event| {
            matches!(
                event,
                ConnectionEvent::Closed {
                    reason: CloseReason::Decode(_),
                    ..
                }
            )
        })
        .await;
}

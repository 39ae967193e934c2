//! Server topics are reclaimed: a topic with no subscribers that nothing happened to
//! for the idle period is forgotten, so a peer that subscribed to `max_topics` names
//! and left does not deny every new topic for the server's life. A subscriber that
//! comes back to a reclaimed topic is still told exactly what it missed.
//!
//! In virtual time, over in-memory pipes: a `Listener` accepts [`MockPeer`] pipes,
//! and the peers speak raw frames.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use switchboard::protocol::frame::{Frame, FrameKind};
use switchboard::server::{Accept, GetServerStats, Listener, ServerBroker, ServerConfig};
use switchboard::testkit::MockPeer;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, Mutex};

const STEP: Duration = Duration::from_secs(5);

/// Accepts the pipes a test hands it.
struct Pipes(Mutex<mpsc::UnboundedReceiver<DuplexStream>>);

impl Accept for Pipes {
    type Io = DuplexStream;

    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(DuplexStream, String)>> {
        Box::pin(async move {
            match self.0.lock().await.recv().await {
                Some(pipe) => Ok((pipe, "pipe".to_owned())),
                None => Err(io::Error::other("no more pipes")),
            }
        })
    }
}

/// A server on pipes: its broker, and how to connect a peer.
struct Server {
    broker: actix::Addr<ServerBroker>,
    pipes: mpsc::UnboundedSender<DuplexStream>,
}

impl Server {
    fn start(config: ServerConfig) -> Self {
        let broker = ServerBroker::start(config).expect("valid config");
        let (pipes, accepted) = mpsc::unbounded_channel();
        Listener::builder(Pipes(Mutex::new(accepted)), broker.clone()).start();
        Self { broker, pipes }
    }

    fn connect(&self) -> Peer {
        let (io, peer) = MockPeer::pair();
        self.pipes.send(io).expect("listener alive");
        Peer { peer, next_id: 0 }
    }

    async fn topics(&self) -> usize {
        self.broker.send(GetServerStats).await.unwrap().topics
    }
}

/// A client speaking raw frames.
struct Peer {
    peer: MockPeer,
    next_id: u64,
}

/// The subscribe's answer: missed, head, incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Joined {
    missed: u64,
    head: u64,
    incarnation: u64,
}

impl Peer {
    /// Sends a request of `kind` on `topic` and returns the answer (pushes that come
    /// first are skipped).
    async fn ask(&mut self, kind: FrameKind, topic: &str, payload: Bytes) -> Frame {
        self.next_id += 1;
        let id = self.next_id;
        let request =
            Frame::new(kind, id, payload).with_topic(Bytes::copy_from_slice(topic.as_bytes()));
        self.peer.send(request).await;
        loop {
            let frame = self.peer.expect_frame(STEP).await;
            if frame.id == id && matches!(frame.kind, FrameKind::Response | FrameKind::Error) {
                return frame;
            }
        }
    }

    /// Subscribes to `topic`, resuming after `resume` (number, incarnation) if given.
    async fn subscribe(
        &mut self,
        topic: &str,
        resume: Option<(u64, u64)>,
    ) -> Result<Joined, Bytes> {
        let mut payload = BytesMut::new();
        if let Some((after, incarnation)) = resume {
            payload.put_u64(after);
            payload.put_u64(incarnation);
        }
        let answer = self
            .ask(FrameKind::Subscribe, topic, payload.freeze())
            .await;
        if answer.kind == FrameKind::Error {
            return Err(answer.payload);
        }
        let number = |at: usize| u64::from_be_bytes(answer.payload[at..at + 8].try_into().unwrap());
        Ok(Joined {
            missed: number(0),
            head: number(8),
            incarnation: number(16),
        })
    }

    async fn publish(&mut self, topic: &str, payload: &'static [u8]) -> u64 {
        let answer = self
            .ask(FrameKind::Publish, topic, Bytes::from_static(payload))
            .await;
        assert_eq!(answer.kind, FrameKind::Response, "publish: {answer:?}");
        u64::from_be_bytes(answer.payload[..8].try_into().unwrap())
    }

    /// The next push, skipping nothing.
    async fn push(&mut self) -> Frame {
        let frame = self.peer.expect_frame(STEP).await;
        assert_eq!(frame.kind, FrameKind::Push, "expected a push: {frame:?}");
        frame
    }
}

/// A peer subscribes to `max_topics` names and leaves; an hour later (virtual) a new
/// topic can be had, and a subscriber returning to a reclaimed topic is told exactly
/// how many messages it missed, then gets what comes next.
#[actix::test]
async fn empty_topics_are_reclaimed_and_a_returning_subscriber_is_told_what_it_missed() {
    tokio::time::pause();
    let server = Server::start(ServerConfig::default().max_topics(4));

    let mut hog = server.connect();
    let mut first = None;
    for n in 0..4 {
        let joined = hog
            .subscribe(&format!("t{n}"), None)
            .await
            .expect("room for it");
        first.get_or_insert(joined);
    }
    let incarnation = first.unwrap().incarnation;
    let mut newcomer = server.connect();
    let refused = newcomer.subscribe("new", None).await;
    assert_eq!(refused, Err(Bytes::from_static(b"too many topics")));

    // The hog sees message 1 of t0 and leaves; messages 2 and 3 are published after.
    assert_eq!(newcomer.publish("t0", b"one").await, 1);
    assert_eq!(hog.push().await.id, 1);
    drop(hog);
    assert_eq!(newcomer.publish("t0", b"two").await, 2);
    assert_eq!(newcomer.publish("t0", b"three").await, 3);

    // Nobody subscribes to any of them for an hour.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let mut newcomer = server.connect();
    let joined = newcomer.subscribe("new", None).await;
    assert!(joined.is_ok(), "a new topic an hour later: {joined:?}");
    assert!(server.topics().await <= 1, "empty topics reclaimed");

    // The hog comes back to t0 from message 1: 2 and 3 went with the topic.
    let mut back = server.connect();
    let joined = back
        .subscribe("t0", Some((1, incarnation)))
        .await
        .expect("room");
    assert_eq!(
        joined,
        Joined {
            missed: 2,
            head: 3,
            incarnation
        },
        "told exactly what it missed"
    );
    assert_eq!(newcomer.publish("t0", b"four").await, 4);
    let push = back.push().await;
    assert_eq!((push.id, &push.payload[..]), (4, &b"four"[..]));
}

/// With `topic_idle_timeout`: a topic with a subscriber, or one published on more
/// often than the timeout, is kept however long; an idle one goes within the
/// timeout and a sweep. A topic remembered no more (more were reclaimed since than
/// the table holds) comes back as a new life: another incarnation, numbered from 1,
/// so a returning subscriber restarts its numbering instead of taking new messages
/// for ones it saw.
#[actix::test]
async fn only_idle_topics_go_and_a_forgotten_one_starts_a_new_life() {
    tokio::time::pause();
    let idle = Duration::from_secs(30);
    let server = Server::start(
        ServerConfig::default()
            .max_topics(4)
            .topic_idle_timeout(idle),
    );

    let mut watcher = server.connect();
    let kept = watcher.subscribe("kept", None).await.unwrap();
    let mut publisher = server.connect();
    for n in 1..=3 {
        assert_eq!(publisher.publish("busy", b"x").await, n);
    }
    let old = publisher.subscribe("old", None).await.unwrap();
    assert_eq!(publisher.publish("old", b"x").await, 1);
    publisher
        .ask(FrameKind::Unsubscribe, "old", Bytes::new())
        .await;
    // Ten minutes in steps shorter than the timeout: "busy" is published on at every
    // step, "kept" has a subscriber (which answers the server's heartbeat pings),
    // "old" is left alone.
    for _ in 0..40 {
        tokio::time::sleep(idle / 2).await;
        publisher.publish("busy", b"x").await;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures::StreamExt::next(watcher.peer.framed()),
        )
        .await
        {
            if frame.kind == FrameKind::Ping {
                futures::SinkExt::send(watcher.peer.framed(), Frame::pong(frame.id))
                    .await
                    .unwrap();
            }
        }
    }
    let stats = server.broker.send(GetServerStats).await.unwrap();
    assert_eq!(stats.topics, 2, "kept and busy stay, old goes: {stats:?}");
    assert_eq!(stats.topics_reclaimed, 1, "{stats:?}");

    // Then nothing for a while, twice: "busy", "a" and "b", then "c" and "d" are
    // reclaimed after "old", each with a number to remember; with room for four (two
    // generations of two), the table forgets "old".
    for names in [["a", "b"], ["c", "d"]] {
        // A new connection each time: the server's heartbeat closed the last one,
        // which answered no ping while nothing happened.
        let mut publisher = server.connect();
        for name in names {
            publisher.publish(name, b"x").await;
        }
        tokio::time::sleep(idle * 3).await;
    }
    let mut back = server.connect();
    let joined = back
        .subscribe("old", Some((1, old.incarnation)))
        .await
        .unwrap();
    assert_ne!(
        joined.incarnation, old.incarnation,
        "a new life: {joined:?}"
    );
    assert_eq!((joined.missed, joined.head), (0, 0), "{joined:?}");
    let mut publisher = server.connect();
    assert_eq!(publisher.publish("old", b"new").await, 1);
    assert_eq!(back.push().await.id, 1);
    assert_ne!(kept.incarnation, 0);
}

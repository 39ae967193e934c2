//! The actor test harness (feature `testkit`): tools for this crate's tests and for
//! yours.
//!
//! - [`Probe`]: an actor that records the messages it receives, so a test can assert
//!   on them with timeouts ([`Probe::expect`], [`Probe::expect_none`],
//!   [`Probe::within`]). Give its [`Probe::recipient`] to a Connection as its events
//!   or pushes recipient.
//! - [`MockPeer`]: the other end of a connection, driven step by step by the test:
//!   expect a frame, reply, push, ping, send raw bytes, go silent, close.
//! - `testkit::sim` (feature `sim`): pools, brokers and servers inside a deterministic
//!   [`turmoil`](https://docs.rs/turmoil) simulation, with partitions, held links and
//!   host crashes, repeatable from a seed.
//! - [`FaultProxy`]: a TCP proxy on 127.0.0.1 between a client and a real server,
//!   steered by messages: latency, blackhole (a half-open link), bandwidth limit,
//!   writes sliced into small pieces, close after N bytes, reset, and connects
//!   refused or left hanging.
//!
//! Every wait takes a timeout and panics with a message that says what did not
//! happen, which is what a failing test should do. Timers run on tokio's clock, so
//! a test that calls `tokio::time::pause()` at its start (inside `#[actix::test]`)
//! runs heartbeats and timeouts in virtual time: hours pass in milliseconds and no
//! test waits on the wall clock. That suits in-memory transports ([`MockPeer::pair`],
//! [`MemoryConnector`](crate::transport::MemoryConnector)); tests over real sockets,
//! and so every test with a [`FaultProxy`], must run in real time.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
//! use switchboard::testkit::{MockPeer, Probe};
//! use switchboard::{Call, Connection, ConnectionEvent};
//!
//! #[actix::main]
//! async fn main() {
//!     let (io, mut peer) = MockPeer::pair();
//!     let mut events = Probe::<ConnectionEvent>::start();
//!     let conn = Connection::builder(io, FrameProtocol::default())
//!         .events(events.recipient())
//!         .start();
//!     let call = conn.send(Call::new(FrameRequest::new("hi")));
//!     let request = async {
//!         let request = peer.expect_request(Duration::from_secs(1)).await;
//!         peer.reply(&request, "hello").await;
//!     };
//!     let (reply, ()) = futures::join!(call, request);
//!     assert_eq!(&reply.unwrap().unwrap()[..], b"hello");
//!     assert!(matches!(events.expect(Duration::from_secs(1)).await, ConnectionEvent::Connected { .. }));
//! }
//! ```

mod mock_peer;
mod probe;
mod proxy;
#[cfg(feature = "sim")]
pub mod sim;

pub use mock_peer::MockPeer;
pub use probe::{Probe, ProbeActor};
pub use proxy::{
    AcceptMode, Direction, Fault, FaultProxy, GetProxyStats, Heal, Inject, ProxyHandle, ProxyStats,
    Reset, SetAccept, SetUpstream, StopProxy,
};

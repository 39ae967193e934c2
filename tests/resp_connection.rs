//! The RESP protocol driven through a Connection and the RESP handshake, against a
//! scripted peer over in-memory pipes (no redis needed): subscribe confirmations take
//! their command's place in the reply order while messages around them go to the
//! push recipient, in RESP3 and in RESP2's subscribed mode (heartbeat pings
//! included), and the handshake falls back to RESP2, refuses what it must, and is
//! bounded by its timeout.

mod forward;

use forward::forward;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use futures::StreamExt;
use switchboard::protocol::resp::{
    Command, HandshakeError, PushKind, RespCodec, RespConnector, RespFrame, RespProtocol, RespPush,
    RespVersion, Value,
};
use switchboard::transport::{Connector, MemoryListener, MemoryNetwork};
use switchboard::{Call, CallError, ConnectError, Connection, ConnectionConfig, GetStats, Pushed};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// Bounds every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    conn: Addr<Connection<DuplexStream, RespProtocol>>,
    /// The scripted redis: reads commands with the RESP codec, writes raw bytes.
    peer: Framed<DuplexStream, RespCodec>,
    pushes: mpsc::UnboundedReceiver<Pushed<RespProtocol>>,
}

fn start(config: ConnectionConfig) -> Setup {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (collector, pushes) = forward();
    let conn = Connection::builder(client, RespProtocol::new())
        .config(config)
        .pushes(collector)
        .start();
    Setup {
        conn,
        peer: Framed::new(server, RespCodec::default()),
        pushes,
    }
}

/// The next command the peer receives, as its arguments.
async fn expect_command(peer: &mut Framed<DuplexStream, RespCodec>) -> Vec<String> {
    let frame = tokio::time::timeout(WAIT, peer.next())
        .await
        .expect("a command within the wait")
        .expect("the stream is open")
        .expect("a valid command");
    let RespFrame::Reply(Value::Array(args)) = frame else {
        panic!("not a command: {frame:?}");
    };
    args.into_iter()
        .map(|arg| String::from_utf8(arg.into_bytes().unwrap().to_vec()).unwrap())
        .collect()
}

async fn write(peer: &mut Framed<DuplexStream, RespCodec>, bytes: &[u8]) {
    peer.get_mut().write_all(bytes).await.unwrap();
}

async fn next_push(pushes: &mut mpsc::UnboundedReceiver<Pushed<RespProtocol>>) -> RespPush {
    tokio::time::timeout(WAIT, pushes.recv())
        .await
        .expect("a push within the wait")
        .expect("the collector is alive")
        .push
}

fn bulk(bytes: &'static [u8]) -> Value {
    Value::Bulk(Bytes::from_static(bytes))
}

type Request = actix::dev::Request<Connection<DuplexStream, RespProtocol>, Call<RespProtocol>>;

/// The reply to a call sent earlier.
async fn answer(request: Request) -> Result<Value, CallError> {
    tokio::time::timeout(WAIT, request)
        .await
        .expect("the call is answered within the wait")
        .expect("the connection handled the call")
}

#[actix::test]
async fn resp3_confirmations_answer_their_commands_and_messages_are_pushes() {
    let Setup {
        conn,
        mut peer,
        mut pushes,
    } = start(ConnectionConfig::default());
    // Pipelined: the subscribe and the GET are both written before any reply.
    let subscribe = conn.send(Call::new(Command::subscribe("ch")));
    let get = conn.send(Call::new(Command::get("k")));
    assert_eq!(expect_command(&mut peer).await, ["SUBSCRIBE", "ch"]);
    assert_eq!(expect_command(&mut peer).await, ["GET", "k"]);
    write(
        &mut peer,
        b">3\r\n$7\r\nmessage\r\n$5\r\nolder\r\n$5\r\nearly\r\n\
          >3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:2\r\n\
          >4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$3\r\nmid\r\n\
          $1\r\nv\r\n\
          >3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nlate\r\n",
    )
    .await;
    assert_eq!(
        answer(subscribe).await.unwrap(),
        Value::Push(vec![bulk(b"subscribe"), bulk(b"ch"), Value::Integer(2)])
    );
    assert_eq!(answer(get).await.unwrap(), bulk(b"v"));
    assert_eq!(
        next_push(&mut pushes).await,
        RespPush::message("older", "early")
    );
    assert_eq!(
        next_push(&mut pushes).await,
        RespPush::pmessage("c*", "ch", "mid")
    );
    assert_eq!(
        next_push(&mut pushes).await,
        RespPush::message("ch", "late")
    );

    // A confirmation nobody asked for is a push; the next reply still finds its call.
    let get = conn.send(Call::new(Command::get("k2")));
    assert_eq!(expect_command(&mut peer).await, ["GET", "k2"]);
    write(
        &mut peer,
        b">3\r\n$12\r\nsunsubscribe\r\n$2\r\nsh\r\n:0\r\n-ERR nope\r\n",
    )
    .await;
    let error = answer(get).await.unwrap_err();
    assert!(
        matches!(&error, CallError::Remote(e) if &e.message()[..] == b"ERR nope"),
        "{error}"
    );
    let unsolicited = next_push(&mut pushes).await;
    assert_eq!(
        unsolicited.kind,
        PushKind::Other(Bytes::from_static(b"sunsubscribe"))
    );

    // A subscribe that would get several confirmations is refused unsent.
    let refused = conn
        .send(Call::new(Command::new("SUBSCRIBE").arg("a").arg("b")))
        .await
        .unwrap();
    assert!(matches!(refused, Err(CallError::Encode(_))), "{refused:?}");
    let stats = conn.send(GetStats).await.unwrap();
    assert_eq!(stats.pushes, 4);
    assert_eq!(stats.in_flight, 0);
}

#[actix::test]
async fn resp2_messages_are_pushes_only_while_subscribed() {
    let Setup {
        conn,
        mut peer,
        mut pushes,
    } = start(ConnectionConfig::default());
    // Before subscribing, a message-shaped array is an ordinary reply.
    let lrange = conn.send(Call::new(Command::new("LRANGE").arg("l").arg(0).arg(-1)));
    expect_command(&mut peer).await;
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    write(&mut peer, message).await;
    assert_eq!(
        answer(lrange).await.unwrap().as_slice().map(<[Value]>::len),
        Some(3)
    );

    let subscribe = conn.send(Call::new(Command::subscribe("ch")));
    let ping = conn.send(Call::new(Command::ping()));
    assert_eq!(expect_command(&mut peer).await, ["SUBSCRIBE", "ch"]);
    assert_eq!(expect_command(&mut peer).await, ["PING"]);
    write(
        &mut peer,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
          *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n\
          *2\r\n$4\r\npong\r\n$0\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer(subscribe).await.unwrap(),
        Value::Array(vec![bulk(b"subscribe"), bulk(b"ch"), Value::Integer(1)])
    );
    assert_eq!(
        answer(ping).await.unwrap(),
        Value::Array(vec![bulk(b"pong"), bulk(b"")])
    );
    assert_eq!(next_push(&mut pushes).await, RespPush::message("ch", "hi"));

    // The last unsubscribe leaves subscribed mode: arrays are replies again.
    let unsubscribe = conn.send(Call::new(Command::unsubscribe("ch")));
    let lrange = conn.send(Call::new(Command::new("LRANGE").arg("l").arg(0).arg(-1)));
    expect_command(&mut peer).await;
    expect_command(&mut peer).await;
    write(&mut peer, b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n").await;
    write(&mut peer, message).await;
    answer(unsubscribe).await.unwrap();
    assert_eq!(
        answer(lrange).await.unwrap().as_slice().map(<[Value]>::len),
        Some(3)
    );
    assert!(pushes.try_recv().is_err());
}

#[actix::test]
async fn resp2_heartbeats_in_subscribed_mode_take_their_place_in_the_order() {
    tokio::time::pause();
    let config = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let Setup {
        conn,
        mut peer,
        mut pushes,
    } = start(config);
    let subscribe = conn.send(Call::new(Command::subscribe("ch")));
    expect_command(&mut peer).await;
    write(&mut peer, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n").await;
    answer(subscribe).await.unwrap();

    // A quiet second: the connection pings; redis answers ["pong", ""] in this mode,
    // with a message before it.
    assert_eq!(expect_command(&mut peer).await, ["PING"]);
    write(
        &mut peer,
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\na\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n",
    )
    .await;
    assert_eq!(next_push(&mut pushes).await, RespPush::message("ch", "a"));

    // The pong answered the ping, not the next call.
    let unsubscribe = conn.send(Call::new(Command::unsubscribe("ch")));
    assert_eq!(expect_command(&mut peer).await, ["UNSUBSCRIBE", "ch"]);
    write(&mut peer, b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n").await;
    let reply = answer(unsubscribe).await.unwrap();
    assert_eq!(reply.as_slice().unwrap()[0], bulk(b"unsubscribe"));
    let stats = conn.send(GetStats).await.unwrap();
    assert!(stats.pings_sent >= 1);
    assert!(stats.rtt.is_some(), "the pong completed the heartbeat");
}

/// A scripted redis behind a memory listener: for each reply, reads one command and
/// writes the reply's raw bytes; returns the commands it read and keeps the stream
/// open until the test ends.
fn script(
    mut listener: MemoryListener,
    replies: Vec<&'static [u8]>,
) -> JoinHandle<(Vec<Vec<String>>, DuplexStream)> {
    tokio::spawn(async move {
        let stream = listener.accept().await.expect("a connection");
        let mut peer = Framed::new(stream, RespCodec::default());
        let mut commands = Vec::new();
        for reply in replies {
            commands.push(expect_command(&mut peer).await);
            write(&mut peer, reply).await;
        }
        (commands, peer.into_inner())
    })
}

fn handshake_error(error: &ConnectError) -> &HandshakeError {
    let ConnectError::Handshake { layer, source, .. } = error else {
        panic!("not a handshake error: {error:?}");
    };
    assert_eq!(*layer, "resp");
    source.downcast_ref().expect("a HandshakeError")
}

#[actix::test]
async fn auto_falls_back_to_resp2_when_the_server_has_no_hello() {
    let network = MemoryNetwork::new();
    let listener = network.bind("old-redis");
    let authority = listener.authority().clone();
    let server = script(
        listener,
        vec![
            b"-ERR unknown command 'HELLO'\r\n",
            b"+OK\r\n",
            b"+OK\r\n",
            b"+OK\r\n",
        ],
    );
    let connector = RespConnector::new(network.connector())
        .username("app")
        .password("secret")
        .client_name("billing")
        .database(2);
    connector.connect(&authority).await.expect("connected");
    let (commands, _stream) = server.await.unwrap();
    assert_eq!(
        commands,
        [
            vec!["HELLO", "3", "AUTH", "app", "secret", "SETNAME", "billing"],
            vec!["AUTH", "app", "secret"],
            vec!["CLIENT", "SETNAME", "billing"],
            vec!["SELECT", "2"],
        ]
    );
}

/// Whether a handshake error is the one a case expects.
type Expected = fn(&HandshakeError) -> bool;

#[actix::test]
async fn the_handshake_refuses_what_it_must() {
    let network = MemoryNetwork::new();
    let cases: Vec<(RespVersion, Vec<&'static [u8]>, Expected)> = vec![
        // RESP3 demanded from a server without it.
        (
            RespVersion::Resp3,
            vec![b"-NOPROTO unsupported protocol version\r\n"],
            |e| matches!(e, HandshakeError::NoResp3(_)),
        ),
        // A password required and none given.
        (
            RespVersion::Auto,
            vec![b"-NOAUTH HELLO must be called with the client already authenticated\r\n"],
            |e| matches!(e, HandshakeError::Auth(_)),
        ),
        // A reply followed by bytes nobody asked for.
        (RespVersion::Auto, vec![b"%0\r\n+SURPRISE\r\n"], |e| {
            matches!(e, HandshakeError::Leftover(11))
        }),
        // A push instead of a reply.
        (
            RespVersion::Auto,
            vec![b">2\r\n$10\r\ninvalidate\r\n_\r\n"],
            |e| matches!(e, HandshakeError::Unexpected { step: "HELLO", .. }),
        ),
    ];
    for (i, (version, replies, expected)) in cases.into_iter().enumerate() {
        let listener = network.bind(&format!("redis-{i}"));
        let authority = listener.authority().clone();
        let server = script(listener, replies);
        let connector = RespConnector::new(network.connector()).version(version);
        let error = connector.connect(&authority).await.unwrap_err();
        assert!(expected(handshake_error(&error)), "case {i}: {error}");
        drop(server.await.unwrap());
    }

    // The server closes the connection instead of answering.
    let mut listener = network.bind("closing");
    let authority = listener.authority().clone();
    let server = tokio::spawn(async move { drop(listener.accept().await) });
    let error = RespConnector::new(network.connector())
        .connect(&authority)
        .await
        .unwrap_err();
    assert!(
        matches!(
            handshake_error(&error),
            HandshakeError::Closed { step: "HELLO" }
        ),
        "{error}"
    );
    server.await.unwrap();
}

#[actix::test]
async fn a_silent_server_fails_the_connect_at_the_handshake_timeout() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("silent");
    let authority = listener.authority().clone();
    // Accepts and never answers, holding the stream open.
    let server = tokio::spawn(async move {
        let stream = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let connector =
        RespConnector::new(network.connector()).handshake_timeout(Duration::from_secs(2));
    let error = connector.connect(&authority).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Timeout { after, .. } if after == Duration::from_secs(2)),
        "{error}"
    );
    server.abort();
}

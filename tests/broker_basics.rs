//! The Broker and the server side end to end over loopback TCP: requests reach their
//! handlers and come back to their callers, and subscribers get what producers publish.

mod forward;

use forward::forward;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use switchboard::broker::{ProducerId, Publish, Request};
use switchboard::protocol::frame::FrameProtocol;
use switchboard::protocol::RemoteError;
use switchboard::server::{Listener, Route, ServerBroker, ServerConfig, ServerRequest};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Broker, Pool};

struct Echo;
impl Actor for Echo {
    type Context = Context<Self>;
}
impl Handler<ServerRequest> for Echo {
    type Result = Result<Bytes, RemoteError>;
    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        Ok(request.payload)
    }
}

#[actix::test]
async fn request_and_publish_round_trip_over_tcp() {
    let server = ServerBroker::start(ServerConfig::default()).unwrap();
    server
        .send(Route {
            route: Some(Bytes::from_static(b"echo")),
            handler: Echo.start().recipient(),
        })
        .await
        .unwrap();
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let _listener = Listener::builder(socket, server.clone()).start();

    let authority = Authority::tcp("127.0.0.1", address.port());
    let broker = Broker::builder(
        Pool::builder(TcpConnector::new(), FrameProtocol::default()),
        authority,
    )
    .start();

    let answer = broker.request(Request::new("echo", "hello")).await.unwrap();
    assert_eq!(answer, Bytes::from_static(b"hello"));

    let (subscriber, mut rx) = forward();
    broker.subscribe("news", subscriber).await.unwrap();
    for n in 0..10u32 {
        let confirmed = broker
            .publish(Publish::ordered(
                ProducerId(1),
                "news",
                n.to_be_bytes().to_vec(),
            ))
            .await
            .unwrap();
        assert_eq!(confirmed.seq, u64::from(n) + 1);
    }
    for n in 0..10u32 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivery.payload, Bytes::from(n.to_be_bytes().to_vec()));
    }
}

//! An actor that forwards every message it gets to a channel: for tests that give
//! switchboard a `Recipient` (a subscriber, a pushes recipient) and then read what
//! arrived. A test file uses it with `mod forward;`.

use actix::{Actor, Context, Handler, Message, Recipient};
use tokio::sync::mpsc;

/// Forwards each `M` to its channel; a message that arrives after the receiver is
/// gone is dropped.
pub struct Forward<M>(mpsc::UnboundedSender<M>);

impl<M: 'static> Actor for Forward<M> {
    type Context = Context<Self>;
}

impl<M> Handler<M> for Forward<M>
where
    M: Message<Result = ()> + 'static,
{
    type Result = ();

    fn handle(&mut self, message: M, _: &mut Context<Self>) {
        let _ = self.0.send(message);
    }
}

/// Starts a [`Forward`] (inside an actix system) and returns its recipient and the
/// channel its messages arrive on.
pub fn forward<M>() -> (Recipient<M>, mpsc::UnboundedReceiver<M>)
where
    M: Message<Result = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::unbounded_channel();
    (Forward(sender).start().recipient(), receiver)
}

//! [`Probe`]: an actor that records what it receives, for assertions with timeouts.

use std::fmt;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, Message, Recipient};
use tokio::sync::mpsc;

/// Messages a probe holds before it counts an overflow; a test that lets more pile up
/// without reading them has a bug, and the next assertion says so.
const PROBE_CAPACITY: usize = 1 << 20;

/// The actor behind a [`Probe`]: forwards every `M` it handles to the probe.
pub struct ProbeActor<M> {
    sender: mpsc::Sender<M>,
}

impl<M> fmt::Debug for ProbeActor<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeActor").finish_non_exhaustive()
    }
}

impl<M: 'static> Actor for ProbeActor<M> {
    type Context = Context<Self>;
}

impl<M> Handler<M> for ProbeActor<M>
where
    M: Message<Result = ()> + Send + 'static,
{
    type Result = ();

    /// Records the message.
    fn handle(&mut self, message: M, _: &mut Context<Self>) {
        if self.sender.try_send(message).is_err() {
            // Full: the overflow shows up as a missing message in the test's
            // assertions; a closed probe no longer cares.
            tracing::warn!("probe full: message not recorded");
        }
    }
}

/// Records messages of type `M` sent to its [`recipient`](Probe::recipient) and lets a
/// test assert on them, each wait bounded by a timeout.
pub struct Probe<M: 'static> {
    addr: Addr<ProbeActor<M>>,
    receiver: mpsc::Receiver<M>,
}

impl<M> fmt::Debug for Probe<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl<M> Probe<M>
where
    M: Message<Result = ()> + Send + fmt::Debug + 'static,
{
    /// Starts a probe actor in the current arbiter.
    pub fn start() -> Self {
        let (sender, receiver) = mpsc::channel(PROBE_CAPACITY);
        let addr = ProbeActor { sender }.start();
        Self { addr, receiver }
    }

    /// Where to send the messages to record.
    pub fn recipient(&self) -> Recipient<M> {
        self.addr.clone().recipient()
    }

    /// The probe actor's address.
    pub fn addr(&self) -> &Addr<ProbeActor<M>> {
        &self.addr
    }

    /// The next message, waiting at most `timeout`.
    ///
    /// # Panics
    /// If no message arrives in time.
    pub async fn expect(&mut self, timeout: Duration) -> M {
        match tokio::time::timeout(timeout, self.receiver.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("probe closed while a message was expected"),
            Err(_) => panic!("no message within {timeout:?}"),
        }
    }

    /// Waits `during` and asserts that no message arrives. Returns early if the probe
    /// has stopped, since no message can arrive then.
    ///
    /// # Panics
    /// If a message arrives.
    pub async fn expect_none(&mut self, during: Duration) {
        if let Ok(Some(message)) = tokio::time::timeout(during, self.receiver.recv()).await {
            panic!("expected no message for {during:?}, got {message:?}");
        }
    }

    /// The first message that matches `predicate` within `timeout`; messages that do not
    /// match are dropped.
    ///
    /// # Panics
    /// If no matching message arrives in time.
    pub async fn within(&mut self, timeout: Duration, mut predicate: impl FnMut(&M) -> bool) -> M {
        let wait = async {
            while let Some(message) = self.receiver.recv().await {
                if predicate(&message) {
                    return Some(message);
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("probe closed before a matching message arrived"),
            Err(_) => panic!("no matching message within {timeout:?}"),
        }
    }

    /// The next message if one is already here.
    pub fn try_next(&mut self) -> Option<M> {
        self.receiver.try_recv().ok()
    }

    /// Every message already here.
    pub fn drain(&mut self) -> Vec<M> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

//! In-memory transports: duplex pipes to named listeners, for tests without sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::Connector;
use crate::{Authority, ConnectError};

/// Bytes each direction of an in-memory pipe buffers before the writer waits.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Connections a listener holds before `accept` takes them; past it, connects are
/// refused rather than queued without bound.
const ACCEPT_BACKLOG: usize = 128;

/// A registry of named in-memory listeners. Clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    listeners: Arc<Mutex<HashMap<Arc<str>, mpsc::Sender<DuplexStream>>>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens at `memory://name`, replacing any earlier listener of that name.
    pub fn bind(&self, name: &str) -> MemoryListener {
        let (sender, receiver) = mpsc::channel(ACCEPT_BACKLOG);
        self.lock().insert(name.into(), sender);
        MemoryListener {
            authority: Authority::memory(name),
            receiver,
        }
    }

    /// A connector that opens pipes to this network's listeners.
    pub fn connector(&self) -> MemoryConnector {
        MemoryConnector {
            network: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, mpsc::Sender<DuplexStream>>> {
        // A panic while holding this lock cannot leave the map half-updated, so a
        // poisoned lock is still safe to use.
        self.listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Accepts in-memory connections made to its name.
#[derive(Debug)]
pub struct MemoryListener {
    authority: Authority,
    receiver: mpsc::Receiver<DuplexStream>,
}

impl MemoryListener {
    /// The authority clients connect to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The server side of the next connection, or `None` once the network dropped
    /// this listener (another `bind` of the same name).
    pub async fn accept(&mut self) -> Option<DuplexStream> {
        self.receiver.recv().await
    }
}

/// Opens in-memory pipes to a [`MemoryNetwork`]'s listeners.
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    network: MemoryNetwork,
}

impl Connector for MemoryConnector {
    type Io = DuplexStream;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<DuplexStream, ConnectError>> {
        let refused = || ConnectError::Refused {
            authority: authority.clone(),
        };
        let result = match authority {
            Authority::Memory(name) => match self.network.lock().get(name) {
                Some(listener) => {
                    let (client, server) = tokio::io::duplex(PIPE_CAPACITY);
                    // A full backlog or a dropped listener is a refusal, as a full
                    // accept queue is for TCP.
                    listener
                        .try_send(server)
                        .map(|()| client)
                        .map_err(|_| refused())
                }
                None => Err(refused()),
            },
            other => Err(ConnectError::Unsupported {
                authority: other.clone(),
            }),
        };
        futures::future::ready(result).boxed_local()
    }
}

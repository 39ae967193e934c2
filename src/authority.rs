//! [`Authority`]: where a connection goes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a connection goes: a TCP host and port, a Unix socket path, or the name of an
/// in-memory listener. The Pool keys its groups by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Authority {
    /// A TCP peer: a host name or IP address, and a port.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: Arc<str>,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket at this path.
    Unix(Arc<PathBuf>),
    /// A listener on a [`MemoryNetwork`](crate::transport::MemoryNetwork), by name.
    Memory(Arc<str>),
}

impl Authority {
    /// A TCP authority.
    pub fn tcp(host: impl Into<Arc<str>>, port: u16) -> Self {
        Self::Tcp {
            host: host.into(),
            port,
        }
    }

    /// A Unix socket authority.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::Unix(Arc::new(path.into()))
    }

    /// An in-memory authority.
    pub fn memory(name: impl Into<Arc<str>>) -> Self {
        Self::Memory(name.into())
    }
}

impl From<std::net::SocketAddr> for Authority {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::tcp(addr.ip().to_string(), addr.port())
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Memory(name) => write!(f, "memory://{name}"),
        }
    }
}

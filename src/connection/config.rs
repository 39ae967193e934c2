//! [`ConnectionConfig`]: the limits and timers of one Connection.

use std::time::Duration;

use crate::ConfigError;

/// The limits and timers of one [`Connection`](crate::Connection).
///
/// Build it with [`ConnectionConfig::builder`]; `build()` checks that the values make
/// sense together.
///
/// With the `serde` feature it can be read from a file (see `docs/config.md`): fields
/// are named as the builder's setters, durations are written as `"250ms"`, `"5s"` or
/// `"1m 30s"`, missing fields take their defaults, unknown ones are an error, and the
/// values are checked as `build()` checks them.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(
        try_from = "file::ConnectionConfigFile",
        into = "file::ConnectionConfigFile"
    )
)]
pub struct ConnectionConfig {
    /// Timeout of a call that does not set its own.
    pub(crate) call_timeout: Duration,
    /// A ping is sent when nothing has arrived for this long.
    pub(crate) heartbeat_interval: Duration,
    /// The connection closes when nothing has arrived for this long.
    pub(crate) heartbeat_timeout: Duration,
    /// Calls awaiting a reply, at most; past it calls fail with `Overloaded`.
    pub(crate) max_in_flight: usize,
    /// Bytes written but not yet taken by the peer, at most; past it calls fail with
    /// `Overloaded`.
    pub(crate) max_write_buffer: usize,
    /// How long a graceful close waits for calls in flight, when `Close` gives no timeout.
    pub(crate) close_timeout: Duration,
    /// Calls that may wait for room past `max_in_flight`; 0: none, `Overloaded` at once.
    pub(crate) max_waiting_calls: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            max_write_buffer: 4 * 1024 * 1024,
            close_timeout: Duration::from_secs(10),
            max_waiting_calls: 0,
        }
    }
}

impl ConnectionConfig {
    /// Timeout of a call that does not set its own.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// A ping is sent when nothing has arrived for this long.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The connection closes when nothing has arrived for this long.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Calls awaiting a reply, at most; past it calls fail with `Overloaded`.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Bytes written but not yet taken by the peer, at most; past it calls fail with
    /// `Overloaded`.
    pub fn max_write_buffer(&self) -> usize {
        self.max_write_buffer
    }

    /// How long a graceful close waits for calls in flight, when `Close` gives no timeout.
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// Calls that may wait for room past `max_in_flight`; 0 means none (a call past
    /// `max_in_flight` fails with `Overloaded` at once).
    pub fn max_waiting_calls(&self) -> usize {
        self.max_waiting_calls
    }

    /// A builder starting from the defaults.
    pub fn builder() -> ConnectionConfigBuilder {
        ConnectionConfigBuilder {
            config: Self::default(),
        }
    }
}

/// Builds a [`ConnectionConfig`]; see [`ConnectionConfig::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ConnectionConfigBuilder {
    config: ConnectionConfig,
}

impl ConnectionConfigBuilder {
    /// Timeout of a call (or a [`SendFrame`](crate::SendFrame)) that does not set its
    /// own. Defaults to 30 seconds.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = timeout;
        self
    }

    /// A ping is sent when nothing has arrived from the peer for this long. Defaults to
    /// 10 seconds.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// The connection closes with `HeartbeatTimeout` when nothing has arrived from the
    /// peer for this long (not one byte: a frame arriving slowly keeps it open), and
    /// with `WriteStalled` when bytes wait for the peer and it takes none of them for
    /// this long; it must be longer than the heartbeat interval. Defaults to
    /// 30 seconds.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Calls awaiting a reply, at most (for in-order protocols, requests in the
    /// pipeline, abandoned ones included). Also bounds the [`Deliver`](crate::Deliver)ed
    /// frames waiting for room in the write buffer that no sender's queue counts.
    /// Defaults to 4096.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// Bytes written but not yet taken by the peer, at most. Defaults to 4 MiB.
    pub fn max_write_buffer(mut self, bytes: usize) -> Self {
        self.config.max_write_buffer = bytes;
        self
    }

    /// How long a graceful close waits for calls in flight when the `Close` message
    /// names no timeout. Defaults to 10 seconds.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Calls that may wait for room past `max_in_flight`, first come first served, each
    /// bounded by its own timeout (or `call_timeout`), after which it fails with
    /// [`CallError::Timeout`](crate::CallError::Timeout). Past this many waiting, a call
    /// fails at once with [`Overload::Waiting`](crate::Overload::Waiting). A waiting call
    /// has not reached the wire: a graceful close fails it with
    /// [`CallError::Closing`](crate::CallError::Closing), a connection that stops with
    /// [`CallError::Closed`](crate::CallError::Closed). 0 keeps every call past
    /// `max_in_flight` failing at once with [`Overload::InFlight`](crate::Overload::InFlight),
    /// so that a caller with somewhere else to go (another connection, another server)
    /// learns at once. A full write buffer is not waited for: a peer that does not
    /// read is not a burst. Defaults to 0.
    pub fn max_waiting_calls(mut self, max: usize) -> Self {
        self.config.max_waiting_calls = max;
        self
    }

    /// Checks the settings and returns the config.
    pub fn build(self) -> Result<ConnectionConfig, ConfigError> {
        let config = self.config;
        if config.call_timeout.is_zero() {
            return Err(ConfigError::new(
                "call_timeout",
                "must be greater than zero",
            ));
        }
        if config.heartbeat_interval.is_zero() {
            return Err(ConfigError::new(
                "heartbeat_interval",
                "must be greater than zero",
            ));
        }
        if config.heartbeat_timeout <= config.heartbeat_interval {
            return Err(ConfigError::new(
                "heartbeat_timeout",
                format!(
                    "{:?} must be longer than heartbeat_interval {:?}",
                    config.heartbeat_timeout, config.heartbeat_interval
                ),
            ));
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if config.max_write_buffer == 0 {
            return Err(ConfigError::new(
                "max_write_buffer",
                "must be at least 1 byte",
            ));
        }
        Ok(config)
    }
}

/// [`ConnectionConfig`] as a file has it: every field, unchecked. Deserializing a
/// `ConnectionConfig` reads this and then runs it through the builder, so a file
/// cannot make a config that `build()` would refuse.
#[cfg(feature = "serde")]
mod file {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::{ConnectionConfig, ConnectionConfigBuilder};
    use crate::ConfigError;

    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub(super) struct ConnectionConfigFile {
        #[serde(with = "humantime_serde")]
        call_timeout: Duration,
        #[serde(with = "humantime_serde")]
        heartbeat_interval: Duration,
        #[serde(with = "humantime_serde")]
        heartbeat_timeout: Duration,
        max_in_flight: usize,
        max_write_buffer: usize,
        #[serde(with = "humantime_serde")]
        close_timeout: Duration,
        max_waiting_calls: usize,
    }

    impl Default for ConnectionConfigFile {
        fn default() -> Self {
            ConnectionConfig::default().into()
        }
    }

    impl From<ConnectionConfig> for ConnectionConfigFile {
        fn from(c: ConnectionConfig) -> Self {
            Self {
                call_timeout: c.call_timeout,
                heartbeat_interval: c.heartbeat_interval,
                heartbeat_timeout: c.heartbeat_timeout,
                max_in_flight: c.max_in_flight,
                max_write_buffer: c.max_write_buffer,
                close_timeout: c.close_timeout,
                max_waiting_calls: c.max_waiting_calls,
            }
        }
    }

    impl TryFrom<ConnectionConfigFile> for ConnectionConfig {
        type Error = ConfigError;

        fn try_from(f: ConnectionConfigFile) -> Result<Self, ConfigError> {
            ConnectionConfigBuilder {
                config: ConnectionConfig {
                    call_timeout: f.call_timeout,
                    heartbeat_interval: f.heartbeat_interval,
                    heartbeat_timeout: f.heartbeat_timeout,
                    max_in_flight: f.max_in_flight,
                    max_write_buffer: f.max_write_buffer,
                    close_timeout: f.close_timeout,
                    max_waiting_calls: f.max_waiting_calls,
                },
            }
            .build()
        }
    }
}

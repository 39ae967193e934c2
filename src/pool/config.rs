//! [`PoolConfig`]: capacity, waiting, health and restart settings of a Pool.

use std::time::Duration;

use crate::ConfigError;

/// How a [`Pool`](super::Pool) sizes, checks and replaces its connections.
///
/// Capacity settings (`min_idle`, `max_size`) apply to each authority;
/// `max_connections` caps all authorities together. Build it with
/// [`PoolConfig::builder`], whose setters document each setting and its default;
/// `build()` checks that the values make sense together, and a config exists only
/// once checked. `Debug` shows the values.
///
/// With the `serde` feature it can be read from a file (see `docs/config.md`): fields
/// are named as the builder's setters, durations are written as `"250ms"`, `"5s"` or
/// `"1m 30s"`, an optional one as `"off"` to turn it off, missing fields take their
/// defaults, unknown ones are an error, and the values are checked as `build()`
/// checks them.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(try_from = "file::PoolConfigFile", into = "file::PoolConfigFile")
)]
pub struct PoolConfig {
    /// Connections kept open per authority even when nobody uses them.
    pub(crate) min_idle: usize,
    /// Connections per authority, at most.
    pub(crate) max_size: usize,
    /// Connections across all authorities, at most.
    pub(crate) max_connections: usize,
    /// Checkouts queued per authority, at most; past it checkouts fail at once.
    pub(crate) max_waiters: usize,
    /// How long a checkout waits for a connection.
    pub(crate) checkout_timeout: Duration,
    /// How long one connect attempt may take (around the connector's own timeout).
    pub(crate) connect_timeout: Duration,
    /// A connection idle for longer than this is pinged before a checkout gets it.
    pub(crate) test_on_checkout_after: Option<Duration>,
    /// Idle connections are pinged this often.
    pub(crate) health_check_interval: Option<Duration>,
    /// How long a health-check ping may take before the connection is discarded.
    pub(crate) health_check_timeout: Duration,
    /// Idle connections above `min_idle` close after this long unused.
    pub(crate) idle_timeout: Option<Duration>,
    /// Connections are replaced after this long, less a random tenth at most.
    pub(crate) max_lifetime: Option<Duration>,
    /// The first delay before reconnecting after a failure.
    pub(crate) backoff_base: Duration,
    /// The longest delay between reconnect attempts.
    pub(crate) backoff_max: Duration,
    /// Consecutive connect failures after which an authority is marked down.
    pub(crate) failure_threshold: u32,
    /// Calls in flight per connection past which shared use opens another connection.
    pub(crate) grow_threshold: usize,
    /// Connect attempts under way at once per authority.
    pub(crate) max_connecting: usize,
    /// How long a returned lease with calls still in flight may take to go quiet
    /// before its connection is closed instead of reused.
    pub(crate) return_drain_timeout: Duration,
    /// Whether connections are reused; if not, every checkout gets a fresh one.
    pub(crate) reuse: bool,
    /// How often the pool reaps idle and expired connections and tops up `min_idle`.
    pub(crate) maintenance_interval: Duration,
    /// How long `Drain` and `Close` wait for connections to close when they name no
    /// timeout.
    pub(crate) shutdown_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_idle: 0,
            max_size: 10,
            max_connections: 1024,
            max_waiters: 4096,
            checkout_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            test_on_checkout_after: Some(Duration::from_secs(10)),
            health_check_interval: Some(Duration::from_secs(30)),
            health_check_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            failure_threshold: 5,
            grow_threshold: 64,
            max_connecting: 64,
            return_drain_timeout: Duration::from_secs(1),
            reuse: true,
            maintenance_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Connections kept open per authority even when nobody uses them.
    pub fn min_idle(&self) -> usize {
        self.min_idle
    }

    /// Connections per authority, at most.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Connections across all authorities, at most.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Checkouts queued per authority, at most; past it checkouts fail at once.
    pub fn max_waiters(&self) -> usize {
        self.max_waiters
    }

    /// How long a checkout waits for a connection.
    pub fn checkout_timeout(&self) -> Duration {
        self.checkout_timeout
    }

    /// How long one connect attempt may take (around the connector's own timeout).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A connection idle for longer than this is pinged before a checkout gets it.
    pub fn test_on_checkout_after(&self) -> Option<Duration> {
        self.test_on_checkout_after
    }

    /// Idle connections are pinged this often.
    pub fn health_check_interval(&self) -> Option<Duration> {
        self.health_check_interval
    }

    /// How long a health-check ping may take before the connection is discarded.
    pub fn health_check_timeout(&self) -> Duration {
        self.health_check_timeout
    }

    /// Idle connections above `min_idle` close after this long unused.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// Connections are replaced after this long, less a random tenth at most.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// The first delay before reconnecting after a failure.
    pub fn backoff_base(&self) -> Duration {
        self.backoff_base
    }

    /// The longest delay between reconnect attempts.
    pub fn backoff_max(&self) -> Duration {
        self.backoff_max
    }

    /// Consecutive connect failures after which an authority is marked down.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// Calls in flight per connection past which shared use opens another connection.
    pub fn grow_threshold(&self) -> usize {
        self.grow_threshold
    }

    /// Connect attempts under way at once per authority.
    pub fn max_connecting(&self) -> usize {
        self.max_connecting
    }

    /// How long a returned lease with calls still in flight may take to go quiet
    /// before its connection is closed instead of reused.
    pub fn return_drain_timeout(&self) -> Duration {
        self.return_drain_timeout
    }

    /// Whether connections are reused; if not, every checkout gets a fresh one.
    pub fn reuse(&self) -> bool {
        self.reuse
    }

    /// How often the pool reaps idle and expired connections and tops up `min_idle`.
    pub fn maintenance_interval(&self) -> Duration {
        self.maintenance_interval
    }

    /// How long `Drain` and `Close` wait for connections to close when they name no
    /// timeout.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// A builder starting from the defaults.
    pub fn builder() -> PoolConfigBuilder {
        PoolConfigBuilder {
            config: Self::default(),
        }
    }

    /// Checks limits given at run time (`Resize`) the way `build()` checks them.
    pub(crate) fn check_sizes(min_idle: usize, max_size: usize) -> Result<(), ConfigError> {
        if max_size == 0 {
            return Err(ConfigError::new("max_size", "must be at least 1"));
        }
        if min_idle > max_size {
            return Err(ConfigError::new(
                "min_idle",
                format!("{min_idle} is more than max_size {max_size}"),
            ));
        }
        Ok(())
    }
}

/// Builds a [`PoolConfig`]; see [`PoolConfig::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PoolConfigBuilder {
    config: PoolConfig,
}

impl PoolConfigBuilder {
    /// Connections kept open per authority even when nobody uses them; an eager pool
    /// opens them before it is handed out. Defaults to 0.
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// Connections per authority, at most. Defaults to 10.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Connections across all authorities, at most. When it is reached, an authority
    /// wanting more gets room from another's idle connections (above their
    /// `min_idle`), or waits for one to close. Defaults to 1024.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Checkouts queued per authority, at most (at least 1); past it a checkout fails
    /// at once with [`PoolError::TooManyWaiters`](crate::PoolError::TooManyWaiters).
    /// Defaults to 4096.
    pub fn max_waiters(mut self, max: usize) -> Self {
        self.config.max_waiters = max;
        self
    }

    /// How long a checkout waits for a connection before it fails with
    /// [`PoolError::Timeout`](crate::PoolError::Timeout). Defaults to 30 seconds.
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout = timeout;
        self
    }

    /// How long one connect attempt may take in all; it bounds the connector's own
    /// timeout from above. Defaults to 10 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// A connection idle for longer than this is pinged before a checkout gets it, and
    /// discarded if the ping fails; `None` never tests on checkout. Defaults to 10
    /// seconds.
    pub fn test_on_checkout_after(mut self, idle: Option<Duration>) -> Self {
        self.config.test_on_checkout_after = idle;
        self
    }

    /// Idle connections are pinged this often (on top of each connection's own
    /// heartbeat) and discarded if the ping fails; `None` turns this off. Defaults to
    /// 30 seconds.
    pub fn health_check_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.health_check_interval = interval;
        self
    }

    /// How long a health-check ping may take. Defaults to 2 seconds.
    pub fn health_check_timeout(mut self, timeout: Duration) -> Self {
        self.config.health_check_timeout = timeout;
        self
    }

    /// Idle connections above `min_idle` close after this long unused; `None` keeps
    /// them. Defaults to 10 minutes.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Connections are replaced after this long, each less a random amount up to a
    /// tenth of it so that a pool does not expire all at once; `None` keeps them for
    /// ever. Defaults to 30 minutes.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// The first delay before reconnecting after a connection failed; each further
    /// consecutive connect failure doubles it, and each delay is jittered. Defaults to
    /// 100 milliseconds.
    pub fn backoff_base(mut self, delay: Duration) -> Self {
        self.config.backoff_base = delay;
        self
    }

    /// The longest delay between reconnect attempts, and so the longest an authority
    /// stays marked down once it is back. Defaults to 5 seconds.
    pub fn backoff_max(mut self, delay: Duration) -> Self {
        self.config.backoff_max = delay;
        self
    }

    /// Consecutive connect failures after which an authority is marked down: its
    /// checkouts fail at once with the last connect error until a probe connects
    /// again. Defaults to 5.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.config.failure_threshold = failures;
        self
    }

    /// The load per connection past which shared use opens more connections (up to
    /// `max_size`): shared use wants one connection per `grow_threshold` calls handed
    /// out, and opens what it wants at once, so a burst grows the pool before its
    /// calls are written. Defaults to 64.
    pub fn grow_threshold(mut self, in_flight: usize) -> Self {
        self.config.grow_threshold = in_flight;
        self
    }

    /// Connect attempts under way at once per authority; the rest of what the
    /// authority wants opens as these finish. Filling a large pool, or refilling it
    /// after its server restarted, then does not send the server more connects than
    /// its listen backlog takes (those beyond it are dropped, and the kernel retries
    /// them only a second later). Defaults to 64.
    pub fn max_connecting(mut self, attempts: usize) -> Self {
        self.config.max_connecting = attempts;
        self
    }

    /// How long a lease returned with calls still in flight (its borrower dropped a
    /// reply unread) may take to go quiet before its connection is closed instead of
    /// reused. Defaults to 1 second.
    pub fn return_drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.return_drain_timeout = timeout;
        self
    }

    /// Whether connections are reused. With `false` each checkout gets a connection
    /// nobody used before, and a returned lease's connection is closed: for peers that
    /// mishandle long-lived connections. Defaults to `true`.
    pub fn reuse(mut self, reuse: bool) -> Self {
        self.config.reuse = reuse;
        self
    }

    /// How often the pool reaps idle and expired connections, runs health checks and
    /// tops authorities up to `min_idle`. Defaults to 1 second.
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.config.maintenance_interval = interval;
        self
    }

    /// How long `Drain` and `Close` wait for connections to close when the message
    /// names no timeout; past it the rest are aborted. Defaults to 10 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Checks the settings and returns the config.
    pub fn build(self) -> Result<PoolConfig, ConfigError> {
        let c = self.config;
        PoolConfig::check_sizes(c.min_idle, c.max_size)?;
        if c.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        if c.min_idle > c.max_connections {
            return Err(ConfigError::new(
                "min_idle",
                format!(
                    "{} is more than max_connections {}",
                    c.min_idle, c.max_connections
                ),
            ));
        }
        if c.max_waiters == 0 {
            return Err(ConfigError::new(
                "max_waiters",
                "must be at least 1 (a checkout waits at least for the connection opened for it)",
            ));
        }
        let positive = [
            ("checkout_timeout", c.checkout_timeout),
            ("connect_timeout", c.connect_timeout),
            ("health_check_timeout", c.health_check_timeout),
            ("backoff_base", c.backoff_base),
            ("maintenance_interval", c.maintenance_interval),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        let optional = [
            ("test_on_checkout_after", c.test_on_checkout_after),
            ("health_check_interval", c.health_check_interval),
            ("idle_timeout", c.idle_timeout),
            ("max_lifetime", c.max_lifetime),
        ];
        for (field, value) in optional {
            if value.is_some_and(|value| value.is_zero()) {
                return Err(ConfigError::new(
                    field,
                    "must be greater than zero (None turns it off)",
                ));
            }
        }
        if c.backoff_max < c.backoff_base {
            return Err(ConfigError::new(
                "backoff_max",
                format!(
                    "{:?} is shorter than backoff_base {:?}",
                    c.backoff_max, c.backoff_base
                ),
            ));
        }
        if c.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if c.grow_threshold == 0 {
            return Err(ConfigError::new("grow_threshold", "must be at least 1"));
        }
        if c.max_connecting == 0 {
            return Err(ConfigError::new("max_connecting", "must be at least 1"));
        }
        Ok(c)
    }
}

/// [`PoolConfig`] as a file has it: every field, unchecked. Deserializing a
/// `PoolConfig` reads this and then runs it through the builder, so a file cannot
/// make a config that `build()` would refuse.
#[cfg(feature = "serde")]
mod file {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::{PoolConfig, PoolConfigBuilder};
    use crate::ConfigError;

    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub(super) struct PoolConfigFile {
        min_idle: usize,
        max_size: usize,
        max_connections: usize,
        max_waiters: usize,
        #[serde(with = "humantime_serde")]
        checkout_timeout: Duration,
        #[serde(with = "humantime_serde")]
        connect_timeout: Duration,
        #[serde(with = "optional_duration")]
        test_on_checkout_after: Option<Duration>,
        #[serde(with = "optional_duration")]
        health_check_interval: Option<Duration>,
        #[serde(with = "humantime_serde")]
        health_check_timeout: Duration,
        #[serde(with = "optional_duration")]
        idle_timeout: Option<Duration>,
        #[serde(with = "optional_duration")]
        max_lifetime: Option<Duration>,
        #[serde(with = "humantime_serde")]
        backoff_base: Duration,
        #[serde(with = "humantime_serde")]
        backoff_max: Duration,
        failure_threshold: u32,
        grow_threshold: usize,
        max_connecting: usize,
        #[serde(with = "humantime_serde")]
        return_drain_timeout: Duration,
        reuse: bool,
        #[serde(with = "humantime_serde")]
        maintenance_interval: Duration,
        #[serde(with = "humantime_serde")]
        shutdown_timeout: Duration,
    }

    impl Default for PoolConfigFile {
        fn default() -> Self {
            PoolConfig::default().into()
        }
    }

    impl From<PoolConfig> for PoolConfigFile {
        fn from(c: PoolConfig) -> Self {
            Self {
                min_idle: c.min_idle,
                max_size: c.max_size,
                max_connections: c.max_connections,
                max_waiters: c.max_waiters,
                checkout_timeout: c.checkout_timeout,
                connect_timeout: c.connect_timeout,
                test_on_checkout_after: c.test_on_checkout_after,
                health_check_interval: c.health_check_interval,
                health_check_timeout: c.health_check_timeout,
                idle_timeout: c.idle_timeout,
                max_lifetime: c.max_lifetime,
                backoff_base: c.backoff_base,
                backoff_max: c.backoff_max,
                failure_threshold: c.failure_threshold,
                grow_threshold: c.grow_threshold,
                max_connecting: c.max_connecting,
                return_drain_timeout: c.return_drain_timeout,
                reuse: c.reuse,
                maintenance_interval: c.maintenance_interval,
                shutdown_timeout: c.shutdown_timeout,
            }
        }
    }

    impl TryFrom<PoolConfigFile> for PoolConfig {
        type Error = ConfigError;

        fn try_from(f: PoolConfigFile) -> Result<Self, ConfigError> {
            PoolConfigBuilder {
                config: PoolConfig {
                    min_idle: f.min_idle,
                    max_size: f.max_size,
                    max_connections: f.max_connections,
                    max_waiters: f.max_waiters,
                    checkout_timeout: f.checkout_timeout,
                    connect_timeout: f.connect_timeout,
                    test_on_checkout_after: f.test_on_checkout_after,
                    health_check_interval: f.health_check_interval,
                    health_check_timeout: f.health_check_timeout,
                    idle_timeout: f.idle_timeout,
                    max_lifetime: f.max_lifetime,
                    backoff_base: f.backoff_base,
                    backoff_max: f.backoff_max,
                    failure_threshold: f.failure_threshold,
                    grow_threshold: f.grow_threshold,
                    max_connecting: f.max_connecting,
                    return_drain_timeout: f.return_drain_timeout,
                    reuse: f.reuse,
                    maintenance_interval: f.maintenance_interval,
                    shutdown_timeout: f.shutdown_timeout,
                },
            }
            .build()
        }
    }

    /// An optional duration: `"5s"`, or `"off"` for `None` (TOML has no null; JSON's
    /// `null` is taken too). Written back as `"off"`, so that a file written from a
    /// config reads back as the same config rather than as the default.
    mod optional_duration {
        use std::fmt;
        use std::time::Duration;

        use humantime_serde::re::humantime;
        use serde::de::{self, Deserializer, Visitor};
        use serde::Serializer;

        const OFF: &str = "off";

        pub(super) fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
                None => serializer.serialize_str(OFF),
            }
        }

        pub(super) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            deserializer.deserialize_any(OptionalDuration)
        }

        struct OptionalDuration;

        impl<'de> Visitor<'de> for OptionalDuration {
            type Value = Option<Duration>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"10m\", or \"off\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text == OFF {
                    return Ok(None);
                }
                humantime::parse_duration(text)
                    .map(Some)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(self)
            }
        }
    }
}

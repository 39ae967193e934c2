//! The `serde` feature: pool, connection and server settings read from files (TOML,
//! JSON), with human durations, defaults for what is missing, and the same checks as
//! the builders, so that a file cannot produce a config the builder would refuse.

#![cfg(feature = "serde")]

use std::time::Duration;

use serde::Deserialize;
use switchboard::server::ServerConfig;
use switchboard::{ConnectionConfig, Overflow, PoolConfig};

/// How an application might lay out its settings file (`docs/config.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    pool: PoolConfig,
    #[serde(default)]
    connection: ConnectionConfig,
    #[serde(default)]
    server: ServerConfig,
}

/// The example in the docs, parsed as the docs say, so the two cannot drift apart.
const EXAMPLE: &str = include_str!("../docs/config-example.toml");

/// Configs have no `PartialEq`; their `Debug` shows every value.
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn pool_from_toml(text: &str) -> Result<PoolConfig, toml::de::Error> {
    toml::from_str(text)
}

fn connection_from_toml(text: &str) -> Result<ConnectionConfig, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn the_documented_example_parses_into_what_it_says() {
    let settings: Settings = toml::from_str(EXAMPLE).expect("docs/config-example.toml parses");

    let pool = &settings.pool;
    assert_eq!(pool.min_idle(), 2);
    assert_eq!(pool.max_size(), 16);
    assert_eq!(pool.checkout_timeout(), Duration::from_secs(5));
    assert_eq!(pool.test_on_checkout_after(), Some(Duration::from_secs(30)));
    assert_eq!(pool.health_check_interval(), None);
    assert_eq!(pool.max_lifetime(), Some(Duration::from_secs(90 * 60)));
    assert_eq!(pool.backoff_base(), Duration::from_millis(250));
    assert_eq!(pool.failure_threshold(), 3);
    // Not in the file: the defaults.
    let defaults = PoolConfig::default();
    assert_eq!(pool.max_connections(), defaults.max_connections());
    assert_eq!(pool.grow_threshold(), defaults.grow_threshold());
    assert_eq!(pool.max_connecting(), defaults.max_connecting());
    assert_eq!(pool.shutdown_timeout(), defaults.shutdown_timeout());

    let connection = &settings.connection;
    assert_eq!(connection.heartbeat_interval(), Duration::from_secs(5));
    assert_eq!(connection.heartbeat_timeout(), Duration::from_secs(15));
    assert_eq!(connection.max_write_buffer(), 1 << 20);
    assert_eq!(
        connection.close_timeout(),
        ConnectionConfig::default().close_timeout()
    );

    let expected_server = ServerConfig::default()
        .slow_subscriber(Overflow::Drop)
        .handler_timeout(Duration::from_secs(2))
        .max_requests_per_connection(256);
    assert!(
        same(&settings.server, &expected_server),
        "{:?}",
        settings.server
    );
}

#[test]
fn the_config_guide_shows_the_example_as_it_is() {
    let guide = include_str!("../docs/config.md");
    assert!(
        guide.contains(EXAMPLE.trim()),
        "docs/config.md must show docs/config-example.toml verbatim"
    );
}

#[test]
fn an_empty_file_is_the_defaults() {
    assert!(same(&pool_from_toml("").unwrap(), &PoolConfig::default()));
    assert!(same(
        &connection_from_toml("").unwrap(),
        &ConnectionConfig::default()
    ));
    let server: ServerConfig = toml::from_str("").unwrap();
    assert!(same(&server, &ServerConfig::default()));
    let settings: Settings = toml::from_str("").unwrap();
    assert!(same(&settings.pool, &PoolConfig::default()));
}

#[test]
fn durations_are_written_for_people() {
    let pool = pool_from_toml(
        r#"
        checkout_timeout = "1m 30s"
        connect_timeout = "250ms"
        idle_timeout = "2h"
        "#,
    )
    .unwrap();
    assert_eq!(pool.checkout_timeout(), Duration::from_secs(90));
    assert_eq!(pool.connect_timeout(), Duration::from_millis(250));
    assert_eq!(pool.idle_timeout(), Some(Duration::from_secs(2 * 60 * 60)));

    let written = toml::to_string(&pool).unwrap();
    assert!(
        written.contains(r#"checkout_timeout = "1m 30s""#),
        "{written}"
    );
    assert!(
        written.contains(r#"connect_timeout = "250ms""#),
        "{written}"
    );

    let error = pool_from_toml(r#"checkout_timeout = 30"#).unwrap_err();
    assert!(error.to_string().contains("duration"), "{error}");
    let error = pool_from_toml(r#"checkout_timeout = "30 parsecs""#).unwrap_err();
    assert!(error.to_string().contains("30 parsecs"), "{error}");
}

#[test]
fn an_optional_duration_is_turned_off_with_off() {
    let pool = pool_from_toml(r#"idle_timeout = "off""#).unwrap();
    assert_eq!(pool.idle_timeout(), None);
    // JSON can say it with null too.
    let pool: PoolConfig = serde_json::from_str(r#"{"max_lifetime": null}"#).unwrap();
    assert_eq!(pool.max_lifetime(), None);
    // And "off" is how it is written, so that it reads back as off, not as the default.
    let written = toml::to_string(&pool).unwrap();
    assert!(written.contains(r#"max_lifetime = "off""#), "{written}");
    assert_eq!(pool_from_toml(&written).unwrap().max_lifetime(), None);
}

#[test]
fn toml_round_trips() {
    let pool = PoolConfig::builder()
        .min_idle(3)
        .max_size(7)
        .checkout_timeout(Duration::from_millis(1500))
        .test_on_checkout_after(None)
        .max_lifetime(Some(Duration::from_secs(3600)))
        .reuse(false)
        .build()
        .unwrap();
    let back = pool_from_toml(&toml::to_string(&pool).unwrap()).unwrap();
    assert!(same(&back, &pool), "{back:?}");

    let connection = ConnectionConfig::builder()
        .call_timeout(Duration::from_millis(750))
        .max_in_flight(12)
        .max_waiting_calls(100)
        .build()
        .unwrap();
    let back = connection_from_toml(&toml::to_string(&connection).unwrap()).unwrap();
    assert!(same(&back, &connection), "{back:?}");

    let server = ServerConfig::default()
        .slow_subscriber(Overflow::Drop)
        .mailbox(99);
    let back: ServerConfig = toml::from_str(&toml::to_string(&server).unwrap()).unwrap();
    assert!(same(&back, &server), "{back:?}");
}

#[test]
fn json_round_trips() {
    let pool = PoolConfig::builder()
        .min_idle(1)
        .idle_timeout(None)
        .backoff_max(Duration::from_secs(20))
        .build()
        .unwrap();
    let json = serde_json::to_string(&pool).unwrap();
    assert!(json.contains(r#""backoff_max":"20s""#), "{json}");
    let back: PoolConfig = serde_json::from_str(&json).unwrap();
    assert!(same(&back, &pool), "{back:?}");

    let connection = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(2))
        .heartbeat_timeout(Duration::from_secs(7))
        .build()
        .unwrap();
    let json = serde_json::to_string(&connection).unwrap();
    let back: ConnectionConfig = serde_json::from_str(&json).unwrap();
    assert!(same(&back, &connection), "{back:?}");

    let server: ServerConfig = serde_json::from_str(r#"{"slow_subscriber": "close"}"#).unwrap();
    assert!(same(&server, &ServerConfig::default()));
}

#[test]
fn an_unknown_field_is_an_error_that_names_it() {
    let error = pool_from_toml("max_sise = 4").unwrap_err();
    assert!(error.to_string().contains("max_sise"), "{error}");
    let error = connection_from_toml(r#"call_timout = "1s""#).unwrap_err();
    assert!(error.to_string().contains("call_timout"), "{error}");
    let error = toml::from_str::<ServerConfig>("mailbx = 1").unwrap_err();
    assert!(error.to_string().contains("mailbx"), "{error}");
    let error = toml::from_str::<Settings>("[pol]\nmax_size = 1").unwrap_err();
    assert!(error.to_string().contains("pol"), "{error}");
}

/// Each case is refused by the builder; the file is refused too, naming the field.
#[test]
fn values_the_builder_refuses_are_refused_naming_the_field() {
    let pool_cases = [
        ("min_idle = 5\nmax_size = 2", "min_idle"),
        ("max_size = 0", "max_size"),
        ("max_waiters = 0", "max_waiters"),
        (r#"checkout_timeout = "0s""#, "checkout_timeout"),
        (r#"idle_timeout = "0s""#, "idle_timeout"),
        ("backoff_base = \"2s\"\nbackoff_max = \"1s\"", "backoff_max"),
        ("failure_threshold = 0", "failure_threshold"),
    ];
    for (text, field) in pool_cases {
        let error = pool_from_toml(text).expect_err(text);
        assert!(error.to_string().contains(field), "{text}: {error}");
    }

    let connection_cases = [
        (r#"call_timeout = "0s""#, "call_timeout"),
        (
            "heartbeat_interval = \"10s\"\nheartbeat_timeout = \"10s\"",
            "heartbeat_timeout",
        ),
        ("max_in_flight = 0", "max_in_flight"),
        ("max_write_buffer = 0", "max_write_buffer"),
    ];
    for (text, field) in connection_cases {
        let error = connection_from_toml(text).expect_err(text);
        assert!(error.to_string().contains(field), "{text}: {error}");
    }

    let error = toml::from_str::<ServerConfig>("subscriber_queue = 0").unwrap_err();
    assert!(error.to_string().contains("subscriber_queue"), "{error}");
    let error = toml::from_str::<ServerConfig>(r#"slow_subscriber = "wait""#).unwrap_err();
    assert!(error.to_string().contains("wait"), "{error}");

    // Nested in a larger file, the error still says which field, and where.
    let error = toml::from_str::<Settings>("[pool]\nmin_idle = 5\nmax_size = 2").unwrap_err();
    assert!(error.to_string().contains("min_idle"), "{error}");
    let error = serde_json::from_str::<PoolConfig>(r#"{"max_size": 0}"#).unwrap_err();
    assert!(error.to_string().contains("max_size"), "{error}");
}

#[test]
fn a_negative_or_mistyped_number_is_refused() {
    assert!(pool_from_toml("max_size = -1").is_err());
    assert!(pool_from_toml(r#"max_size = "ten""#).is_err());
    assert!(pool_from_toml(r#"reuse = "yes""#).is_err());
}

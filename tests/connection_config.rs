//! `ConnectionConfig::builder()` refuses settings that cannot work together, naming the
//! setting at fault, and accepts the defaults and any sensible combination.

use std::time::Duration;

use switchboard::{ConnectionConfig, ConnectionConfigBuilder};

fn refused(builder: ConnectionConfigBuilder) -> &'static str {
    match builder.build() {
        Err(error) => error.field(),
        Ok(config) => panic!("expected a ConfigError, got {config:?}"),
    }
}

#[test]
fn the_defaults_are_valid() {
    let config = ConnectionConfig::builder().build().unwrap();
    assert!(config.heartbeat_timeout() > config.heartbeat_interval());
    assert!(config.max_in_flight() > 0);
    assert!(config.max_write_buffer() > 0);
}

#[test]
fn a_heartbeat_timeout_not_longer_than_the_interval_is_refused() {
    let equal = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(5));
    assert_eq!(refused(equal), "heartbeat_timeout");
    let shorter = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(1));
    assert_eq!(refused(shorter), "heartbeat_timeout");
}

#[test]
fn zero_limits_are_refused() {
    assert_eq!(
        refused(ConnectionConfig::builder().max_in_flight(0)),
        "max_in_flight"
    );
    assert_eq!(
        refused(ConnectionConfig::builder().max_write_buffer(0)),
        "max_write_buffer"
    );
}

#[test]
fn zero_durations_are_refused() {
    assert_eq!(
        refused(ConnectionConfig::builder().call_timeout(Duration::ZERO)),
        "call_timeout"
    );
    assert_eq!(
        refused(ConnectionConfig::builder().heartbeat_interval(Duration::ZERO)),
        "heartbeat_interval"
    );
}

#[test]
fn the_error_says_what_is_wrong() {
    let error = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(10))
        .heartbeat_timeout(Duration::from_secs(10))
        .build()
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("heartbeat_timeout"), "{message}");
}

#[test]
fn a_sensible_custom_config_is_kept_as_given() {
    let config = ConnectionConfig::builder()
        .call_timeout(Duration::from_millis(250))
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(3))
        .max_in_flight(1)
        .max_write_buffer(1)
        .close_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(config.call_timeout(), Duration::from_millis(250));
    assert_eq!(config.heartbeat_interval(), Duration::from_secs(1));
    assert_eq!(config.heartbeat_timeout(), Duration::from_secs(3));
    assert_eq!(config.max_in_flight(), 1);
    assert_eq!(config.max_write_buffer(), 1);
    assert_eq!(config.close_timeout(), Duration::from_secs(2));
}

//! [`RespPush`]: what redis sends unasked (pub/sub messages, invalidations), as the
//! push recipient receives it.

use bytes::Bytes;

use super::value::Value;

/// What kind of push a [`RespPush`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// A message published to a channel this connection subscribed to
    /// (`SUBSCRIBE`).
    Message,
    /// A message published to a channel matching a pattern this connection
    /// subscribed to (`PSUBSCRIBE`).
    PMessage,
    /// A message published to a shard channel this connection subscribed to
    /// (`SSUBSCRIBE`, redis 7).
    SMessage,
    /// Any other push, named by its first element: `invalidate` (client-side
    /// caching), an `sunsubscribe` that redis sends on its own when a cluster slot
    /// moves, or a kind this crate does not know. The whole push is in
    /// [`RespPush::raw`].
    Other(Bytes),
}

/// An unsolicited message from redis, for the push recipient (a
/// [`Broker`](crate::Broker), or any actor taking
/// [`Pushed<RespProtocol>`](crate::Pushed)).
///
/// For the message kinds, `channel`, `pattern` and `payload` say everything and `raw`
/// is `None`. For [`PushKind::Other`], `channel` is the push's second element if it is
/// a string (empty otherwise), `payload` is empty, and `raw` holds the whole push.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RespPush {
    /// What kind of push this is.
    pub kind: PushKind,
    /// The channel the message was published to.
    pub channel: Bytes,
    /// The pattern that matched, for [`PushKind::PMessage`].
    pub pattern: Option<Bytes>,
    /// The message.
    pub payload: Bytes,
    /// The whole push, for [`PushKind::Other`].
    pub raw: Option<Box<Value>>,
}

impl RespPush {
    /// A [`PushKind::Message`] on `channel`.
    pub fn message(channel: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            kind: PushKind::Message,
            channel: channel.into(),
            pattern: None,
            payload: payload.into(),
            raw: None,
        }
    }

    /// A [`PushKind::PMessage`] on `channel`, matched by `pattern`.
    pub fn pmessage(
        pattern: impl Into<Bytes>,
        channel: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            kind: PushKind::PMessage,
            channel: channel.into(),
            pattern: Some(pattern.into()),
            payload: payload.into(),
            raw: None,
        }
    }

    /// Reads a push's elements (a RESP3 push frame's, or a RESP2 array's that is
    /// not a reply): a message if it has a message's shape, [`PushKind::Other`]
    /// otherwise.
    pub(super) fn from_push(items: Vec<Value>) -> Self {
        match Self::from_message(items) {
            Ok(push) => push,
            Err(items) => {
                let kind = items
                    .first()
                    .and_then(Value::as_bytes)
                    .cloned()
                    .unwrap_or_default();
                let channel = items
                    .get(1)
                    .and_then(Value::as_bytes)
                    .cloned()
                    .unwrap_or_default();
                Self {
                    kind: PushKind::Other(kind),
                    channel,
                    pattern: None,
                    payload: Bytes::new(),
                    raw: Some(Box::new(Value::Push(items))),
                }
            }
        }
    }

    /// A message (`message`, `pmessage` or `smessage` followed by two or three
    /// strings), or the elements back if they are not one.
    pub(super) fn from_message(items: Vec<Value>) -> Result<Self, Vec<Value>> {
        let kind = match (items.first().and_then(Value::as_bytes), items.len()) {
            (Some(kind), 3) if &kind[..] == b"message" => PushKind::Message,
            (Some(kind), 3) if &kind[..] == b"smessage" => PushKind::SMessage,
            (Some(kind), 4) if &kind[..] == b"pmessage" => PushKind::PMessage,
            _ => return Err(items),
        };
        if !items[1..].iter().all(|item| item.as_bytes().is_some()) {
            return Err(items);
        }
        let mut strings = items.into_iter().skip(1).filter_map(Value::into_bytes);
        let mut next = || strings.next().unwrap_or_default();
        let pattern = (kind == PushKind::PMessage).then(&mut next);
        let channel = next();
        let payload = next();
        Ok(Self {
            kind,
            channel,
            pattern,
            payload,
            raw: None,
        })
    }

    /// The push as the RESP3 value redis sends for it.
    pub fn to_value(&self) -> Value {
        if let Some(raw) = &self.raw {
            return (**raw).clone();
        }
        let name: &'static [u8] = match &self.kind {
            PushKind::Message => b"message",
            PushKind::PMessage => b"pmessage",
            PushKind::SMessage => b"smessage",
            PushKind::Other(kind) => {
                return Value::Push(vec![
                    Value::Bulk(kind.clone()),
                    Value::Bulk(self.channel.clone()),
                ])
            }
        };
        let mut items = vec![Value::Bulk(Bytes::from_static(name))];
        items.extend(self.pattern.clone().map(Value::Bulk));
        items.push(Value::Bulk(self.channel.clone()));
        items.push(Value::Bulk(self.payload.clone()));
        Value::Push(items)
    }
}

/// Which subscription count a confirmation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    /// Channels and patterns (`subscribe`, `psubscribe` and their `un` forms).
    Channels,
    /// Shard channels (`ssubscribe`, `sunsubscribe`).
    Shard,
}

/// Whether `items` is a subscribe or unsubscribe confirmation (`[kind, channel or
/// nil, count]`), and which count it carries.
pub(super) fn confirmation(items: &[Value]) -> Option<(Count, i64)> {
    let [kind, channel, Value::Integer(count)] = items else {
        return None;
    };
    if !(channel.as_bytes().is_some() || channel.is_nil()) {
        return None;
    }
    let which = match &kind.as_bytes()?[..] {
        b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" => Count::Channels,
        b"ssubscribe" | b"sunsubscribe" => Count::Shard,
        _ => return None,
    };
    Some((which, *count))
}

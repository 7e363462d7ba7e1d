//! Node.js's shape of the JSON-lines protocol (`'ipc'` stdio with `serialization: 'json'`):
//! a message with a handle travels wrapped as
//! `{"cmd":"NODE_HANDLE","type":"net.Socket","msg":<the message>}`, the receiver answers
//! `{"cmd":"NODE_HANDLE_ACK"}` (or `NODE_HANDLE_NACK` when the fd did not arrive, and the
//! sender sends it again), and a sender sends no other handle until the last one is
//! acknowledged. Messages whose `cmd` starts with `NODE_` are Node's own and never reach
//! the user. (Node's `lib/internal/child_process.js`.)

#![cfg_attr(
    not(feature = "json"),
    allow(
        dead_code,
        reason = "Node's protocol lives on the JSON lines of feature json; without it only `Protocol` is used"
    )
)]

use std::os::fd::OwnedFd;
use std::sync::Mutex;

#[cfg(feature = "json")]
use serde::Serialize;
#[cfg(feature = "json")]
use serde_json::Value;

#[cfg(feature = "json")]
use super::handle::HandleType;
#[cfg(feature = "json")]
use crate::error::{Error, Result};

/// The protocol on a channel's JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// brood's: a line's handles travel with it, nothing is wrapped or acknowledged.
    #[default]
    Brood,
    /// Node.js's (`process.send`, `child.send`): a message with a handle is wrapped in a
    /// `NODE_HANDLE` message and acknowledged; one handle per message, each sent once the
    /// previous one was acknowledged; Node's internal `NODE_*` messages are handled here.
    Node,
}

/// The line that acknowledges a received handle.
pub(crate) const ACK: &[u8] = b"{\"cmd\":\"NODE_HANDLE_ACK\"}\n";
/// The line that asks for a handle again (it did not arrive).
pub(crate) const NACK: &[u8] = b"{\"cmd\":\"NODE_HANDLE_NACK\"}\n";
/// Node sends a handle again at most this many times after a NACK.
const MAX_RETRANSMISSIONS: u32 = 3;

#[cfg(feature = "json")]
/// What a received line is, in Node's protocol.
pub(crate) enum Line {
    /// A message for the user (a `NODE_HANDLE`'s inner `msg`, or a plain message).
    User(Value),
    /// A `NODE_HANDLE` line: its inner message, which comes with a handle.
    Handle(Value),
    /// A `NODE_HANDLE` line whose inner message is itself one of Node's (`NODE_CLUSTER`'s
    /// `newconn`): acknowledged, never the user's (Node emits it as `internalMessage`).
    InternalHandle,
    /// The peer acknowledged our last handle.
    Ack,
    /// The peer did not get our last handle's fd.
    Nack,
    /// Another of Node's internal messages (`NODE_SOCKET_*`, `NODE_CLUSTER`, ...).
    Internal,
}

#[cfg(feature = "json")]
/// Reads one line of Node's protocol.
pub(crate) fn classify(bytes: &[u8]) -> Result<Line> {
    let mut v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("recv_msg", format!("bad message: {e}")))?;
    let cmd = match internal_cmd(&v) {
        Some(c) => c,
        None => return Ok(Line::User(v)),
    };
    Ok(match cmd {
        "NODE_HANDLE" => {
            let msg = v.get_mut("msg").map(Value::take).unwrap_or(Value::Null);
            // Node: handleMessage(message.msg, handle, isInternal(message.msg)).
            match internal_cmd(&msg) {
                Some(_) => Line::InternalHandle,
                None => Line::Handle(msg),
            }
        }
        "NODE_HANDLE_ACK" => Line::Ack,
        "NODE_HANDLE_NACK" => Line::Nack,
        _ => Line::Internal,
    })
}

#[cfg(feature = "json")]
/// Node's isInternal(): a string `cmd` longer than the prefix that starts with it.
fn internal_cmd(v: &Value) -> Option<&str> {
    v.get("cmd")
        .and_then(Value::as_str)
        .filter(|c| c.len() > 5 && c.starts_with("NODE_"))
}

#[cfg(feature = "json")]
/// The `NODE_HANDLE` line that carries `msg` with a handle of `kind`.
pub(crate) fn wrap<T: Serialize>(msg: &T, kind: HandleType, ipv6: bool) -> Result<Vec<u8>> {
    let op = "send_msg";
    let msg = serde_json::to_value(msg).map_err(|e| Error::invalid(op, e.to_string()))?;
    let mut wrapped = serde_json::json!({ "cmd": "NODE_HANDLE", "msg": msg });
    let ty = match kind {
        HandleType::Tcp | HandleType::Unix => "net.Socket",
        HandleType::TcpListener | HandleType::UnixListener => "net.Server",
        HandleType::Udp => {
            wrapped["dgramType"] = (if ipv6 { "udp6" } else { "udp4" }).into();
            "dgram.Socket"
        }
        other => {
            return Err(Error::invalid(
                op,
                format!("Node takes TCP, Unix and UDP sockets as handles, not {other}"),
            ));
        }
    };
    wrapped["type"] = ty.into();
    let mut line = serde_json::to_vec(&wrapped).map_err(|e| Error::invalid(op, e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// A handle sent and not yet acknowledged: kept to send again on a NACK.
pub(crate) struct InFlight {
    pub line: Vec<u8>,
    pub fd: OwnedFd,
    pub tries: u32,
}

/// The sender's side of the acknowledgements: one handle in flight at a time.
pub(crate) struct Acks {
    /// One permit: taken (and forgotten) by a handle send, given back by its ACK.
    pub permit: tokio::sync::Semaphore,
    pub in_flight: Mutex<Option<InFlight>>,
}

impl Default for Acks {
    fn default() -> Self {
        Acks {
            permit: tokio::sync::Semaphore::new(1),
            in_flight: Mutex::new(None),
        }
    }
}

impl Acks {
    /// The peer acknowledged: the handle in flight is done, the next may go.
    pub fn ack(&self) {
        let done = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if done.is_some() {
            self.permit.add_permits(1);
        }
    }

    /// The peer did not get the fd: the line and fd to send again, or `None` after the
    /// last retransmission (then the handle is given up and the next may go).
    pub fn nack(&self) -> Option<(Vec<u8>, OwnedFd)> {
        let mut slot = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let f = slot.as_mut()?;
        if f.tries < MAX_RETRANSMISSIONS {
            f.tries += 1;
            let fd = f.fd.try_clone().ok()?;
            return Some((f.line.clone(), fd));
        }
        *slot = None;
        drop(slot);
        self.permit.add_permits(1);
        None
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;

    #[test]
    fn internal_messages_are_told_apart_from_the_users() {
        assert!(matches!(
            classify(br#"{"cmd":"NODE_HANDLE_ACK"}"#).unwrap(),
            Line::Ack
        ));
        assert!(matches!(
            classify(br#"{"cmd":"NODE_HANDLE_NACK"}"#).unwrap(),
            Line::Nack
        ));
        assert!(matches!(
            classify(br#"{"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":"k"}"#).unwrap(),
            Line::Internal
        ));
        match classify(br#"{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"a":1}}"#).unwrap() {
            Line::Handle(m) => assert_eq!(m, serde_json::json!({"a": 1})),
            _ => panic!("not a handle message"),
        }
        // The user's own `cmd`s, and "NODE_" alone, are the user's (as Node's isInternal).
        for user in [
            &br#"{"cmd":"NODE_"}"#[..],
            br#"{"cmd":"hello"}"#,
            br#"{"cmd":5}"#,
            b"42",
            br#""NODE_HANDLE""#,
        ] {
            assert!(matches!(classify(user).unwrap(), Line::User(_)));
        }
        assert_eq!(classify(b"{nope").err().unwrap().name(), "EINVAL");
    }

    #[test]
    fn a_handle_message_is_wrapped_with_nodes_type_names() {
        let line = wrap(&serde_json::json!({"x": 1}), HandleType::Tcp, false).unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["cmd"], "NODE_HANDLE");
        assert_eq!(v["type"], "net.Socket");
        assert_eq!(v["msg"], serde_json::json!({"x": 1}));
        assert_eq!(*line.last().unwrap(), b'\n');
        let v: Value = serde_json::from_slice(&wrap(&1, HandleType::Udp, true).unwrap()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["dgramType"].as_str()),
            (Some("dgram.Socket"), Some("udp6"))
        );
        let v: Value =
            serde_json::from_slice(&wrap(&1, HandleType::UnixListener, false).unwrap()).unwrap();
        assert_eq!(v["type"], "net.Server");
        assert_eq!(
            wrap(&1, HandleType::File, false).unwrap_err().name(),
            "EINVAL"
        );
    }
}

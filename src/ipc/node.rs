//! Node.js's shape of the JSON-lines protocol (`'ipc'` stdio with `serialization: 'json'`):
//! a message with a handle travels wrapped as
//! `{"cmd":"NODE_HANDLE","type":"net.Socket","msg":<the message>}`, the receiver answers
//! `{"cmd":"NODE_HANDLE_ACK"}` (or `NODE_HANDLE_NACK` when the fd did not arrive, and the
//! sender sends it again), and a sender sends no other handle until the last one is
//! acknowledged (every later message waits in a queue meanwhile, `Outbox`). Messages whose
//! `cmd` starts with `NODE_` are Node's own and never reach the user. (Node's
//! `lib/internal/child_process.js`.)

#![cfg_attr(
    not(feature = "json"),
    allow(
        dead_code,
        reason = "Node's protocol lives on the JSON lines of feature json; without it only `Protocol` is used"
    )
)]

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

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
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("recv_msg", format!("bad message: {e}")))?;
    Ok(classify_value(v))
}

#[cfg(feature = "json")]
/// What a parsed line of Node's protocol is.
pub(crate) fn classify_value(mut v: Value) -> Line {
    let cmd = match internal_cmd(&v) {
        Some(c) => c,
        None => return Line::User(v),
    };
    match cmd {
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
    }
}

/// The line a cluster master sends to a Node worker with each connection: Node's own
/// handle message, so the worker's `process.on('message', (m, socket) => ..)` gets `m` =
/// `{"brood":"connection"}` and a ready `net.Socket` (Node answers `NODE_HANDLE_ACK`).
/// Short enough (one skb) that a non-blocking send of it is whole or nothing.
#[cfg(feature = "cluster")]
pub(crate) const CONNECTION: &[u8] =
    b"{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"brood\":\"connection\"}}\n";

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

/// How many messages may wait behind a handle that Node has not acknowledged yet.
pub(crate) const MAX_QUEUED: usize = 1024;

/// One message to write: its line, and the handle that goes with it (shared with the
/// in-flight record that keeps it for a retransmission).
#[derive(Debug)]
pub(crate) struct Out {
    pub line: Vec<u8>,
    pub fd: Option<Arc<OwnedFd>>,
}

/// The handle sent and not yet acknowledged: kept to send again on a NACK.
struct InFlight {
    line: Vec<u8>,
    fd: Arc<OwnedFd>,
    tries: u32,
}

/// Why a message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `MAX_QUEUED` messages already wait behind an unacknowledged handle.
    Full,
    /// The channel's reader ended (the peer closed, or reading failed): no ACK will come.
    Closed,
}

/// The sender's side of Node's acknowledgements, as Node's `_handleQueue`: one handle in
/// flight at a time; while it is, every later message (with a handle or not, so that
/// none overtakes it) waits in a bounded queue, and the ACK releases them in order up to
/// and including the next handle. Pure bookkeeping: the callers write what it returns.
#[derive(Default)]
pub(crate) struct Outbox {
    in_flight: Option<InFlight>,
    queue: VecDeque<Out>,
    closed: bool,
}

impl Outbox {
    /// Takes a message to send: `Ok(Some(out))` to write now (a handle is then in flight),
    /// `Ok(None)` when it was queued, or the message back with the reason it was refused.
    pub fn submit(
        &mut self,
        out: Out,
        max_queued: usize,
    ) -> std::result::Result<Option<Out>, (Refused, Out)> {
        if self.closed {
            return Err((Refused::Closed, out));
        }
        if self.in_flight.is_some() || !self.queue.is_empty() {
            if self.queue.len() >= max_queued {
                return Err((Refused::Full, out));
            }
            self.queue.push_back(out);
            return Ok(None);
        }
        self.start(&out);
        Ok(Some(out))
    }

    fn start(&mut self, out: &Out) {
        if let Some(fd) = &out.fd {
            self.in_flight = Some(InFlight {
                line: out.line.clone(),
                fd: fd.clone(),
                tries: 0,
            });
        }
    }

    /// Whether a message submitted now would be refused as `Full`.
    pub fn is_full(&self, max_queued: usize) -> bool {
        !self.closed && self.queue.len() >= max_queued
    }

    /// The peer acknowledged the handle in flight: what to write now (the queued messages
    /// up to and including the next handle).
    pub fn ack(&mut self) -> Vec<Out> {
        self.in_flight = None;
        self.release()
    }

    fn release(&mut self) -> Vec<Out> {
        let mut now = Vec::new();
        while self.in_flight.is_none() {
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            self.start(&out);
            now.push(out);
        }
        now
    }

    /// The peer did not get the fd: the handle's line to send again, or after the last
    /// retransmission the handle is given up and the queue goes on.
    pub fn nack(&mut self) -> Vec<Out> {
        match &mut self.in_flight {
            Some(f) if f.tries < MAX_RETRANSMISSIONS => {
                f.tries += 1;
                vec![Out {
                    line: f.line.clone(),
                    fd: Some(f.fd.clone()),
                }]
            }
            Some(_) => self.ack(),
            None => Vec::new(),
        }
    }

    /// A write of a message this outbox released failed: the channel is broken.
    pub fn close(&mut self) {
        self.closed = true;
        self.in_flight = None;
        self.queue.clear(); // the handles kept for them close
    }

    /// Messages waiting behind the handle in flight.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// What the senders and the reader of a Node-protocol channel share.
#[derive(Default)]
pub(crate) struct Shared {
    pub outbox: Mutex<Outbox>,
    /// Woken when the queue may have room (an ACK), or can never get it (the reader ended
    /// or waits for the user to receive).
    pub room: tokio::sync::Notify,
    /// The reader waits for the user to take messages, so it reads no ACK meanwhile.
    pub stalled: AtomicBool,
    /// The reader runs.
    pub reading: AtomicBool,
    /// Stops the reader when the last holder of the channel is gone.
    pub reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    pub fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
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

    #[cfg(feature = "cluster")]
    #[test]
    fn the_cluster_connection_line_is_a_node_handle_message_for_the_user() {
        let (line, rest) = CONNECTION.split_at(CONNECTION.len() - 1);
        assert_eq!(rest, b"\n");
        match classify(line).unwrap() {
            Line::Handle(m) => assert_eq!(m, serde_json::json!({"brood": "connection"})),
            _ => panic!("not a handle message"),
        }
        let v: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["type"], "net.Socket");
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

    fn out(tag: &str, handle: bool) -> Out {
        let fd = handle.then(|| {
            Arc::new(OwnedFd::from(
                std::os::unix::net::UnixStream::pair().unwrap().0,
            ))
        });
        Out {
            line: tag.as_bytes().to_vec(),
            fd,
        }
    }

    fn tags(outs: &[Out]) -> Vec<String> {
        outs.iter()
            .map(|o| String::from_utf8(o.line.clone()).unwrap())
            .collect()
    }

    #[test]
    fn messages_behind_an_unacknowledged_handle_wait_in_order_and_each_ack_releases_up_to_the_next_handle()
     {
        let mut ob = Outbox::default();
        // Plain messages go at once while no handle is in flight.
        assert!(ob.submit(out("p0", false), 8).unwrap().is_some());
        assert!(ob.submit(out("h1", true), 8).unwrap().is_some());
        // Behind h1: everything waits, handle or not (nothing overtakes a NACKed h1).
        for (t, h) in [("p1", false), ("h2", true), ("p2", false), ("h3", true)] {
            assert!(ob.submit(out(t, h), 8).unwrap().is_none());
        }
        assert_eq!(ob.queued(), 4);
        assert_eq!(tags(&ob.ack()), ["p1", "h2"]);
        // A NACK sends the handle in flight again, and keeps the queue.
        let again = ob.nack();
        assert_eq!(tags(&again), ["h2"]);
        assert!(again[0].fd.is_some());
        assert_eq!(tags(&ob.ack()), ["p2", "h3"]);
        assert!(ob.ack().is_empty());
        assert!(ob.submit(out("p3", false), 8).unwrap().is_some());
    }

    #[test]
    fn the_queue_is_bounded_and_a_closed_outbox_refuses() {
        let mut ob = Outbox::default();
        assert!(ob.submit(out("h", true), 2).unwrap().is_some());
        assert!(ob.submit(out("a", false), 2).unwrap().is_none());
        assert!(ob.submit(out("b", true), 2).unwrap().is_none());
        let (why, back) = ob.submit(out("c", false), 2).unwrap_err();
        assert_eq!((why, tags(&[back])), (Refused::Full, vec!["c".to_string()]));
        ob.close();
        assert_eq!(ob.queued(), 0);
        assert_eq!(
            ob.submit(out("d", false), 2).unwrap_err().0,
            Refused::Closed
        );
    }

    #[test]
    fn a_handle_is_given_up_after_three_retransmissions_and_the_queue_goes_on() {
        let mut ob = Outbox::default();
        assert!(ob.submit(out("h", true), 8).unwrap().is_some());
        assert!(ob.submit(out("next", false), 8).unwrap().is_none());
        for _ in 0..MAX_RETRANSMISSIONS {
            assert_eq!(tags(&ob.nack()), ["h"]);
        }
        assert_eq!(tags(&ob.nack()), ["next"]);
    }
}

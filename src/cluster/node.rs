//! Node.js workers (`WorkerProtocol::Node`), with no brood code in them: the worker's
//! channel is its `NODE_CHANNEL_FD`, each connection goes as Node's own handle message
//! (`ipc::NODE_CONNECTION`, a `net.Socket`) and, as Node's `child.send` does, the next goes
//! to that worker once Node acknowledged it; what the worker says is read as Node's JSON
//! lines: `NODE_HANDLE_ACK`/`NACK`, and `'ready'` (`process.send('ready')`, PM2's
//! convention) for `--wait-ready`. Retiring closes the channel: Node's `'disconnect'`.

use serde_json::Value;

use super::proto::Report;
use crate::Command;
use crate::error::Result;
use crate::ipc::{CHANNEL_FD_ENV, Channel, NODE_CHANNEL_FD_ENV, NodeLine, node_line};

/// A Node worker's channel gives up a connection after this many NACKs (as Node does).
pub(super) const MAX_RETRANSMISSIONS: u32 = 3;

/// The longest line a Node worker may send the master (its messages are read and dropped).
pub(super) const MAX_LINE: usize = 64 * 1024;

/// The connection sent to a Node worker and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// The master's copy, kept for a retransmission (closed once acknowledged).
    pub conn: std::net::TcpStream,
    pub tries: u32,
    /// When it was last sent (a NACK's retransmission sends it again).
    pub at: std::time::Instant,
}

/// Tells the worker about its channel at `slot` the way Node's `fork` does.
pub(super) fn configure(cmd: &mut Command, slot: i32) {
    cmd.env(NODE_CHANNEL_FD_ENV, slot.to_string())
        .env("NODE_CHANNEL_SERIALIZATION_MODE", "json")
        .env_remove(CHANNEL_FD_ENV);
}

/// Reads one line of a Node worker: what it says to the master, `None` at the end of the
/// channel.
pub(super) async fn read(ch: &mut Channel) -> Result<Option<Report>> {
    let Some((line, handles)) = ch.recv_msg::<Value>().await? else {
        return Ok(None);
    };
    drop(handles); // a worker never sends handles: closed
    Ok(Some(report(line)))
}

/// What one line of a Node worker means to the master.
fn report(line: Value) -> Report {
    let mut r = Report::default();
    match node_line(line) {
        NodeLine::Ack => r.ack = true,
        NodeLine::Nack => r.nack = true,
        NodeLine::User(Value::String(s)) if s == "ready" => r.ready = true,
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::report;
    use serde_json::json;

    #[test]
    fn acks_nacks_and_ready_are_told_apart_from_the_workers_other_messages() {
        assert!(report(json!({"cmd": "NODE_HANDLE_ACK"})).ack);
        assert!(report(json!({"cmd": "NODE_HANDLE_NACK"})).nack);
        assert!(report(json!("ready")).ready);
        for other in [
            json!({"ready": true}),
            json!("readyish"),
            json!({"cmd": "NODE_CLUSTER"}),
            json!(42),
        ] {
            assert!(report(other).is_empty());
        }
    }
}

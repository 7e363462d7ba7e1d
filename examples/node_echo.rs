//! A brood program for a Node.js parent: started with
//! `child_process.fork(path, [], {execPath: path})` (or `spawn` with `'ipc'` in `stdio`), it
//! answers every message `m` with `{"echo": m}`, sends back any handle it received with it,
//! and exits when Node disconnects.
//!
//! ```js
//! const { fork } = require('child_process');
//! const path = 'target/debug/examples/node_echo';
//! const child = fork(path, [], { execPath: path });
//! child.on('message', (m) => { console.log(m); child.disconnect(); }); // { echo: { hi: 1 } }
//! child.send({ hi: 1 });
//! ```

use std::os::fd::AsFd;

use brood::ipc::{Channel, Handle};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Node's fork runs `execPath path args`: nothing to read from the arguments.
    let mut channel = match Channel::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node_echo: {e} (start me from Node with fork or an 'ipc' stdio)");
            std::process::exit(2);
        }
    };
    loop {
        let (m, handles): (Value, Vec<Handle>) = match channel.recv_msg().await {
            Ok(Some(got)) => got,
            Ok(None) => break, // Node disconnected
            Err(e) => {
                // A bad message (or one whose handle was lost) is skipped, not fatal.
                eprintln!("node_echo: {e}");
                continue;
            }
        };
        let fds: Vec<_> = handles.iter().map(|h| h.as_fd()).collect();
        if let Err(e) = channel.send_msg(&json!({ "echo": m }), &fds).await {
            eprintln!("node_echo: {e}");
            break;
        }
    }
}

//! Property tests of Node's IPC protocol on a channel (stable toolchain; the fuzz target
//! `node_ipc` checks the same, see docs/testing.md).

#[path = "props/node.rs"]
mod node;

use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values: Node's own messages, the user's, lookalikes, nested ones.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z_\\\\\"\u{0}-\u{1f}\u{2028}é]{0,8}".prop_map(Value::from),
        prop_oneof![
            Just("NODE_"),
            Just("NODE_HANDLE"),
            Just("NODE_HANDLE_ACK"),
            Just("NODE_HANDLE_NACK"),
            Just("NODE_CLUSTER"),
            Just("NODE_X"),
            Just("node_handle"),
            Just("NODE"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("cmd".to_string()),
                    Just("msg".to_string()),
                    Just("type".to_string()),
                    "[a-z]{1,3}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A line the peer writes: a message (maybe wrapped in NODE_HANDLE), Node's own, or not JSON.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        3 => value().prop_map(|v| {
            serde_json::to_vec(&json!({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": v})).unwrap()
        }),
        1 => prop_oneof![
            Just(br#"{"cmd":"NODE_HANDLE_ACK"}"#.to_vec()),
            Just(br#"{"cmd":"NODE_HANDLE_NACK"}"#.to_vec()),
            Just(br#"{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_CLUSTER","act":"newconn"}}"#.to_vec()),
            Just(br#"{"cmd":"NODE_HANDLE"}"#.to_vec()),
            Just(br#"{"cmd":"hi","cmd":"NODE_X"}"#.to_vec()),
        ],
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_line_is_classified_as_node_does(line in line()) {
        node::check_line(&line);
    }

    #[test]
    fn a_wrapped_message_unwraps_to_itself(msg in value()) {
        node::check_wrap(&msg);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_channel_in_nodes_protocol_gives_the_user_only_the_users_messages(
        sent in proptest::collection::vec(
            (line(), any::<bool>()).prop_map(|(line, fd)| node::Sent { line, fd }),
            0..12,
        ),
    ) {
        node::check_channel(&sent);
    }
}

/// Found by `any_line_is_classified_as_node_does`: a `NODE_HANDLE` whose inner message is
/// Node's own (the cluster's `newconn`) reached the user as an ordinary message; Node emits it
/// as `internalMessage`. The fuzz corpus keeps the same line (`node_ipc/internal-inner`).
#[test]
fn an_internal_message_inside_node_handle_is_not_the_users() {
    let line = br#"{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k"}}"#;
    node::check_line(line);
    node::check_channel(&[
        node::Sent {
            line: line.to_vec(),
            fd: true,
        },
        node::Sent {
            line: br#"{"after":1}"#.to_vec(),
            fd: false,
        },
    ]);
}

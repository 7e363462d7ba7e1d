//! Property tests of FastCGI (stable toolchain; the fuzz targets `fastcgi_records` and
//! `fastcgi_conn` check the same, see docs/testing.md): the record layer against the model
//! whatever the reads, name-value pairs, and a real connection against the protocol's model.

#[path = "props/fastcgi.rs"]
mod fastcgi;

use fastcgi::{Case, Content, Piece};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, usize)> {
    let name = prop_oneof![
        Just(b"FCGI_MAX_CONNS".to_vec()),
        Just(b"FCGI_MPXS_CONNS".to_vec()),
        Just(b"CONTENT_LENGTH".to_vec()),
        Just(b"REQUEST_URI".to_vec()),
        Just(b"SCRIPT_FILENAME".to_vec()),
        bytes(20),
    ];
    let value = prop_oneof![
        bytes(12),
        Just(b"3".to_vec()),
        Just(b"/x".to_vec()),
        (0usize..40_000).prop_map(|n| vec![b'v'; n]),
    ];
    let repeat = prop_oneof![4 => Just(1usize), 1 => 1usize..9000];
    (name, value, repeat)
}

fn piece() -> impl Strategy<Value = Piece> {
    let kind = prop_oneof![
        8 => 1u8..=11,
        1 => any::<u8>(),
    ];
    let content = prop_oneof![
        bytes(40).prop_map(Content::Literal),
        (any::<u16>(), any::<u8>()).prop_map(|(n, b)| Content::Fill(n, b)),
        proptest::collection::vec(pair(), 0..4).prop_map(Content::Pairs),
        // BEGIN_REQUEST bodies: responder or not, keep the connection or not.
        (0u16..3, 0u8..2).prop_map(|(role, keep)| {
            let [a, b] = role.to_be_bytes();
            Content::Literal(vec![a, b, keep, 0, 0, 0, 0, 0])
        }),
    ];
    prop_oneof![
        1 => bytes(12).prop_map(Piece::Raw),
        12 => (kind, 0u16..3, 0u8..9, content).prop_map(|(kind, id, padding, content)| {
            Piece::Record { kind, id, padding, content }
        }),
    ]
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![Just(0usize), 1usize..20, 1usize..70_000], 1..8)
}

/// Records of any kind, ids and contents.
fn noise() -> impl Strategy<Value = Vec<Piece>> {
    proptest::collection::vec(piece(), 0..24)
}

fn record(kind: u8, id: u16, content: Content) -> Piece {
    Piece::Record {
        kind,
        id,
        padding: 0,
        content,
    }
}

/// A request as a web server sends it: BEGIN_REQUEST, params in records of any size (to
/// over 128 KiB), their end, a body, its end.
fn request() -> impl Strategy<Value = Vec<Piece>> {
    let params = proptest::collection::vec(proptest::collection::vec(pair(), 0..3), 0..5);
    let body = proptest::collection::vec(bytes(40), 0..3);
    (1u16..3, 0u16..2, 0u8..2, params, body).prop_map(|(id, role, keep, params, body)| {
        let mut out = vec![record(
            fastcgi::BEGIN_REQUEST,
            id,
            Content::Literal(vec![0, role as u8, keep, 0, 0, 0, 0, 0]),
        )];
        for p in params {
            out.push(record(fastcgi::PARAMS, id, Content::Pairs(p)));
        }
        out.push(record(fastcgi::PARAMS, id, Content::Literal(vec![])));
        for b in body {
            out.push(record(fastcgi::STDIN, id, Content::Literal(b)));
        }
        out.push(record(fastcgi::STDIN, id, Content::Literal(vec![])));
        out
    })
}

/// Requests one after another, with records of any kind in between or instead.
fn conversation() -> impl Strategy<Value = Vec<Piece>> {
    let part = prop_oneof![
        3 => request(),
        1 => noise(),
    ];
    proptest::collection::vec(part, 0..4).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn records_read_as_the_model_reads_them_whatever_the_reads(
        pieces in prop_oneof![noise(), conversation()],
        cuts in cuts(),
    ) {
        fastcgi::check_records(&Case { pieces, cuts });
    }

    #[test]
    fn pairs_decode_as_the_model_decodes_them(data in bytes(64)) {
        fastcgi::check_pairs(&data);
    }

    #[test]
    fn pairs_round_trip(list in proptest::collection::vec((bytes(200), bytes(300)), 0..6)) {
        fastcgi::check_round_trip(&list);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_connection_answers_as_the_model_of_the_protocol(
        pieces in conversation(),
        cuts in cuts(),
    ) {
        fastcgi::check_conn(&Case { pieces, cuts });
    }
}

/// Found by `a_connection_answers_as_the_model_of_the_protocol`: a `GET_VALUES` asking for
/// thousands of variables was answered as a stream (records of 16 KiB, pairs cut between
/// them) and cut at 64 KiB; the answer is one record of whole pairs. The fuzz corpus keeps
/// the same input (`fastcgi_conn/get-values-many`).
#[test]
fn get_values_answer_is_one_record_of_whole_pairs() {
    let pieces = vec![record(
        fastcgi::GET_VALUES,
        0,
        Content::Pairs(vec![(b"FCGI_MAX_CONNS".to_vec(), vec![], 4000)]),
    )];
    fastcgi::check_conn(&Case {
        pieces,
        cuts: vec![4096],
    });
}

//! FastCGI records written by hand, for the tests that speak the protocol on brood's socket.

pub const BEGIN: u8 = 1;
pub const ABORT: u8 = 2;
pub const END: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

/// Records of `kind` for `id` holding `content` (cut at 65535 bytes; empty: one empty
/// record).
pub fn rec(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in content.chunks(65535) {
        out.extend_from_slice(&[1, kind]);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(piece);
    }
    if content.is_empty() {
        out.extend_from_slice(&[1, kind, (id >> 8) as u8, id as u8, 0, 0, 0, 0]);
    }
    out
}

/// One name-value pair.
pub fn pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

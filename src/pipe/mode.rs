//! Permission bits for `uv_pipe_chmod`.

use std::ops::BitOr;

/// Permissions for [`Listener::chmod`](super::Listener::chmod), as `UV_READABLE` and `UV_WRITABLE`; combine with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode(u32);

impl Mode {
    /// Readable by all (`0o444`).
    pub const READABLE: Mode = Mode(0o444);
    /// Writable by all (`0o222`); other users need this to connect.
    pub const WRITABLE: Mode = Mode(0o222);

    /// The permission bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Mode {
    type Output = Mode;
    fn bitor(self, rhs: Mode) -> Mode {
        Mode(self.0 | rhs.0)
    }
}

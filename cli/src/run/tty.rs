//! The signals a terminal sends, read with their origin, so `brood run` does not pass on one
//! its child already got.
//!
//! Ctrl-C, Ctrl-\ and Ctrl-Z (and a window resize) go from the tty driver to every process of
//! the terminal's foreground process group. When brood's child is in that group (brood's own
//! group: no `--timeout`, or `--foreground`, or `--init` without `--group`) it has its own
//! copy already, and passing brood's on would deliver the signal twice (a program that counts
//! Ctrl-Cs, as a REPL does, would take the second as "really quit"). So a signal the kernel
//! sent (`SI_KERNEL`, no sender pid) while the child's group is the terminal's foreground
//! group is not passed on; one sent by a process (`kill`, a supervisor) always is. (tini
//! avoids the double by making the child's own group the foreground one; brood keeps the
//! child in its group, as a shell job expects, and skips the copy.)
//!
//! The origin is only in the signal's `siginfo`, which brood's watchers do not keep: these
//! signals are blocked in every thread of brood ([`block`], before any thread exists) and read
//! from a signalfd ([`read_into`]). A blocked signal is never discarded, not even by PID 1 of
//! a namespace, and the child starts with an empty mask (brood's spawn clears it).

use brood::Signum;
use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the tty driver sends to the foreground process group.
pub const FROM_TTY: [Signum; 4] = [Signum::INT, Signum::QUIT, Signum::TSTP, Signum::WINCH];

/// Whether `sig` is one of [`FROM_TTY`].
pub fn is_tty_signal(sig: Signum) -> bool {
    FROM_TTY.contains(&sig)
}

/// A signal as it arrived: which, and whether the kernel itself sent it (the tty driver).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub signal: Signum,
    pub from_kernel: bool,
}

fn set_of(sigs: &[Signum]) -> SigSet {
    let mut set = SigSet::empty();
    for &s in sigs {
        if let Ok(s) = NixSignal::try_from(s.as_raw()) {
            set.add(s);
        }
    }
    set
}

/// Blocks `sigs` in the calling thread, and so in every thread it starts afterwards. Called
/// first thing, while brood has one thread: a thread that did not block them would take the
/// signal with its default action (ending brood).
pub fn block(sigs: &[Signum]) -> Result<(), brood::Error> {
    set_of(sigs)
        .thread_block()
        .map_err(|e| brood::Error::new(e as i32, "block the terminal's signals"))
}

/// Reads the blocked `sigs` from a signalfd, on a thread of its own (a blocking read: no
/// `unsafe` reactor registration), and sends each to `tx` until the receiver is gone. The
/// thread is not joined: it may sit in its read until brood exits.
pub fn read_into(
    sigs: &[Signum],
    tx: tokio::sync::mpsc::UnboundedSender<Received>,
) -> Result<(), brood::Error> {
    let op = "signalfd for the terminal's signals";
    let fd = SignalFd::with_flags(&set_of(sigs), SfdFlags::SFD_CLOEXEC)
        .map_err(|e| brood::Error::new(e as i32, op))?;
    std::thread::Builder::new()
        .name("brood-tty-signals".into())
        .spawn(move || {
            loop {
                match fd.read_signal() {
                    Ok(Some(info)) => {
                        let r = Received {
                            signal: Signum::new(info.ssi_signo as i32),
                            from_kernel: info.ssi_code == libc::SI_KERNEL,
                        };
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(nix::errno::Errno::EINTR) => {}
                    // Not expected from a signalfd: stop reading (the signals stay blocked).
                    Err(_) => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| brood::Error::new(e.raw_os_error().unwrap_or(libc::EAGAIN), op))
}

/// Whether the child `pid` got `r` itself: the tty driver sent it (kernel origin) to the
/// terminal's foreground group, and the child is in that group. When brood cannot tell
/// (no `/proc`, no terminal), the answer is no, and the signal is passed on.
pub fn child_got_it(r: Received, pid: i32) -> bool {
    if !r.from_kernel || !is_tty_signal(r.signal) {
        return false;
    }
    // /proc/PID/stat after the command name: state ppid pgrp session tty_nr tpgid.
    let field = |pid: &str, n: usize| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .nth(n)?
            .parse()
            .ok()
    };
    let (Some(foreground), Some(child_group)) = (field("self", 5), field(&pid.to_string(), 2))
    else {
        return false;
    };
    foreground > 0 && foreground == child_group
}

//! Signal numbers that parse and print by name (`SIGTERM` ⇄ 15).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A signal number, as `uv_kill` and `uv_process_kill` take it.
///
/// Every function of brood that sends or watches a signal takes `impl Into<Signum>`, so a
/// constant ([`Signum::TERM`]), a plain `i32` (`libc::SIGTERM`) or a parsed name all work.
///
/// ```
/// use brood::Signum;
/// let s: Signum = "SIGTERM".parse().unwrap();
/// assert_eq!(s, Signum::TERM);
/// assert_eq!(s.as_raw(), 15);
/// assert_eq!(s.to_string(), "SIGTERM");
/// assert_eq!("term".parse::<Signum>().unwrap(), Signum::TERM);
/// assert_eq!("9".parse::<Signum>().unwrap().name(), Some("SIGKILL"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signum(i32);

macro_rules! signals {
    ($($konst:ident = $sig:ident,)*) => {
        impl Signum {
            $(
                #[doc = concat!("`", stringify!($sig), "`")]
                pub const $konst: Signum = Signum(libc::$sig);
            )*
        }
        const NAMES: &[(&str, i32)] = &[$((stringify!($sig), libc::$sig),)*];
    };
}

signals! {
    HUP = SIGHUP,
    INT = SIGINT,
    QUIT = SIGQUIT,
    ILL = SIGILL,
    TRAP = SIGTRAP,
    ABRT = SIGABRT,
    BUS = SIGBUS,
    FPE = SIGFPE,
    KILL = SIGKILL,
    USR1 = SIGUSR1,
    SEGV = SIGSEGV,
    USR2 = SIGUSR2,
    PIPE = SIGPIPE,
    ALRM = SIGALRM,
    TERM = SIGTERM,
    CHLD = SIGCHLD,
    CONT = SIGCONT,
    STOP = SIGSTOP,
    TSTP = SIGTSTP,
    TTIN = SIGTTIN,
    TTOU = SIGTTOU,
    URG = SIGURG,
    XCPU = SIGXCPU,
    XFSZ = SIGXFSZ,
    VTALRM = SIGVTALRM,
    PROF = SIGPROF,
    WINCH = SIGWINCH,
    IO = SIGIO,
    SYS = SIGSYS,
}

impl Signum {
    /// The signal with this number. Numbers outside the platform's range are refused
    /// where they are used (`EINVAL`), not here, so 0 (the "does it exist" probe of
    /// `kill(2)`) can be expressed.
    pub const fn new(raw: i32) -> Signum {
        Signum(raw)
    }

    /// The number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The name (`"SIGTERM"`), or `None` for numbers without one (real-time signals).
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, n)| *n == self.0).map(|(s, _)| *s)
    }
}

impl From<i32> for Signum {
    fn from(raw: i32) -> Signum {
        Signum(raw)
    }
}

impl From<Signum> for i32 {
    fn from(s: Signum) -> i32 {
        s.0
    }
}

impl fmt::Display for Signum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}({})", self.0)
    }
}

impl FromStr for Signum {
    type Err = Error;

    /// Accepts `SIGTERM`, `TERM`, `term` and `15`.
    fn from_str(s: &str) -> Result<Signum, Error> {
        let bad = || Error::invalid(format!("parse signal {s:?}"), "not a signal name or number");
        if let Ok(n) = s.parse::<i32>() {
            return if (0..=max_signal()).contains(&n) {
                Ok(Signum(n))
            } else {
                Err(bad())
            };
        }
        let upper = s.to_ascii_uppercase();
        let want = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .find(|(name, _)| &name[3..] == want)
            .map(|(_, n)| Signum(*n))
            .ok_or_else(bad)
    }
}

/// The highest signal number of the platform (`SIGRTMAX` on Linux).
pub(crate) fn max_signal() -> i32 {
    #[cfg(target_os = "linux")]
    {
        libc::SIGRTMAX()
    }
    #[cfg(not(target_os = "linux"))]
    {
        31
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for (name, n) in NAMES {
            let s: Signum = name.parse().unwrap();
            assert_eq!(s.as_raw(), *n);
            assert_eq!(s.to_string(), *name);
        }
        assert_eq!("usr1".parse::<Signum>().unwrap(), Signum::USR1);
        assert!("SIGNOPE".parse::<Signum>().is_err());
        assert!("-1".parse::<Signum>().is_err());
        assert!("999".parse::<Signum>().is_err());
        assert_eq!(Signum::new(40).to_string(), "signal 40");
    }
}

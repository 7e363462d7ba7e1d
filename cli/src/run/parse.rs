//! The values `brood run` takes, parsed without any I/O: durations, signals, `--stdio`
//! specs and `--env` pairs. Each function takes the text as given and returns the value or
//! a sentence that says what was expected; nothing here touches the process, so it could
//! move to the library as is.

use std::path::PathBuf;
use std::time::Duration;

use brood::Signum;

/// What one `--stdio N=SPEC` gives the child at fd N.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StdioSpec {
    /// `ignore`: /dev/null for 0-2, closed above (libuv's `UV_IGNORE`).
    Ignore,
    /// `null`: /dev/null at any slot.
    Null,
    /// `inherit`: brood's own fd N.
    Inherit,
    /// `fd:M`: brood's fd M.
    Fd(i32),
    /// `file:PATH`, `truncate:PATH`, `append:PATH`: a file opened for the slot (read at 0,
    /// written elsewhere), as systemd's `StandardOutput=`.
    File(PathBuf, FileMode),
}

/// How a `--stdio` file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// `file:`: read at slot 0; elsewhere written from the start, created if missing and
    /// not truncated (systemd's `file:`).
    Open,
    /// `truncate:`: created if missing, emptied first (the shell's `>`).
    Truncate,
    /// `append:`: created if missing, written at the end (the shell's `>>`).
    Append,
}

/// The largest duration taken: 100 years, well inside what timers handle.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration as `timeout(1)` writes them: a decimal number of seconds (`1.5`), or a number
/// with a unit: `ms`, `s`, `m`, `h`, `d` (`300ms`, `2s`, `1m`, `1h`). `0` is a zero
/// duration (callers give it the meaning "none", as `timeout 0`); a positive one too small
/// for a nanosecond is one nanosecond, never zero.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: write seconds (1.5) or a number with a unit \
             (300ms, 2s, 1m, 1h, 1d)"
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let digits = number.replace('.', "");
    // Plain decimals only: no sign, exponent, "inf" or "nan", one dot at most.
    if digits.is_empty() || number.len() - digits.len() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(bad()),
    };
    match Duration::try_from_secs_f64(secs) {
        // Only a zero means "none": a positive duration below a nanosecond is the smallest
        // one there is, not zero.
        Ok(d) if d.is_zero() && secs > 0.0 => Ok(Duration::from_nanos(1)),
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{text:?} is longer than brood takes (100 years)")),
    }
}

/// A signal to send: `TERM`, `SIGTERM`, `term` or `15`. Signal 0 sends nothing, so it is
/// refused.
pub fn signal(text: &str) -> Result<Signum, String> {
    match text.parse::<Signum>() {
        Ok(s) if s.as_raw() != 0 => Ok(s),
        Ok(_) => Err("signal 0 sends nothing: name a signal such as TERM, INT or KILL".into()),
        Err(_) => Err(format!(
            "{text:?} is not a signal: write a name (TERM, SIGINT, hup) or a number (15)"
        )),
    }
}

/// `N=SPEC` for `--stdio`: the child's fd N and what it gets.
pub fn stdio(text: &str) -> Result<(i32, StdioSpec), String> {
    let (n, spec) = text
        .split_once('=')
        .ok_or_else(|| format!("expected N=SPEC, got {text:?}"))?;
    let n = fd_number(n).ok_or_else(|| format!("fd number {n:?} is not a number 0 or above"))?;
    let file = |path: &str, mode: FileMode| {
        if path.is_empty() {
            return Err(format!("{spec:?} names no file"));
        }
        if n == 0 && mode != FileMode::Open {
            return Err(format!(
                "{spec:?}: fd 0 is read, so it takes file:PATH, not truncate: or append:"
            ));
        }
        Ok(StdioSpec::File(PathBuf::from(path), mode))
    };
    let spec = match spec {
        "ignore" => StdioSpec::Ignore,
        "null" => StdioSpec::Null,
        "inherit" => StdioSpec::Inherit,
        _ => match spec.split_once(':') {
            Some(("fd", m)) => StdioSpec::Fd(
                fd_number(m).ok_or_else(|| format!("{spec:?}: {m:?} is not an fd number"))?,
            ),
            Some(("file", path)) => file(path, FileMode::Open)?,
            Some(("truncate", path)) => file(path, FileMode::Truncate)?,
            Some(("append", path)) => file(path, FileMode::Append)?,
            _ => {
                return Err(format!(
                    "stdio spec {spec:?} is not one of ignore, null, inherit, fd:M, \
                     file:PATH, truncate:PATH, append:PATH"
                ));
            }
        },
    };
    Ok((n, spec))
}

/// An fd number for `--json-fd`.
pub fn fd(text: &str) -> Result<i32, String> {
    fd_number(text).ok_or_else(|| format!("{text:?} is not an fd number (0 or above)"))
}

/// A non-negative fd number in plain decimal.
fn fd_number(text: &str) -> Option<i32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `K=V` for `--env` (V may hold `=`; K may not be empty).
pub fn env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {text:?}")),
    }
}

/// A user or group given by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Id {
    Number(u32),
    Name(String),
}

/// `65534` or `nobody`: all digits is a number, as `setpriv` and `chown` read it.
pub fn id(text: &str) -> Result<Id, String> {
    if text.is_empty() {
        return Err("an empty user or group name".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Id::Number)
            .map_err(|_| format!("{text:?} is more than the largest id (4294967295)"));
    }
    Ok(Id::Name(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_timeout_writes_them() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("0", ms(0)),
            ("1.5", ms(1500)),
            ("300ms", ms(300)),
            ("2s", ms(2000)),
            ("1m", ms(60_000)),
            ("1h", ms(3_600_000)),
            ("1d", ms(86_400_000)),
            ("0.25m", ms(15_000)),
            (".5", ms(500)),
            ("5.", ms(5000)),
            ("0.000", ms(0)),
            ("0.0000000001", Duration::from_nanos(1)),
            ("0.0000000000000000000000001ms", Duration::from_nanos(1)),
            ("0.0000000015", Duration::from_nanos(1)),
        ] {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_sentences_not_panics() {
        for text in [
            "", "-1", "+1", "1e3", "nan", "inf", "1.2.3", ".", "ms", "1 s", "1sec", "1S", "s1",
            "١", "1e30", "1.5x",
        ] {
            let err = duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
        // Too long for a timer, however written.
        assert!(duration("99999999999999999999999999999").is_err());
        assert!(duration("36501d").is_err());
        assert!(duration("36500d").is_ok());
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal("TERM"), Ok(Signum::TERM));
        assert_eq!(signal("sigint"), Ok(Signum::INT));
        assert_eq!(signal("9"), Ok(Signum::KILL));
        assert!(signal("0").unwrap_err().contains("sends nothing"));
        assert!(signal("NOPE").unwrap_err().contains("\"NOPE\""));
        assert!(signal("999").is_err());
        assert!(signal("").is_err());
    }

    #[test]
    fn stdio_specs() {
        let file = |p: &str, m| StdioSpec::File(PathBuf::from(p), m);
        for (text, want) in [
            ("0=ignore", (0, StdioSpec::Ignore)),
            ("4=null", (4, StdioSpec::Null)),
            ("3=inherit", (3, StdioSpec::Inherit)),
            ("1=fd:2", (1, StdioSpec::Fd(2))),
            ("1=file:/tmp/o", (1, file("/tmp/o", FileMode::Open))),
            ("0=file:in.txt", (0, file("in.txt", FileMode::Open))),
            ("2=append:a:b", (2, file("a:b", FileMode::Append))),
            ("1=truncate:x=y", (1, file("x=y", FileMode::Truncate))),
        ] {
            assert_eq!(stdio(text), Ok(want), "{text}");
        }
        for (text, says) in [
            ("1", "N=SPEC"),
            ("x=ignore", "\"x\""),
            ("-1=ignore", "\"-1\""),
            ("1=bogus", "\"bogus\""),
            ("1=fd:", "fd number"),
            ("1=fd:-2", "fd number"),
            ("1=fd:99999999999", "fd number"),
            ("1=file:", "names no file"),
            ("0=append:x", "fd 0 is read"),
            ("0=truncate:x", "fd 0 is read"),
        ] {
            let err = stdio(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(env("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(env("B=x=y"), Ok(("B".into(), "x=y".into())));
        assert_eq!(env("C="), Ok(("C".into(), "".into())));
        assert!(env("=1").is_err());
        assert!(env("A").is_err());
    }

    #[test]
    fn ids_by_number_or_name() {
        assert_eq!(id("65534"), Ok(Id::Number(65534)));
        assert_eq!(id("nobody"), Ok(Id::Name("nobody".into())));
        assert_eq!(id("4294967295"), Ok(Id::Number(u32::MAX)));
        assert!(id("4294967296").is_err());
        assert!(id("").is_err());
    }
}

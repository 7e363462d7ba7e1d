//! What `brood run` itself writes: the pid of a detached child (stdout), the `--json` line
//! (stderr, `--json-fd N` or `--json-file PATH`) and its own errors (stderr).
//!
//! None of it may panic or change the exit code: a caller that closed the pipe
//! (`brood run --json -- true | true`) gets the child's exit code as always, and the first
//! failed write is reported once on stderr (if stderr itself still takes it).

use std::fs::File;
use std::io::{self, Write};

/// Where the `--json` line goes.
pub enum JsonTo {
    Stderr,
    /// `--json-fd N` (a duplicate of the caller's fd) or `--json-file PATH`; the name says
    /// which, for the error message.
    File(File, String),
}

pub struct Out {
    json: Option<JsonTo>,
    reported: bool,
}

impl Out {
    pub fn new(json: Option<JsonTo>) -> Out {
        Out {
            json,
            reported: false,
        }
    }

    /// Whether a JSON line is wanted.
    pub fn wants_json(&self) -> bool {
        self.json.is_some()
    }

    /// Writes the JSON line, if one is wanted.
    pub fn json(&mut self, line: &str) {
        let failed = match &mut self.json {
            None => return,
            Some(JsonTo::Stderr) => write_line(&mut io::stderr().lock(), line).err(),
            Some(JsonTo::File(f, name)) => write_line(f, line)
                .err()
                .map(|e| io::Error::new(e.kind(), format!("{name}: {e}"))),
        };
        if let Some(e) = failed {
            self.report("the JSON line", e);
        }
    }

    /// Writes a line on stdout (the pid of a detached child).
    pub fn stdout(&mut self, line: &str) {
        if let Err(e) = write_line(&mut io::stdout().lock(), line) {
            self.report("stdout", e);
        }
    }

    /// brood's own message on stderr; if stderr is gone there is nowhere left to say it.
    pub fn error(&mut self, message: impl std::fmt::Display) {
        let _ = write_line(&mut io::stderr().lock(), &format!("brood run: {message}"));
    }

    fn report(&mut self, what: &str, e: io::Error) {
        if !self.reported {
            self.reported = true;
            self.error(format_args!("cannot write {what}: {e}"));
        }
    }
}

/// One line in one write, then flushed (stdout is buffered by line; a file is not).
fn write_line(w: &mut impl Write, line: &str) -> io::Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    w.write_all(buf.as_bytes())?;
    w.flush()
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(
            super::json_string("a\"b\\c\n\u{1}é"),
            r#""a\"b\\c\u000a\u0001é""#
        );
    }
}

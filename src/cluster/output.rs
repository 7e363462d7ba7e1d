//! Workers' stdout and stderr: left to the master's own (inherit), thrown away (null), or
//! read by the master through pipes and logged line by line with the worker's id and pid in
//! front (prefix), as PM2 and foreman do.
//!
//! A worker that writes a flood cannot grow the master: each stream is read in chunks of
//! `CHUNK` bytes into one line buffer of at most `MAX_LINE` bytes; a longer line is cut
//! there and its log line says how many bytes were cut. The reading task yields after each
//! chunk, so the master's other work goes on; a worker writing faster than the log takes
//! its lines waits on its full pipe (the kernel's 64 KiB), as it would on a slow terminal.

use tokio::io::AsyncReadExt;

use crate::{Child, Command, Stdio};

/// Lines longer than this are cut (and the log line says by how much).
pub(crate) const MAX_LINE: usize = 16 * 1024;
const CHUNK: usize = 64 * 1024;

/// What becomes of workers' stdout and stderr.
///
/// ```
/// use brood::cluster::{Cluster, WorkerOutput};
///
/// let cluster = Cluster::builder()
///     .listen("127.0.0.1:0")
///     .workers(1)
///     .worker_output(WorkerOutput::Prefix)
///     .build()?;
/// assert_eq!("null".parse::<WorkerOutput>()?, WorkerOutput::Null);
/// # drop(cluster);
/// # Ok::<(), brood::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WorkerOutput {
    /// Workers write to the master's own stdout and stderr (the default of the library:
    /// nothing is lost when the program has no `tracing` subscriber).
    #[default]
    Inherit,
    /// The master reads both through pipes and logs each line as a `tracing` event
    /// (target `brood::cluster::worker`, level INFO) starting
    /// `[worker ID pid PID]` (stdout) or `[worker ID pid PID stderr]`.
    Prefix,
    /// `/dev/null`.
    Null,
}

impl std::str::FromStr for WorkerOutput {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<WorkerOutput, crate::Error> {
        match s {
            "inherit" => Ok(WorkerOutput::Inherit),
            "prefix" => Ok(WorkerOutput::Prefix),
            "null" => Ok(WorkerOutput::Null),
            _ => Err(crate::Error::invalid(
                format!("worker output {s:?}"),
                "use inherit, prefix or null",
            )),
        }
    }
}

/// Sets a worker's slots 1 and 2 for `mode`.
pub(super) fn configure(cmd: &mut Command, mode: WorkerOutput) {
    match mode {
        WorkerOutput::Inherit => {}
        WorkerOutput::Prefix => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        WorkerOutput::Null => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
}

/// Starts logging a spawned worker's pipes (with [`WorkerOutput::Prefix`]).
pub(super) fn collect(child: &mut Child, id: u64, pid: u32) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, format!("[worker {id} pid {pid}]")));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, format!("[worker {id} pid {pid} stderr]")));
    }
}

async fn forward(mut pipe: crate::ChildPipe, prefix: String) {
    let mut chunk = vec![0u8; CHUNK];
    let mut lines = Lines::default();
    let log = |line: &[u8], cut: u64| {
        let text = String::from_utf8_lossy(line);
        if cut == 0 {
            tracing::info!(target: "brood::cluster::worker", "{prefix} {text}");
        } else {
            tracing::info!(
                target: "brood::cluster::worker",
                "{prefix} {text} [line cut: {cut} more bytes]"
            );
        }
    };
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.push(&chunk[..n], log),
        }
        tokio::task::yield_now().await;
    }
    lines.finish(log);
}

/// Splits a byte stream into lines of at most `MAX_LINE` bytes, counting what it cuts.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// Bytes of the current line dropped past `MAX_LINE`.
    cut: u64,
}

impl Lines {
    /// Feeds `data`; `emit(line, cut)` gets each complete line (without its newline).
    fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], u64)) {
        while !data.is_empty() {
            let (part, rest, end) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            let room = MAX_LINE - self.buf.len();
            let keep = part.len().min(room);
            self.buf.extend_from_slice(&part[..keep]);
            self.cut += (part.len() - keep) as u64;
            if end {
                emit(&self.buf, self.cut);
                self.buf.clear();
                self.cut = 0;
            }
            data = rest;
        }
    }

    /// The last line, if the stream ended without a newline.
    fn finish(&mut self, mut emit: impl FnMut(&[u8], u64)) {
        if !self.buf.is_empty() || self.cut > 0 {
            emit(&self.buf, self.cut);
        }
        self.buf = Vec::new();
        self.cut = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut l = Lines::default();
        for c in chunks {
            l.push(c, |line, cut| out.push((line.to_vec(), cut)));
        }
        l.finish(|line, cut| out.push((line.to_vec(), cut)));
        out
    }

    #[test]
    fn lines_split_across_chunks_and_the_last_one_without_newline() {
        assert_eq!(
            run(&[b"ab", b"c\nd\n\nef"]),
            vec![
                (b"abc".to_vec(), 0),
                (b"d".to_vec(), 0),
                (b"".to_vec(), 0),
                (b"ef".to_vec(), 0)
            ]
        );
    }

    #[test]
    fn a_long_line_is_cut_at_the_limit_and_the_rest_counted() {
        let big = vec![b'x'; MAX_LINE * 3 + 5];
        let out = run(&[&big, &big, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.len(), MAX_LINE);
        assert_eq!(out[0].1, (big.len() * 2 - MAX_LINE) as u64);
        assert_eq!(out[1], (b"next".to_vec(), 0));
    }
}

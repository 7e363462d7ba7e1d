//! [`Load`]: what a server is doing right now, for metrics (scripts running, requests
//! waiting for a `max_children` slot).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A live view of a CGI server's load, from [`Cgi::load`](super::Cgi::load): read it
/// whenever (a metrics scrape); it follows every server started from that `Cgi` or a
/// clone of it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cgi = brood::cgi::Cgi::root(std::env::temp_dir());
/// let load = cgi.load();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = tokio::spawn(cgi.serve(listener));
/// assert_eq!((load.scripts_running(), load.queued()), (0, 0));
/// server.abort();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Load(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    running: AtomicUsize,
    queued: AtomicUsize,
}

impl Load {
    /// Scripts running: started and not yet ended (a script that works on after its
    /// response counts until it exits).
    pub fn scripts_running(&self) -> usize {
        self.0.running.load(Ordering::Relaxed)
    }

    /// Requests waiting for a free `max_children` slot (with a `queue` time).
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Relaxed)
    }

    /// Counts one running script while the guard lives.
    pub(crate) fn running(&self) -> Counted {
        Counted::new(self, |c| &c.running)
    }

    /// Counts one request waiting for a slot while the guard lives.
    pub(crate) fn waiting(&self) -> Counted {
        Counted::new(self, |c| &c.queued)
    }
}

/// One in a count of [`Load`], taken back when dropped.
#[derive(Debug)]
pub(crate) struct Counted(Load, fn(&Counts) -> &AtomicUsize);

impl Counted {
    fn new(load: &Load, which: fn(&Counts) -> &AtomicUsize) -> Counted {
        which(&load.0).fetch_add(1, Ordering::Relaxed);
        Counted(load.clone(), which)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.1)(&self.0.0).fetch_sub(1, Ordering::Relaxed);
    }
}

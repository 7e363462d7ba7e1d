//! `brood cluster` and `brood cgi` are child subreapers: the orphaned background jobs of
//! their workers and scripts land on them and are reaped (`brood::init::OrphanReaper`),
//! instead of going to the machine's init, or staying zombies in a container without one.

/// Starts the reaper on the current runtime; without pidfds (it cannot tell orphans from
/// the server's own children there) says so on stderr and goes on without it.
pub fn start(who: &str) -> Option<brood::init::OrphanReaper> {
    match brood::init::OrphanReaper::start() {
        Ok(r) => Some(r),
        Err(e) => {
            crate::log::say!("{who}: orphans are not reaped here: {e}");
            None
        }
    }
}

//! CPU time of a process tree from `/proc`, for the benches that report a server's own cost
//! per request beside its rate (`benches/fastcgi.rs`, `cli/benches/cluster.rs`, which
//! includes this file by path).

/// utime + stime, in clock ticks, of `pid` (every thread, live or ended) and of every live
/// process below it, leaving out (with what is below them) those whose command name
/// `skip` picks.
pub fn tree_ticks(pid: u32, skip: &dyn Fn(&str) -> bool) -> u64 {
    ticks_below(pid, skip, 0)
}

fn ticks_below(pid: u32, skip: &dyn Fn(&str) -> bool, depth: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    if skip(head.split_once('(').map_or("", |(_, comm)| comm)) {
        return 0;
    }
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    let mut ticks = field(14).unwrap_or(0) + field(15).unwrap_or(0);
    if depth > 8 {
        return ticks;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            ticks += ticks_below(child, skip, depth + 1);
        }
    }
    ticks
}

/// `USER_HZ`, the unit of `/proc/PID/stat`'s times (100 on every Linux ABI but alpha's).
pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

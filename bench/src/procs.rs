//! Server CPU time from procfs: utime + stime of the server processes (the mesh, redis-server,
//! every postgres process), read before and after a run.
use std::process::Command;

/// Clock ticks per second of /proc/<pid>/stat.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used so far by `pid` and by its children that have exited (utime + stime + cutime +
/// cstime), or 0 if it is gone. The children's part matters for PostgreSQL, whose backends exit when
/// their client disconnects and are then counted in the postmaster's cutime/cstime.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12) + field(13) + field(14)) / ticks_per_second()
}

/// Pids of every process with this exact name.
pub fn pids_named(name: &str) -> Vec<u32> {
    Command::new("pgrep")
        .arg("-x")
        .arg(name)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Total CPU seconds of a set of processes (looked up again each time: postgres forks backends).
pub fn total_cpu(pids: &[u32], names: &[&str]) -> f64 {
    let mut all: Vec<u32> = pids.to_vec();
    for name in names {
        all.extend(pids_named(name));
    }
    all.sort_unstable();
    all.dedup();
    all.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// One line of text from a command (the environment section of the report).
pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

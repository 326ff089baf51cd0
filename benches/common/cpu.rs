//! CPU time of processes, from /proc, for the load benches' "CPU per request".

use std::process::Command;

/// The fields of /proc/PID/stat after the command name (the man page's field 3 is index 0);
/// `None` when the process is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// user + system CPU ticks of `pid` so far; 0 when gone.
pub fn cpu_ticks(pid: u32) -> f64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// user and system CPU ticks of `pid` so far (fields 14 and 15), apart; (0, 0) when gone.
pub fn cpu_ticks_split(pid: u32) -> (f64, f64) {
    stat_fields(pid).map_or((0.0, 0.0), |fields| {
        (fields[11].parse().unwrap(), fields[12].parse().unwrap())
    })
}

/// The processes whose parent (field 4) is `pid` (an nginx master's workers).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(*child).is_some_and(|f| f[1] == pid.to_string()))
        .collect()
}

/// CPU ticks of every process named `name` so far (a server's backends come and go; what
/// exited in between is not counted).
pub fn cpu_ticks_named(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(cpu_ticks)
        .sum()
}

/// Busy CPU ticks of the whole machine so far, all cores (the first line of /proc/stat:
/// everything but idle, iowait and steal), whatever process used them.
pub fn machine_busy_ticks() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice: not idle, iowait or
    // steal (the hypervisor running someone else), and guest time is already in user and nice.
    fields[..7].iter().sum::<f64>() - fields[3] - fields[4]
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

//! CPU time of processes, from /proc, for the load benches' "CPU per request".

use std::process::Command;

/// user + system CPU ticks of `pid` so far (fields 14 and 15 of /proc/PID/stat); 0 when gone.
pub fn cpu_ticks(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after the name, field 3 of the man page is index 0: utime is 14 → 11, stime 15 → 12
    fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
}

/// user and system CPU ticks of `pid` so far, apart; (0, 0) when gone.
pub fn cpu_ticks_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    (
        fields[11].parse::<f64>().unwrap(),
        fields[12].parse::<f64>().unwrap(),
    )
}

/// The processes whose parent is `pid` (an nginx master's workers).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                after_name.split_whitespace().nth(1) == Some(&pid.to_string())
            })
        })
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

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

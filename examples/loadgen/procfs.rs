//! CPU time of processes and of their threads, from /proc/<pid>/stat and
//! /proc/<pid>/task/<tid>/stat. Resolution: one clock tick (10 ms; Linux's USER_HZ is 100).

use std::collections::HashMap;
use std::time::Duration;

/// One thread's name (`comm`, cut by the kernel at 15 characters), CPU time so far, and
/// how long it was ready to run but waited for a core (the run queue, from `schedstat`).
#[derive(Clone, Debug)]
pub struct ThreadCpu {
    pub tid: u32,
    pub comm: String,
    pub cpu: Duration,
    pub runnable: Duration,
}

/// (comm, user + system time) from the text of a `stat` file.
fn parse_stat(stat: &str) -> Option<(String, Duration)> {
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()?;
    Some((comm, Duration::from_millis(ticks * 10)))
}

/// CPU time (user + system) process `pid` used so far, threads that have exited
/// included; zero once it is gone.
pub fn process_cpu(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map(|(_, cpu)| cpu)
        .unwrap_or_default()
}

/// Every live thread of process `pid` with its CPU time so far.
pub fn threads(pid: u32) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let tid = entry.file_name().to_str()?.parse().ok()?;
        let (comm, cpu) = parse_stat(&std::fs::read_to_string(entry.path().join("stat")).ok()?)?;
        // schedstat: time on a CPU, time waiting on a run queue (both ns), time slices.
        let runnable = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .map(Duration::from_nanos)
            .unwrap_or_default();
        Some(ThreadCpu {
            tid,
            comm,
            cpu,
            runnable,
        })
    })
    .collect()
}

/// The CPU each thread used between two readings of [`threads`], most first (a thread
/// started in between counts from zero).
pub fn used_between(before: &[ThreadCpu], after: &[ThreadCpu]) -> Vec<ThreadCpu> {
    let start: HashMap<u32, &ThreadCpu> = before.iter().map(|t| (t.tid, t)).collect();
    let mut used: Vec<ThreadCpu> = after
        .iter()
        .map(|t| {
            let (cpu, runnable) = start.get(&t.tid).map(|b| (b.cpu, b.runnable)).unwrap_or_default();
            ThreadCpu {
                tid: t.tid,
                comm: t.comm.clone(),
                cpu: t.cpu.saturating_sub(cpu),
                runnable: t.runnable.saturating_sub(runnable),
            }
        })
        .collect();
    used.sort_by(|a, b| b.cpu.cmp(&a.cpu).then(a.tid.cmp(&b.tid)));
    used
}

/// Prints the `top` threads of `used` and the totals per thread name, in CPU seconds and
/// in cores (CPU time over `wall`), with the share of `wall` each waited for a core.
pub fn print_threads(used: &[ThreadCpu], wall: Duration, top: usize, indent: &str) {
    let wall = wall.as_secs_f64().max(f64::EPSILON);
    for t in used.iter().take(top).filter(|t| !t.cpu.is_zero()) {
        println!(
            "{indent}{:<16} tid {:<7} {:>6.2} s  {:.2} cores  (waited for a core {:.0}% of the time)",
            t.comm,
            t.tid,
            t.cpu.as_secs_f64(),
            t.cpu.as_secs_f64() / wall,
            100.0 * t.runnable.as_secs_f64() / wall
        );
    }
    let mut by_name: Vec<(String, usize, Duration)> = Vec::new();
    for t in used {
        // Numbered threads of one kind (sqlx-sqlite-worker-0, -1 …) count together.
        let name = t
            .comm
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_string();
        match by_name.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, count, cpu)) => {
                *count += 1;
                *cpu += t.cpu;
            }
            None => by_name.push((name, 1, t.cpu)),
        }
    }
    by_name.sort_by_key(|e| std::cmp::Reverse(e.2));
    let names: Vec<String> = by_name
        .iter()
        .filter(|(_, _, cpu)| !cpu.is_zero())
        .map(|(name, count, cpu)| format!("{name} ×{count} {:.2}", cpu.as_secs_f64() / wall))
        .collect();
    println!("{indent}cores by thread name: {}", names.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_is_read_whole() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 1 0";
        let (comm, cpu) = parse_stat(stat).unwrap();
        assert_eq!(comm, "a (b) c");
        assert_eq!(cpu, Duration::from_millis(2800));
    }
}

//! CPU time and peak memory of processes, from the kernel (`/proc/PID/stat`, `/proc/PID/status`).

use serde::Serialize;

/// CPU seconds (user + system) and peak resident set, MiB (the largest process's, for a
/// stage of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

impl Usage {
    /// CPU added up, the largest peak kept.
    pub(crate) fn sum(all: impl IntoIterator<Item = Usage>) -> Usage {
        all.into_iter().fold(Usage::default(), |a, b| Usage {
            cpu_s: a.cpu_s + b.cpu_s,
            peak_rss_mib: a.peak_rss_mib.max(b.peak_rss_mib),
        })
    }

    /// CPU spent since `before` (the peak is the process's whole-life peak).
    pub(crate) fn since(&self, before: &Usage) -> Usage {
        Usage { cpu_s: self.cpu_s - before.cpu_s, peak_rss_mib: self.peak_rss_mib }
    }
}

/// This process so far (from `/proc` too: `getrusage`'s `ru_maxrss` keeps the peak of the
/// process image before `execve`, e.g. a large parent that forked it).
pub(crate) fn self_usage() -> Usage {
    proc_usage(std::process::id())
}

/// A running process, from `/proc/PID/stat` (utime, stime) and `/proc/PID/status`
/// (VmHWM); zero when it is gone.
pub(crate) fn proc_usage(pid: u32) -> Usage {
    let ticks = {
        // SAFETY: sysconf(3) has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            hz as f64
        } else {
            100.0
        }
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), closed by the last ')':
    // state is field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let hwm_kib = crate::fleet::status_kib(pid, "VmHWM").unwrap_or(0);
    Usage { cpu_s: (field(14) + field(15)) / ticks, peak_rss_mib: hwm_kib as f64 / 1024.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_the_same_cpu_from_proc_and_getrusage() {
        // Burn some CPU so both have something to count.
        let mut x = 0u64;
        for i in 0..400_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let from_proc = self_usage();
        // SAFETY: getrusage(2) fills the zeroed struct we own.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let from_rusage = seconds(usage.ru_utime) + seconds(usage.ru_stime);
        assert!(from_proc.cpu_s > 0.05 && from_proc.peak_rss_mib > 1.0, "{from_proc:?}");
        // Clock ticks are 10 ms; other tests' threads run between the two reads.
        assert!((from_proc.cpu_s - from_rusage).abs() < 0.5, "{from_proc:?} vs {from_rusage}");
    }

    #[test]
    fn sums_cpu_and_keeps_the_largest_peak() {
        let a = Usage { cpu_s: 1.5, peak_rss_mib: 100.0 };
        let b = Usage { cpu_s: 2.0, peak_rss_mib: 300.0 };
        assert_eq!(Usage::sum([a, b]), Usage { cpu_s: 3.5, peak_rss_mib: 300.0 });
    }
}

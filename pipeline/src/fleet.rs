//! Pipeline processes run as children of this one (`vigil chaos` scenarios, `vigil bench
//! pipeline`): `vigil detect`, `vigil sink`, `vigil produce`, each with its stdout and
//! stderr in a file of the run's directory. Signals go to them by pid; all of them are killed when the fleet drops (also
//! on error and Ctrl-C), and each dies with this process (`PR_SET_PDEATHSIG`) should it
//! be killed itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A child that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("cannot start {bin}: {cause} (--vigil-bin names the vigil binary)")]
    Spawn { bin: PathBuf, cause: std::io::Error },
}

/// Index of a process in its [`Fleet`].
pub(crate) type ProcId = usize;

/// One child.
pub(crate) struct Proc {
    pub label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

/// Every process of one scenario.
pub(crate) struct Fleet {
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    procs: Vec<Proc>,
}

impl Fleet {
    pub(crate) fn new(bin: &Path, dir: &Path, env: Vec<(String, String)>) -> Fleet {
        Fleet { bin: bin.to_path_buf(), dir: dir.to_path_buf(), env, procs: Vec::new() }
    }

    /// Starts `vigil <args>` with the fleet's environment plus `extra`.
    pub(crate) fn spawn(&mut self, label: &str, args: &[&str], extra: &[(&str, &str)]) -> Result<ProcId, FleetError> {
        let stdout = self.dir.join(format!("{label}.stdout"));
        let stderr = self.dir.join(format!("{label}.stderr"));
        let file =
            |p: &Path| std::fs::File::create(p).map_err(|e| FleetError::Io { what: p.display().to_string(), cause: e });
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| FleetError::Spawn { bin: self.bin.clone(), cause: e })?;
        self.procs.push(Proc { label: label.to_string(), child, stdout, stderr, status: None });
        Ok(self.procs.len() - 1)
    }

    pub(crate) fn label(&self, id: ProcId) -> &str {
        &self.procs[id].label
    }

    pub(crate) fn pid(&self, id: ProcId) -> u32 {
        self.procs[id].child.id()
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self, id: ProcId) -> bool {
        let p = &mut self.procs[id];
        if p.status.is_some() {
            return false;
        }
        match p.child.try_wait() {
            Ok(Some(status)) => {
                p.status = Some(status);
                false
            }
            _ => true,
        }
    }

    /// Sends `signal` (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) when it still runs.
    pub(crate) fn signal(&mut self, id: ProcId, signal: libc::c_int) {
        if self.is_running(id) {
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet
            // (try_wait above saw it running), so the pid cannot have been reused.
            unsafe { libc::kill(self.procs[id].child.id() as libc::pid_t, signal) };
        }
    }

    /// `kill -9` and reap.
    pub(crate) fn kill9(&mut self, id: ProcId) {
        let p = &mut self.procs[id];
        if p.status.is_none() {
            p.child.kill().ok(); // already gone is fine
            p.status = p.child.wait().ok();
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`; the exit status.
    pub(crate) fn terminate(&mut self, id: ProcId, timeout: Duration) -> Option<ExitStatus> {
        self.signal(id, libc::SIGCONT); // a stopped process cannot handle SIGTERM
        self.signal(id, libc::SIGTERM);
        if self.wait(id, timeout).is_none() {
            self.kill9(id);
        }
        self.procs[id].status
    }

    /// Waits up to `timeout` for it to exit; its status.
    pub(crate) fn wait(&mut self, id: ProcId, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(id) {
                return self.procs[id].status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its stderr (the log) so far.
    pub(crate) fn log(&self, id: ProcId) -> String {
        std::fs::read_to_string(&self.procs[id].stderr).unwrap_or_default()
    }

    /// Its stdout so far.
    pub(crate) fn stdout(&self, id: ProcId) -> String {
        std::fs::read_to_string(&self.procs[id].stdout).unwrap_or_default()
    }

    /// Waits until `found(log)`; false on timeout, on `stop`, or when it exits first.
    pub(crate) fn wait_for_log(
        &mut self,
        id: ProcId,
        found: impl Fn(&str) -> bool,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !stop.is_cancelled() {
            if found(&self.log(id)) {
                return true;
            }
            if !self.is_running(id) {
                return found(&self.log(id));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Resident set size in KiB (`/proc/PID/status`), while it runs.
    pub(crate) fn rss_kib(&mut self, id: ProcId) -> Option<u64> {
        if !self.is_running(id) {
            return None;
        }
        status_kib(self.pid(id), "VmRSS")
    }

    /// Ids of every process started so far.
    pub(crate) fn all(&self) -> Vec<ProcId> {
        (0..self.procs.len()).collect()
    }

    /// The last lines of every log, for a failure message.
    pub(crate) fn tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for id in self.all() {
            let log = self.log(id);
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!("---- {} ----\n", self.label(id)));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for id in self.all() {
            self.kill9(id);
        }
    }
}

/// A `KiB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …); `None` when the process
/// is gone or has no such field.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child gets SIGKILL when this process dies, whatever kills it.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches only the child being exec'd.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Whether a detector's log shows it owning partitions now (under a cooperative protocol
/// a revocation may take only some of them).
pub(crate) fn owns_partitions(log: &str) -> bool {
    !owned_partitions(log).is_empty()
}

/// The partitions a detector owns by its log: assignments add, revocations remove (the
/// cooperative protocols log increments; eager rebalances revoke everything first).
pub(crate) fn owned_partitions(log: &str) -> Vec<i32> {
    let mut owned = std::collections::BTreeSet::new();
    for line in log.lines() {
        let assigned = line.contains("partitions assigned");
        if !assigned && !line.contains("partitions revoked") {
            continue;
        }
        let Some(list) = line.split("partitions=[").nth(1).and_then(|rest| rest.split(']').next()) else {
            continue;
        };
        for p in list.split(',').filter_map(|p| p.trim().parse::<i32>().ok()) {
            if assigned {
                owned.insert(p);
            } else {
                owned.remove(&p);
            }
        }
    }
    owned.into_iter().collect()
}

/// Assignment lines in a log (each a rebalance this member took part in).
pub(crate) fn assignments(log: &str) -> usize {
    log.lines().filter(|l| l.contains("partitions assigned")).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_partitions_follow_assignments_and_revocations() {
        let log = "x partitions assigned topic=t partitions=[0, 1, 2]\n\
                   x partitions revoked topic=t partitions=[1] lost=false\n\
                   x partitions assigned topic=t partitions=[5]\n";
        assert_eq!(owned_partitions(log), [0, 2, 5]);
        assert_eq!(owned_partitions("x partitions revoked topic=t partitions=[0, 2, 5] lost=true"), Vec::<i32>::new());
    }

    #[test]
    fn ownership_follows_assignments_and_revocations() {
        assert!(!owns_partitions(""));
        let assigned = "INFO partitions assigned topic=i partitions=[0, 3]\n";
        assert!(owns_partitions(assigned));
        assert!(!owns_partitions("INFO partitions assigned topic=i partitions=[]\n"));
        let revoked = format!("{assigned}INFO partitions revoked topic=i partitions=[0, 3] lost=false\n");
        assert!(!owns_partitions(&revoked));
        let partly = format!("{assigned}INFO partitions revoked topic=i partitions=[3] lost=false\n");
        assert!(owns_partitions(&partly));
        assert_eq!(assignments(&format!("{revoked}{assigned}")), 2);
    }
}

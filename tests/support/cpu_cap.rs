//! Processes capped together to a share of one core by a cgroup, so a test
//! can make one server the scarce resource on any machine (cgroup v1's
//! `cpu` controller, or v2's `cpu.max`). The cap ends when the value is
//! dropped: every process in the group then (children forked since
//! included) goes back.

use std::path::PathBuf;

pub struct CpuCap {
    group: PathBuf,
    /// Where the capped processes go back to.
    parent: PathBuf,
}

impl CpuCap {
    /// Caps `pid` (every thread of it) to `quota_us` of each 100 ms.
    /// Panics with the reason when the machine offers no way to.
    pub fn apply(name: &str, pid: u32, quota_us: u32) -> CpuCap {
        Self::apply_all(name, &[pid], quota_us)
    }

    /// Caps `pids` together (a server and its worker processes; those they
    /// fork later join them) to `quota_us` of each 100 ms.
    pub fn apply_all(name: &str, pids: &[u32], quota_us: u32) -> CpuCap {
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (parent, quota_file, quota) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1, "cpu.cfs_quota_us", quota_us.to_string())
        } else if v2.join("cgroup.subtree_control").exists() {
            (v2, "cpu.max", format!("{quota_us} 100000"))
        } else {
            panic!(
                "no cgroup cpu controller at /sys/fs/cgroup/cpu (v1) or /sys/fs/cgroup (v2): cannot cap pids {pids:?}"
            );
        };
        let group = parent.join(format!("hookrelay-{name}"));
        std::fs::create_dir_all(&group).unwrap_or_else(|e| panic!("creating {}: {e}", group.display()));
        std::fs::write(group.join(quota_file), quota).unwrap_or_else(|e| panic!("writing {quota_file}: {e}"));
        for pid in pids {
            std::fs::write(group.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("moving pid {pid} into {}: {e}", group.display()));
        }
        CpuCap { group, parent }
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.group.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.group);
    }
}

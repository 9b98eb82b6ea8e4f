//! Reading a container's cgroup from the host: OOM kills, pids-limit hits, live process count and
//! peak memory, for cgroup v1 and v2.
//!
//! The container's cgroup is found from its init process (`/proc/<pid>/cgroup`) and the cgroup mounts
//! of this process (`/proc/self/mountinfo`). This only works when caldera runs on the engine's host in
//! the host's pid namespace; otherwise [`ContainerCgroup::locate`] finds nothing and the sandbox falls
//! back to the engine's events and stats.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A controller directory of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ControllerDir {
    path: PathBuf,
    v2: bool,
}

/// The memory and pids cgroup directories of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerCgroup {
    memory: Option<ControllerDir>,
    pids: Option<ControllerDir>,
}

/// One cgroup filesystem mount: its root inside the hierarchy and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    root: String,
    mount_point: PathBuf,
    /// `None` for cgroup2, else the v1 controllers of the hierarchy.
    v1_controllers: Option<Vec<String>>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let root = unescape_mount_field(pre[3]);
        let mount_point = PathBuf::from(unescape_mount_field(pre[4]));
        match post[0] {
            "cgroup2" => mounts.push(CgroupMount {
                root,
                mount_point,
                v1_controllers: None,
            }),
            "cgroup" => {
                let controllers = post[2]
                    .split(',')
                    .map(|o| o.strip_prefix("name=").unwrap_or(o).to_owned())
                    .collect();
                mounts.push(CgroupMount {
                    root,
                    mount_point,
                    v1_controllers: Some(controllers),
                });
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code as char);
            i += 4;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// `(hierarchy id, controllers, path)` lines of `/proc/<pid>/cgroup`.
fn parse_proc_cgroup(text: &str) -> Vec<(String, Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.to_owned();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.strip_prefix("name=").unwrap_or(c).to_owned())
                .collect();
            let path = parts.next()?.to_owned();
            Some((id, controllers, path))
        })
        .collect()
}

fn join_under_mount(mount: &CgroupMount, cgroup_path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        cgroup_path.trim_start_matches('/')
    } else {
        cgroup_path
            .strip_prefix(mount.root.as_str())?
            .trim_start_matches('/')
    };
    Some(mount.mount_point.join(relative))
}

/// Finds the directory of `controller` for a process, given its `/proc/<pid>/cgroup` and the mounts.
fn controller_dir(
    controller: &str,
    proc_cgroup: &[(String, Vec<String>, String)],
    mounts: &[CgroupMount],
    probe_file: &str,
) -> Option<ControllerDir> {
    // cgroup v1 hierarchy carrying the controller.
    for (_, controllers, path) in proc_cgroup {
        if !controllers.iter().any(|c| c == controller) {
            continue;
        }
        for mount in mounts {
            if let Some(mc) = &mount.v1_controllers
                && mc.iter().any(|c| c == controller)
                && let Some(dir) = join_under_mount(mount, path)
                && dir.join(probe_file).exists()
            {
                return Some(ControllerDir {
                    path: dir,
                    v2: false,
                });
            }
        }
    }
    // cgroup v2 (the "0::" line) with the controller enabled.
    for (id, controllers, path) in proc_cgroup {
        if id != "0" || !controllers.is_empty() {
            continue;
        }
        for mount in mounts.iter().filter(|m| m.v1_controllers.is_none()) {
            if let Some(dir) = join_under_mount(mount, path)
                && dir.join(probe_file).exists()
            {
                return Some(ControllerDir {
                    path: dir,
                    v2: true,
                });
            }
        }
    }
    None
}

/// Value of `key` in a flat-keyed file (`key value` per line).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

async fn read_u64(path: &Path) -> Option<u64> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    let text = text.trim();
    if text == "max" {
        return Some(u64::MAX);
    }
    text.parse().ok()
}

async fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    keyed_value(&text, key)
}

impl ContainerCgroup {
    /// Locates the cgroup of the process `pid` (the container's init, as the engine reports it). The
    /// directories must carry `container_id` in their path, so a pid from another namespace cannot
    /// point us at a stranger's cgroup.
    pub(crate) async fn locate(pid: i64, container_id: &str) -> Option<Self> {
        if pid <= 0 {
            return None;
        }
        let proc_cgroup = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .await
            .ok()?;
        let mountinfo = tokio::fs::read_to_string("/proc/self/mountinfo")
            .await
            .ok()?;
        let proc_cgroup = parse_proc_cgroup(&proc_cgroup);
        let mounts = parse_mountinfo(&mountinfo);
        let owned = |d: Option<ControllerDir>| {
            d.filter(|d| d.path.to_string_lossy().contains(container_id))
        };
        let found = tokio::task::spawn_blocking(move || {
            (
                controller_dir("memory", &proc_cgroup, &mounts, "memory.usage_in_bytes")
                    .or_else(|| controller_dir("memory", &proc_cgroup, &mounts, "memory.current")),
                controller_dir("pids", &proc_cgroup, &mounts, "pids.current"),
            )
        })
        .await
        .ok()?;
        let cgroup = ContainerCgroup {
            memory: owned(found.0),
            pids: owned(found.1),
        };
        (cgroup.memory.is_some() || cgroup.pids.is_some()).then_some(cgroup)
    }

    /// Number of processes the kernel's OOM killer killed in this cgroup so far.
    pub(crate) async fn oom_kills(&self) -> Option<u64> {
        let mem = self.memory.as_ref()?;
        if mem.v2 {
            read_keyed(&mem.path.join("memory.events"), "oom_kill").await
        } else {
            read_keyed(&mem.path.join("memory.oom_control"), "oom_kill").await
        }
    }

    /// Number of times a fork/clone failed because the pids limit was reached.
    pub(crate) async fn pids_max_events(&self) -> Option<u64> {
        let pids = self.pids.as_ref()?;
        read_keyed(&pids.path.join("pids.events"), "max").await
    }

    /// Number of tasks (processes and threads) in the cgroup now.
    pub(crate) async fn pids_current(&self) -> Option<u64> {
        let pids = self.pids.as_ref()?;
        read_u64(&pids.path.join("pids.current")).await
    }

    /// Starts measuring peak memory from now on (v1: resets `memory.max_usage_in_bytes`; v2: resets
    /// `memory.peak` for a file descriptor kept open, kernel ≥ 6.12). Where resetting is not possible
    /// the peak reported is the container's since it started.
    pub(crate) async fn start_peak(&self) -> PeakMeter {
        let Some(mem) = self.memory.as_ref() else {
            return PeakMeter::None;
        };
        if mem.v2 {
            let path = mem.path.join("memory.peak");
            if let Ok(mut file) = tokio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .await
                && file.write_all(b"reset\n").await.is_ok()
            {
                return PeakMeter::V2Fd(file);
            }
            PeakMeter::File(path)
        } else {
            let path = mem.path.join("memory.max_usage_in_bytes");
            // Writing 0 resets the high-water mark to the current usage.
            let _ = tokio::fs::write(&path, b"0").await;
            PeakMeter::File(path)
        }
    }
}

/// Reads a step's peak memory at its end; see [`ContainerCgroup::start_peak`].
#[derive(Debug)]
pub(crate) enum PeakMeter {
    None,
    File(PathBuf),
    V2Fd(tokio::fs::File),
}

impl PeakMeter {
    pub(crate) async fn read(self) -> Option<u64> {
        match self {
            PeakMeter::None => None,
            PeakMeter::File(path) => read_u64(&path).await,
            PeakMeter::V2Fd(mut file) => {
                file.seek(SeekFrom::Start(0)).await.ok()?;
                let mut text = String::new();
                file.read_to_string(&mut text).await.ok()?;
                text.trim().parse().ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";

    #[test]
    fn parses_mountinfo() {
        let mounts = parse_mountinfo(MOUNTINFO_HYBRID);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].v1_controllers, None);
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            mounts[1].v1_controllers.as_deref(),
            Some(&["rw".to_owned(), "memory".to_owned()][..])
        );
        assert_eq!(mounts[3].v1_controllers.as_ref().unwrap()[1], "systemd");
    }

    #[test]
    fn parses_proc_cgroup_and_joins() {
        let lines = parse_proc_cgroup("4:memory:/docker/abc\n8:pids:/docker/abc\n0::/\n");
        assert_eq!(
            lines[0],
            ("4".into(), vec!["memory".into()], "/docker/abc".into())
        );
        assert_eq!(lines[2], ("0".into(), vec![], "/".into()));
        let mount = CgroupMount {
            root: "/".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            v1_controllers: Some(vec!["memory".into()]),
        };
        assert_eq!(
            join_under_mount(&mount, "/docker/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/docker/abc"))
        );
        let nested = CgroupMount {
            root: "/outer".into(),
            mount_point: "/sys/fs/cgroup".into(),
            v1_controllers: None,
        };
        assert_eq!(
            join_under_mount(&nested, "/outer/docker-abc.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/docker-abc.scope"))
        );
        assert_eq!(join_under_mount(&nested, "/elsewhere"), None);
    }

    #[test]
    fn reads_keyed_values() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed_value("max 17\n", "max"), Some(17));
        assert_eq!(keyed_value("low 0\n", "oom_kill"), None);
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape_mount_field("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
    }

    #[tokio::test]
    async fn own_process_is_not_taken_for_a_container() {
        // Our own cgroup path does not carry this id, so nothing may be located.
        let pid = i64::from(std::process::id());
        assert_eq!(ContainerCgroup::locate(pid, "0123456789abcdef").await, None);
        assert_eq!(ContainerCgroup::locate(0, "x").await, None);
    }
}

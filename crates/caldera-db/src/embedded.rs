//! A private PostgreSQL cluster started from the system's server binaries.
//!
//! Used by the test harness (one cluster per test binary, removed afterwards) and by
//! `caldera local` (a cluster under the state directory, kept between runs).
//!
//! `initdb` and `postgres` refuse to run as root. When caldera runs as root, the cluster runs as
//! the `postgres` system user (created by Debian's `postgresql` package) and its directory is
//! handed to that user. The server is supervised by a tiny shell watchdog that stops it (and, for
//! an ephemeral cluster, removes its directory) as soon as the owning process exits, however it
//! exits — so neither tests nor `caldera local` leak servers.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors while starting a private cluster. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries not found (looked in $CALDERA_PG_BIN, /usr/lib/postgresql/*/bin and PATH); \
         install them with `apt-get install postgresql` or point CALDERA_PG_BIN at the directory holding initdb and postgres"
    )]
    BinariesNotFound,
    #[error(
        "running as root but there is no `postgres` system user to run the cluster as; install Debian's `postgresql` package or run as a normal user"
    )]
    NoPostgresUser,
    #[error("{step} failed: {message}")]
    Command { step: &'static str, message: String },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("postgres did not accept connections within {0:?}; see its log at {1}")]
    NotReady(Duration, PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory holding the cluster (`data/`, `socket/`, `postgres.log`). Created if missing;
    /// an existing initialised cluster is reused.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1; `0` picks a free one.
    pub port: u16,
    /// Remove `dir` when the owning process exits (tests).
    pub ephemeral: bool,
    /// Trade durability for speed (fsync off): only for throw-away test clusters.
    pub unsafe_fast: bool,
    /// Load `pg_stat_statements` (for benchmarks: which statements the time goes to). The
    /// extension itself still has to be created in a database.
    pub statement_stats: bool,
}

/// A running private cluster. Dropping the handle does not stop the server; it stops when the
/// process that started it exits, or on [`PrivatePostgres::stop`].
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    watchdog_pid: u32,
}

/// The superuser role created by `initdb` for private clusters.
pub const SUPERUSER: &str = "caldera";

impl PrivatePostgres {
    /// Start (initialising if needed) a cluster and wait until it accepts connections.
    pub async fn start(options: ClusterOptions) -> Result<Self, EmbeddedError> {
        let bin = find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if running_as_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let layout = Layout::of(&options.dir);
        layout.create(run_as)?;
        if !layout.data.join("PG_VERSION").exists() {
            initdb(&bin, &layout.data, run_as, options.unsafe_fast)?;
        }
        let port = if options.port == 0 {
            free_port().map_err(io_err(&layout.dir))?
        } else {
            options.port
        };
        remove_stale_pid_file(&layout.data);
        let mut sh = watchdog(&bin, &layout, port, &options);
        let child = as_user(&mut sh, run_as).spawn().map_err(io_err(&bin))?;
        let this = PrivatePostgres {
            dir: layout.dir.clone(),
            port,
            watchdog_pid: child.id(),
        };
        this.wait_ready(&bin, &layout.log, Duration::from_secs(30))
            .await?;
        Ok(this)
    }

    async fn wait_ready(
        &self,
        bin: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        loop {
            let ok = tokio::process::Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(EmbeddedError::NotReady(limit, log.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Stop the server now (fast shutdown) and wait for it to exit.
    pub async fn stop(self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.watchdog_pid.to_string()])
            .status()
            .await;
        let proc_dir = PathBuf::from(format!("/proc/{}", self.watchdog_pid));
        for _ in 0..300 {
            if !proc_dir.exists() || is_zombie(&proc_dir) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where a cluster keeps its files: the data directory, the socket directory and the server's log,
/// under the cluster's directory.
struct Layout {
    dir: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn of(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_owned(),
            data: dir.join("data"),
            socket: dir.join("socket"),
            log: dir.join("postgres.log"),
        }
    }

    /// Create the directories, reachable by the server's user (`run_as`, when not this one).
    fn create(&self, run_as: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
        fs::create_dir_all(&self.socket).map_err(io_err(&self.socket))?;
        // The directory (and its parents) must be reachable by the server's user.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&self.dir))?;
        if let Some((uid, gid)) = run_as {
            chown_tree(&self.dir, uid, gid)?;
        }
        Ok(())
    }
}

/// Initialise a cluster in `data`: the [`SUPERUSER`] role, trusted local connections, UTF-8, the
/// C locale.
fn initdb(
    bin: &Path,
    data: &Path,
    run_as: Option<(u32, u32)>,
    unsafe_fast: bool,
) -> Result<(), EmbeddedError> {
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
        .arg("--no-instructions");
    if unsafe_fast {
        initdb.arg("--no-sync");
    }
    let out = as_user(&mut initdb, run_as)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(bin))?;
    if !out.status.success() {
        return Err(EmbeddedError::Command {
            step: "initdb",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A stale pid file from a killed server would stop postgres from starting.
fn remove_stale_pid_file(data: &Path) {
    let pid_file = data.join("postmaster.pid");
    if pid_file.exists() && !server_alive(&pid_file) {
        let _ = fs::remove_file(&pid_file);
    }
}

/// The server's settings beyond its defaults (`-c name=value …`), as the options ask.
fn server_settings(options: &ClusterOptions) -> String {
    let mut extra = String::from("-c max_connections=300 -c shared_buffers=128MB");
    if options.unsafe_fast {
        extra.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
    }
    if options.statement_stats {
        extra.push_str(" -c shared_preload_libraries=pg_stat_statements");
    }
    extra
}

/// The watchdog: starts the server, stops it when the owning process (`PG_OWNER`) is gone or on
/// a signal, and then removes an ephemeral cluster's directory.
const WATCHDOG: &str = r#"
"$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_SOCK" -c listen_addresses=127.0.0.1 $PG_EXTRA >>"$PG_LOG" 2>&1 &
pg=$!
cleanup() {
  kill -INT "$pg" 2>/dev/null; wait "$pg" 2>/dev/null
  if [ "$PG_EPHEMERAL" = 1 ]; then rm -rf "$PG_ROOT"; fi
  exit 0
}
trap cleanup TERM INT HUP
while [ -d "/proc/$PG_OWNER" ] && kill -0 "$pg" 2>/dev/null; do sleep 0.2; done
cleanup
"#;

/// The command that runs the [`WATCHDOG`] for this cluster, on `port`.
fn watchdog(bin: &Path, layout: &Layout, port: u16, options: &ClusterOptions) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(WATCHDOG)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PG_BIN", bin)
        .env("PG_DATA", &layout.data)
        .env("PG_PORT", port.to_string())
        .env("PG_SOCK", &layout.socket)
        .env("PG_EXTRA", server_settings(options))
        .env("PG_LOG", &layout.log)
        .env("PG_ROOT", &layout.dir)
        .env("PG_EPHEMERAL", if options.ephemeral { "1" } else { "0" })
        .env("PG_OWNER", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // its own process group: a ^C to the terminal reaches caldera, which then exits,
        // and the watchdog stops the server cleanly instead of being killed mid-write
        .process_group(0);
    sh
}

fn is_zombie(proc_dir: &Path) -> bool {
    fs::read_to_string(proc_dir.join("stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn server_alive(pid_file: &Path) -> bool {
    fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Is this process running as root? (`/proc/self` is owned by the effective uid.)
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user() -> Result<(u32, u32), EmbeddedError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err(Path::new("/etc/passwd")))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == "postgres")
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or(EmbeddedError::NoPostgresUser)
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io_err(dir))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Locate the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("CALDERA_PG_BIN").map(PathBuf::from) {
        return has(&dir).then_some(dir);
    }
    // Debian layout: /usr/lib/postgresql/<major>/bin — prefer the newest major.
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has(d))
        .collect();
    majors.sort();
    if let Some((_, dir)) = majors.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| has(d))
}

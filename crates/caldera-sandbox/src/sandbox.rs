//! The connection to the engine and container creation.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountType, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};

use crate::container::{Container, base_env};
use crate::error::{Result, SandboxError};
use crate::spec::{
    JobMounts, LABEL_OWNER, LABEL_SANDBOX, Limits, SandboxConfig, paths, valid_toolchain_mount_name,
};

/// Seconds the engine client waits for an answer to one API call (not for a step's output).
const API_TIMEOUT_SECS: u64 = 120;

/// What the engine told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub server_version: String,
    /// The engine's API version (the client negotiated down to it if it was older than its own).
    pub api_version: String,
    /// `1` or `2`, when the engine reports it.
    pub cgroup_version: Option<String>,
    pub storage_driver: Option<String>,
}

/// A connection to a Docker engine with the sandbox image present.
#[derive(Debug, Clone)]
pub struct Sandbox {
    docker: Docker,
    config: SandboxConfig,
    engine: EngineInfo,
}

static CONTAINER_SEQ: AtomicU64 = AtomicU64::new(0);

/// A client for the engine at `docker_host` (`None`: `DOCKER_HOST` or the default socket). The API
/// version still has to be negotiated.
pub(crate) fn docker_client(docker_host: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    match docker_host {
        None => Docker::connect_with_defaults(),
        Some(host) if host.starts_with("unix://") || host.starts_with('/') => {
            Docker::connect_with_socket(host, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        }
        Some(host) => {
            Docker::connect_with_http(host, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        }
    }
}

fn endpoint_of(config: &SandboxConfig) -> String {
    config
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}

pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Removes a container and its anonymous volumes, even a running one: `Ok(false)` when it was
/// already gone.
pub(crate) async fn force_remove(
    docker: &Docker,
    id: &str,
) -> Result<bool, bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Sandbox {
    /// Connects to the engine, negotiates the API version, checks that the image exists and, if
    /// configured, removes this owner's leftover containers.
    pub async fn connect(config: SandboxConfig) -> Result<Sandbox> {
        let endpoint = endpoint_of(&config);
        let unreachable = |source| SandboxError::EngineUnreachable {
            endpoint: endpoint.clone(),
            source,
        };
        let docker = docker_client(config.docker_host.as_deref()).map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let version = docker.version().await.map_err(unreachable)?;
        let info = docker.info().await.map_err(unreachable)?;
        let engine = EngineInfo {
            server_version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            cgroup_version: info.cgroup_version.map(|v| v.to_string()),
            storage_driver: info.driver,
        };
        match docker.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(SandboxError::ImageMissing {
                    image: config.image.clone(),
                });
            }
            Err(e) => return Err(SandboxError::docker("inspect image")(e)),
        }
        tracing::debug!(
            endpoint,
            engine = engine.server_version,
            api = engine.api_version,
            image = config.image,
            "connected to Docker engine"
        );
        let sandbox = Sandbox {
            docker,
            config,
            engine,
        };
        if sandbox.config.sweep_on_connect {
            let removed = sandbox.sweep().await?;
            if removed > 0 {
                tracing::info!(
                    removed,
                    owner = sandbox.config.owner,
                    "removed leftover sandbox containers"
                );
            }
        }
        Ok(sandbox)
    }

    pub fn engine(&self) -> &EngineInfo {
        &self.engine
    }

    /// The id (`sha256:…`) of the image the sandbox runs, as the engine has it now: what the
    /// result cache's fingerprint names (a tag can be moved to another image).
    pub async fn image_id(&self) -> Result<String> {
        let image = self
            .docker
            .inspect_image(&self.config.image)
            .await
            .map_err(SandboxError::docker("inspect image"))?;
        image.id.ok_or_else(|| SandboxError::ImageMissing {
            image: self.config.image.clone(),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The engine client, for callers that need more than the sandbox offers (e.g. benchmarks).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Removes every container (running or not) labelled with this sandbox's owner. Returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![format!("{LABEL_OWNER}={}", self.config.owner)],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(SandboxError::docker("list containers"))?;
        let mut removed = 0;
        for summary in list {
            let Some(id) = summary.id else { continue };
            if force_remove(&self.docker, &id)
                .await
                .map_err(SandboxError::docker("remove leftover container"))?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Creates and starts a container for one job, with a step driver waiting in it
    /// ([`Container::prime`]). Steps then run in it with [`Container::exec_steps`] (or
    /// [`Container::exec`]); remove it with [`Container::remove`] when the job is done.
    pub async fn create(&self, mounts: JobMounts, limits: Limits) -> Result<Container> {
        limits.validate()?;
        let uid = self.config.uid;
        let gid = self.config.gid;
        let checked = mounts.clone();
        tokio::task::spawn_blocking(move || check_mounts(&checked, uid, gid))
            .await
            .map_err(|e| SandboxError::Io {
                context: "checking mounts".into(),
                source: std::io::Error::other(e),
            })??;

        let name = self.container_name();
        let toolchain_names: Vec<String> =
            mounts.toolchains.iter().map(|t| t.name.clone()).collect();
        let host_config = host_config(bind_mounts(&mounts), &limits, uid, gid)?;
        let body = self.container_body(&toolchain_names[0], host_config);
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(SandboxError::docker("create container"))?;
        let mut container = Container::new(
            self.docker.clone(),
            self.config.docker_host.clone(),
            created.id,
            name,
            uid,
            gid,
            toolchain_names,
            self.config.use_host_cgroups,
        );
        // the first steps find their driver waiting (see `Container::prime`)
        let started = match container.start().await {
            Ok(()) => container.prime(None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            let _ = container.remove_in_place().await;
            return Err(e);
        }
        Ok(container)
    }

    /// A name of the container's own: `caldera-<owner>-<µs since the epoch, in hex>-<sequence>`.
    fn container_name(&self) -> String {
        format!(
            "caldera-{}-{:x}-{}",
            sanitize_name(&self.config.owner),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or_default(),
            CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// What the engine is asked to create: the image, PID 1, the default toolchain's environment,
    /// the sandbox user, the labels that let a sweep find it, and `host_config`.
    fn container_body(
        &self,
        default_toolchain: &str,
        host_config: HostConfig,
    ) -> ContainerCreateBody {
        let (uid, gid) = (self.config.uid, self.config.gid);
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_owned(), "1".to_owned()),
            (LABEL_OWNER.to_owned(), self.config.owner.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            // PID 1 is a shell that only sleeps and reaps orphans. It survives `kill -KILL -1` (the
            // clean-up between steps), which ends everything else the sandbox user runs.
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done".into(),
            ]),
            entrypoint: Some(vec![]),
            env: Some(
                base_env(default_toolchain)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            user: Some(format!("{uid}:{gid}")),
            working_dir: Some(paths::SOURCE.into()),
            hostname: Some("sandbox".into()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// The job's host directories as bind mounts: source, cargo home and toolchains read-only (the
/// first toolchain also at the default toolchain's path), the target dir writable.
fn bind_mounts(mounts: &JobMounts) -> Vec<Mount> {
    let bind = |source: &Path, target: String, read_only: bool| Mount {
        target: Some(target),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut binds = vec![
        bind(&mounts.source, paths::SOURCE.into(), true),
        bind(&mounts.target, paths::TARGET.into(), false),
        bind(&mounts.cargo_home, paths::CARGO_HOME.into(), true),
        bind(
            &mounts.toolchains[0].path,
            paths::DEFAULT_TOOLCHAIN.into(),
            true,
        ),
    ];
    for tc in &mounts.toolchains {
        binds.push(bind(
            &tc.path,
            format!("{}/{}", paths::TOOLCHAINS, tc.name),
            true,
        ));
    }
    binds
}

/// The container's confinement: its mounts, no network, the limits (memory = memory+swap),
/// no capabilities, a read-only root with tmpfs `/tmp` and `$HOME`, no restarts and no engine log.
fn host_config(binds: Vec<Mount>, limits: &Limits, uid: u32, gid: u32) -> Result<HostConfig> {
    let memory = i64::try_from(limits.memory_bytes)
        .map_err(|_| SandboxError::Invalid("memory limit too large".into()))?;
    let tmpfs = HashMap::from([
        (
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={},mode=1777", limits.tmp_bytes),
        ),
        (
            paths::HOME.to_owned(),
            format!("rw,nosuid,nodev,size=67108864,uid={uid},gid={gid},mode=0755"),
        ),
    ]);
    Ok(HostConfig {
        mounts: Some(binds),
        // A network namespace with only `lo`; Docker still writes `/etc/hosts` (so
        // `localhost` resolves, as tests that serve on it expect). `network_disabled` would
        // leave `/etc/hosts` empty.
        network_mode: Some("none".into()),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((limits.cpus * 1e9) as i64),
        pids_limit: Some(i64::from(limits.pids)),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        init: Some(false),
        privileged: Some(false),
        ipc_mode: Some("private".into()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        log_config: Some(bollard::models::HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        ..Default::default()
    })
}

fn sanitize_name(owner: &str) -> String {
    let s: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() { "x".into() } else { s }
}

fn mount_err(role: &'static str, path: &Path, message: impl Into<String>) -> SandboxError {
    SandboxError::Mount {
        role,
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Whether `uid:gid` may read and traverse a directory with this metadata.
fn readable_dir(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o500 == 0o500
    } else if meta.gid() == gid {
        mode & 0o050 == 0o050
    } else {
        mode & 0o005 == 0o005
    }
}

fn check_readonly_dir(role: &'static str, path: &Path, uid: u32, gid: u32) -> Result<()> {
    if !path.is_absolute() {
        return Err(mount_err(role, path, "must be an absolute path"));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| mount_err(role, path, format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(mount_err(role, path, "is not a directory"));
    }
    if !readable_dir(&meta, uid, gid) {
        return Err(mount_err(
            role,
            path,
            format!(
                "is not readable by the sandbox user {uid}:{gid} (mode {:o}, owner {}:{}); make it \
                 world-readable (chmod a+rX)",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ),
        ));
    }
    Ok(())
}

fn check_mounts(mounts: &JobMounts, uid: u32, gid: u32) -> Result<()> {
    check_readonly_dir("source", &mounts.source, uid, gid)?;
    check_readonly_dir("cargo_home", &mounts.cargo_home, uid, gid)?;
    if mounts.toolchains.is_empty() {
        return Err(SandboxError::Invalid(
            "a job needs at least one toolchain".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for tc in &mounts.toolchains {
        if !valid_toolchain_mount_name(&tc.name) {
            return Err(SandboxError::Invalid(format!(
                "toolchain mount name {:?} may only use letters, digits, '-', '_' and '.'",
                tc.name
            )));
        }
        if !seen.insert(tc.name.as_str()) {
            return Err(SandboxError::Invalid(format!(
                "toolchain {:?} is mounted twice",
                tc.name
            )));
        }
        check_readonly_dir("toolchain", &tc.path, uid, gid)?;
        for tool in ["bin/cargo", "bin/rustc"] {
            if !tc.path.join(tool).is_file() {
                return Err(mount_err(
                    "toolchain",
                    &tc.path,
                    format!("has no {tool}; is it a toolchain directory?"),
                ));
            }
        }
    }
    let target: &PathBuf = &mounts.target;
    if !target.is_absolute() {
        return Err(mount_err("target", target, "must be an absolute path"));
    }
    let meta = std::fs::metadata(target)
        .map_err(|e| mount_err("target", target, format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(mount_err("target", target, "is not a directory"));
    }
    if meta.uid() != uid || meta.mode() & 0o700 != 0o700 {
        std::os::unix::fs::chown(target, Some(uid), Some(gid)).map_err(|e| {
            mount_err(
                "target",
                target,
                format!(
                    "belongs to {}:{} and could not be handed to the sandbox user {uid}:{gid}: {e}",
                    meta.uid(),
                    meta.gid()
                ),
            )
        })?;
        let mode = meta.mode() | 0o700;
        std::fs::set_permissions(target, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| mount_err("target", target, format!("chmod failed: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ToolchainMount;
    use std::os::unix::fs::PermissionsExt;

    fn dir(mode: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    fn fake_toolchain() -> tempfile::TempDir {
        let d = dir(0o755);
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/cargo"), "").unwrap();
        std::fs::write(d.path().join("bin/rustc"), "").unwrap();
        d
    }

    #[test]
    fn mount_checks() {
        let (src, target, home, tc) = (dir(0o755), dir(0o700), dir(0o755), fake_toolchain());
        let mut mounts = JobMounts {
            source: src.path().into(),
            target: target.path().into(),
            cargo_home: home.path().into(),
            toolchains: vec![ToolchainMount::new("stable", tc.path())],
        };
        // Runs as root on the build machines: the target dir is handed over to 1000:1000.
        if nix_is_root() {
            check_mounts(&mounts, 1000, 1000).unwrap();
            let meta = std::fs::metadata(target.path()).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        }
        let private = dir(0o700);
        mounts.source = private.path().into();
        let err = check_mounts(&mounts, 1000, 1000).unwrap_err();
        assert!(err.to_string().contains("not readable"), "{err}");
        mounts.source = src.path().into();
        mounts
            .toolchains
            .push(ToolchainMount::new("stable", tc.path()));
        assert!(matches!(
            check_mounts(&mounts, 1000, 1000),
            Err(SandboxError::Invalid(_))
        ));
        mounts.toolchains = vec![ToolchainMount::new("x", src.path())];
        let err = check_mounts(&mounts, 1000, 1000).unwrap_err();
        assert!(err.to_string().contains("has no bin/cargo"), "{err}");
        mounts.toolchains = vec![];
        assert!(check_mounts(&mounts, 1000, 1000).is_err());
    }

    fn nix_is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn names() {
        assert_eq!(sanitize_name("worker 1/a"), "worker_1_a");
        assert_eq!(sanitize_name(""), "x");
    }
}

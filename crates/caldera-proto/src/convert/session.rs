//! The session around the jobs: the worker's [`Hello`] and the master's [`Welcome`], the
//! worker's [`Heartbeat`]s, and the master's [`Cancel`]s.

use std::time::Duration;

use caldera_core::fingerprint::Environment;
use caldera_core::toolchain::ToolchainIdentity;

use crate::lease::{Lease, LeaseToken};
use crate::v1;
use crate::{WireError, wire};

/// Most slots one worker may announce.
pub const MAX_SLOTS: u32 = 4096;
/// Most toolchain identities one worker may announce.
pub const MAX_TOOLCHAINS: usize = 512;

impl From<&Lease> for v1::LeaseRef {
    fn from(l: &Lease) -> Self {
        v1::LeaseRef {
            job_id: l.job_id,
            lease_token: l.token.to_string(),
        }
    }
}

/// The leases a worker lists, each token checked (`field` names it in errors).
fn leases(field: &str, listed: &[v1::LeaseRef]) -> Result<Vec<Lease>, WireError> {
    listed
        .iter()
        .map(|r| Lease::from_wire(r.job_id, field, &r.lease_token))
        .collect()
}

/// A worker introducing itself, checked: a printable name, a sane number of slots, valid
/// capabilities, and the leases of the jobs it still runs from before a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// A stable name for this worker (host name by default); one session per name at a time.
    pub name: String,
    /// caldera version of the worker.
    pub version: String,
    /// What this worker offers, e.g. "docker", "toolchain:stable", "arch:x86_64".
    pub capabilities: Vec<String>,
    /// How many jobs it runs at once, 1..=[`MAX_SLOTS`].
    pub slots: u32,
    /// Jobs still running on the worker from before this session (after a reconnect).
    pub running: Vec<Lease>,
    /// The build of each toolchain the worker has (none from an older worker).
    pub toolchains: Vec<ToolchainIdentity>,
    /// What else can change an outcome on this worker (none from an older worker, or a worker
    /// that does not know its image: it offers no cache).
    pub environment: Option<Environment>,
}

impl Hello {
    /// What the scheduler matches requirements against: the announced capabilities plus
    /// `toolchain-id:<name>=<hash>` for each toolchain identity (see
    /// [`ToolchainIdentity::capability`]).
    pub fn all_capabilities(&self) -> Vec<String> {
        let mut caps = self.capabilities.clone();
        for cap in self.toolchains.iter().filter_map(|t| t.capability()) {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caps
    }
}

impl From<Hello> for v1::Hello {
    fn from(h: Hello) -> Self {
        v1::Hello {
            name: h.name,
            version: h.version,
            capabilities: h.capabilities,
            slots: h.slots,
            running: h.running.iter().map(Into::into).collect(),
            toolchains: h.toolchains.iter().map(Into::into).collect(),
            environment: h.environment.map(|e| v1::Environment {
                image: e.image,
                limits: e.limits,
                classifier_version: e.classifier,
            }),
        }
    }
}

impl TryFrom<v1::Hello> for Hello {
    type Error = WireError;
    fn try_from(h: v1::Hello) -> Result<Self, WireError> {
        if h.name.is_empty()
            || h.name.len() > 128
            || h.name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(wire(
                "hello.name",
                format!(
                    "{:?} must be 1-128 printable characters without spaces",
                    h.name
                ),
            ));
        }
        if h.slots == 0 || h.slots > MAX_SLOTS {
            return Err(wire(
                "hello.slots",
                format!("{} must be 1..={MAX_SLOTS}", h.slots),
            ));
        }
        if let Some(bad) = h
            .capabilities
            .iter()
            .find(|c| !caldera_core::experiment::is_valid_requirement(c))
        {
            return Err(wire(
                "hello.capabilities",
                format!("invalid capability {bad:?}"),
            ));
        }
        if h.toolchains.len() > MAX_TOOLCHAINS {
            return Err(wire(
                "hello.toolchains",
                format!(
                    "{} identities, at most {MAX_TOOLCHAINS}",
                    h.toolchains.len()
                ),
            ));
        }
        let toolchains = h
            .toolchains
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                ToolchainIdentity::try_from(t)
                    .map_err(|e| e.within(&format!("hello.toolchains[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let environment = h.environment.map(|e| Environment {
            image: e.image,
            limits: e.limits,
            classifier: e.classifier_version,
        });
        if let Some(e) = &environment
            && (e.image.len() > 256 || e.limits.len() > 1024)
        {
            return Err(wire(
                "hello.environment",
                "image id or limits too long (at most 256 and 1024 bytes)",
            ));
        }
        Ok(Hello {
            toolchains,
            environment,
            running: leases("hello.running.lease_token", &h.running)?,
            name: h.name,
            version: h.version,
            capabilities: h.capabilities,
            slots: h.slots,
        })
    }
}

/// The master's answer to Hello, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub worker_id: String,
    /// How long a lease lasts without a heartbeat (whole seconds on the wire; zero: not said).
    pub lease: Duration,
    /// How often to send heartbeats.
    pub heartbeat_interval: Duration,
}

impl From<Welcome> for v1::Welcome {
    fn from(w: Welcome) -> Self {
        v1::Welcome {
            worker_id: w.worker_id,
            lease_seconds: w.lease.as_secs() as u32,
            heartbeat_interval_ms: w.heartbeat_interval.as_millis() as u32,
            limits: None,
        }
    }
}

impl TryFrom<v1::Welcome> for Welcome {
    type Error = WireError;
    fn try_from(w: v1::Welcome) -> Result<Self, WireError> {
        const FIELD: &str = "welcome.heartbeat_interval_ms";
        let lease = Duration::from_secs(w.lease_seconds.into());
        let heartbeat_interval = match (w.heartbeat_interval_ms, w.lease_seconds) {
            (0, 0) => {
                return Err(wire(FIELD, "zero, and no lease_seconds to derive it from"));
            }
            // an old or sloppy master: a third of the lease keeps leases alive through two lost beats
            (0, _) => lease / 3,
            (ms, _) => Duration::from_millis(ms.into()),
        };
        if !lease.is_zero() && heartbeat_interval >= lease {
            return Err(wire(
                FIELD,
                format!("{heartbeat_interval:?} is not shorter than the lease ({lease:?})"),
            ));
        }
        Ok(Welcome {
            worker_id: w.worker_id,
            lease,
            heartbeat_interval,
        })
    }
}

/// A worker's heartbeat: the leases it holds (renewed if still current) and how its machine is
/// doing.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The jobs the worker is running now.
    pub running: Vec<Lease>,
    pub free_disk_bytes: u64,
    pub load_average: f64,
}

impl From<Heartbeat> for v1::Heartbeat {
    fn from(h: Heartbeat) -> Self {
        v1::Heartbeat {
            running: h.running.iter().map(Into::into).collect(),
            free_disk_bytes: h.free_disk_bytes,
            load_average: h.load_average,
        }
    }
}

impl TryFrom<v1::Heartbeat> for Heartbeat {
    type Error = WireError;
    fn try_from(h: v1::Heartbeat) -> Result<Self, WireError> {
        Ok(Heartbeat {
            running: leases("heartbeat.running.lease_token", &h.running)?,
            free_disk_bytes: h.free_disk_bytes,
            load_average: h.load_average,
        })
    }
}

/// The master telling a worker to stop a job and drop its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub job_id: u64,
    /// The lease to stop; `None` (an empty token on the wire): whatever lease the job runs under.
    pub token: Option<LeaseToken>,
    pub reason: String,
}

impl Cancel {
    /// Stop the job running under `lease`.
    pub fn lease(lease: Lease, reason: impl Into<String>) -> Self {
        Cancel {
            job_id: lease.job_id,
            token: Some(lease.token),
            reason: reason.into(),
        }
    }

    /// Whether `lease` is one this cancel stops.
    pub fn stops(&self, lease: &Lease) -> bool {
        lease.job_id == self.job_id && self.token.is_none_or(|t| t == lease.token)
    }
}

impl From<Cancel> for v1::Cancel {
    fn from(c: Cancel) -> Self {
        v1::Cancel {
            job_id: c.job_id,
            lease_token: c.token.map(|t| t.to_string()).unwrap_or_default(),
            reason: c.reason,
        }
    }
}

impl TryFrom<v1::Cancel> for Cancel {
    type Error = WireError;
    fn try_from(c: v1::Cancel) -> Result<Self, WireError> {
        let token = match c.lease_token.as_str() {
            "" => None,
            t => Some(LeaseToken::from_wire("cancel.lease_token", t)?),
        };
        Ok(Cancel {
            job_id: c.job_id,
            token,
            reason: c.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn welcome_is_checked() {
        let w = |lease_seconds, heartbeat_interval_ms| v1::Welcome {
            worker_id: "w".into(),
            lease_seconds,
            heartbeat_interval_ms,
            limits: None,
        };
        let ok = Welcome::try_from(w(30, 10_000)).unwrap();
        assert_eq!(
            (ok.lease, ok.heartbeat_interval),
            (Duration::from_secs(30), Duration::from_secs(10))
        );
        assert_eq!(v1::Welcome::from(ok), w(30, 10_000), "round trip");
        assert_eq!(
            Welcome::try_from(w(30, 0)).unwrap().heartbeat_interval,
            Duration::from_secs(10)
        );
        assert_eq!(
            Welcome::try_from(w(0, 50)).unwrap().heartbeat_interval,
            Duration::from_millis(50)
        );
        for bad in [w(0, 0), w(30, 30_000), w(1, 5_000)] {
            let e = Welcome::try_from(bad).unwrap_err().to_string();
            assert!(e.contains("welcome.heartbeat_interval_ms"), "{e}");
        }
    }

    #[test]
    fn hello_is_checked_naming_the_field() {
        let good = v1::Hello {
            name: "w1".into(),
            version: "0.1.0".into(),
            capabilities: vec!["docker".into(), "toolchain:stable".into()],
            slots: 2,
            running: vec![v1::LeaseRef {
                job_id: 7,
                lease_token: TOKEN.into(),
            }],
            toolchains: vec![(&nightly()).into()],
            environment: Some(v1::Environment {
                image: "sha256:abc".into(),
                limits: "memory=1".into(),
                classifier_version: 1,
            }),
        };
        let hello = Hello::try_from(good.clone()).unwrap();
        assert_eq!(
            hello.environment,
            Some(Environment {
                image: "sha256:abc".into(),
                limits: "memory=1".into(),
                classifier: 1
            })
        );
        assert_eq!(
            hello.running,
            [Lease::from_wire(7, "lease_token", TOKEN).unwrap()]
        );
        assert_eq!(hello.toolchains, [nightly()]);
        assert_eq!(
            hello.all_capabilities(),
            [
                "docker",
                "toolchain:stable",
                "toolchain-id:nightly=0123456789ab"
            ]
        );
        assert_eq!(v1::Hello::from(hello), good, "round trip");
        for (field, bad) in [
            (
                "hello.environment",
                v1::Hello {
                    environment: Some(v1::Environment {
                        image: "x".repeat(257),
                        ..Default::default()
                    }),
                    ..good.clone()
                },
            ),
            (
                "hello.name",
                v1::Hello {
                    name: "".into(),
                    ..good.clone()
                },
            ),
            (
                "hello.name",
                v1::Hello {
                    name: "a b".into(),
                    ..good.clone()
                },
            ),
            (
                "hello.name",
                v1::Hello {
                    name: "x".repeat(129),
                    ..good.clone()
                },
            ),
            (
                "hello.slots",
                v1::Hello {
                    slots: 0,
                    ..good.clone()
                },
            ),
            (
                "hello.slots",
                v1::Hello {
                    slots: MAX_SLOTS + 1,
                    ..good.clone()
                },
            ),
            (
                "hello.capabilities",
                v1::Hello {
                    capabilities: vec!["Docker".into()],
                    ..good.clone()
                },
            ),
            (
                "hello.running.lease_token",
                v1::Hello {
                    running: vec![v1::LeaseRef {
                        job_id: 7,
                        lease_token: "x".into(),
                    }],
                    ..good.clone()
                },
            ),
            (
                "hello.toolchains[1].commit_hash",
                v1::Hello {
                    toolchains: vec![
                        (&nightly()).into(),
                        v1::ToolchainIdentity {
                            commit_hash: String::new(),
                            ..(&nightly()).into()
                        },
                    ],
                    ..good.clone()
                },
            ),
            (
                "hello.toolchains",
                v1::Hello {
                    toolchains: vec![(&nightly()).into(); MAX_TOOLCHAINS + 1],
                    ..good.clone()
                },
            ),
        ] {
            assert_eq!(Hello::try_from(bad).unwrap_err().field, field);
        }
    }

    fn nightly() -> ToolchainIdentity {
        ToolchainIdentity {
            toolchain: "nightly".into(),
            commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_date: "2026-11-30".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            release: "1.95.0-nightly".into(),
            cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
        }
    }

    #[test]
    fn heartbeats_and_cancels_carry_leases() {
        let lease = Lease::from_wire(3, "lease_token", TOKEN).unwrap();
        let beat = Heartbeat {
            running: vec![lease],
            free_disk_bytes: 1 << 30,
            load_average: 0.5,
        };
        let wire = v1::Heartbeat::from(beat.clone());
        assert_eq!(Heartbeat::try_from(wire.clone()).unwrap(), beat);
        let bad = v1::Heartbeat {
            running: vec![v1::LeaseRef {
                job_id: 3,
                lease_token: "x".into(),
            }],
            ..wire
        };
        assert_eq!(
            Heartbeat::try_from(bad).unwrap_err().field,
            "heartbeat.running.lease_token"
        );

        let cancel = Cancel::lease(lease, "aborted");
        let wire = v1::Cancel::from(cancel.clone());
        assert_eq!(wire.lease_token, TOKEN);
        assert_eq!(Cancel::try_from(wire.clone()).unwrap(), cancel);
        let other =
            Lease::from_wire(3, "lease_token", "00000000-0000-4000-8000-000000000001").unwrap();
        assert!(cancel.stops(&lease) && !cancel.stops(&other));
        let any = Cancel::try_from(v1::Cancel {
            lease_token: String::new(),
            ..wire.clone()
        })
        .unwrap();
        assert!(any.token.is_none() && any.stops(&other));
        assert!(!any.stops(&Lease { job_id: 4, ..lease }));
        let bad = v1::Cancel {
            lease_token: "x".into(),
            ..wire
        };
        assert_eq!(
            Cancel::try_from(bad).unwrap_err().field,
            "cancel.lease_token"
        );
    }
}

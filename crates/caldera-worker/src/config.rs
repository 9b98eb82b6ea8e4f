//! The worker's configuration and the reconnect backoff.

use std::path::PathBuf;
use std::time::Duration;

use caldera_core::toolchain::ToolchainIdentity;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use crate::WorkerError;
use crate::tls::MasterEndpoint;

/// HTTP/2 keepalive ping interval on the connection to the master. Well under a minute, so that
/// idle-connection reapers (load balancers, NAT) never see the session as idle and a dead master
/// is noticed within `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered before the connection is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the TCP connect to the master may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole handshake (connect, open the stream, send Hello, receive Welcome) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a worker needs to know.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The master's gRPC endpoint, e.g. `https://master.example:9090`; `http://` (plain TCP) only to
    /// a loopback address or with [`insecure_plaintext`](Self::insecure_plaintext).
    pub master: String,
    /// For `https://`: the CA certificates (PEM) the master's certificate must chain to, instead
    /// of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Allows `http://` to a master that is not on loopback: the token and all traffic cross the
    /// network in clear text.
    pub insecure_plaintext: bool,
    /// The worker token, sent as `authorization: Bearer <token>` metadata on the stream.
    pub token: String,
    /// A stable name for this worker (the host name by default).
    pub name: String,
    /// How many jobs run at once.
    pub slots: u32,
    /// What this worker offers, e.g. `toolchain:stable`, `docker`, `arch:x86_64`.
    pub capabilities: Vec<String>,
    /// The build of each toolchain it has (`rustc -vV`, `cargo -V`), sent in Hello: an
    /// experiment pins the build each side ran with and then only goes to workers with it.
    pub toolchains: Vec<ToolchainIdentity>,
    /// What else can change an outcome here (sandbox image id, limits, classifier version), sent
    /// in Hello and hashed into each side's result-cache key; `None` offers no cache.
    pub environment: Option<caldera_core::fingerprint::Environment>,
    /// Finished results that the master has not acknowledged yet live here, one file each.
    pub spool_dir: PathBuf,
    /// Delay between reconnect attempts.
    pub reconnect: Backoff,
    /// On drain: how long running jobs may go on before they are cancelled and handed back.
    pub drain_timeout: Duration,
    /// On drain, once no job runs any more: how long to wait for the master to acknowledge the
    /// results still outstanding. Unacknowledged results stay in the spool for the next run.
    pub drain_ack_timeout: Duration,
}

impl WorkerConfig {
    /// A configuration with one slot, no capabilities, the default backoff, a 10-minute drain
    /// timeout and a 30-second acknowledgement timeout.
    pub fn new(
        master: impl Into<String>,
        token: impl Into<String>,
        name: impl Into<String>,
        spool_dir: impl Into<PathBuf>,
    ) -> Self {
        WorkerConfig {
            master: master.into(),
            ca_file: None,
            insecure_plaintext: false,
            token: token.into(),
            name: name.into(),
            slots: 1,
            capabilities: Vec::new(),
            toolchains: Vec::new(),
            environment: None,
            spool_dir: spool_dir.into(),
            reconnect: Backoff::default(),
            drain_timeout: Duration::from_secs(600),
            drain_ack_timeout: Duration::from_secs(30),
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), WorkerError> {
        self.endpoint()?;
        self.authorization()?;
        if self.name.trim().is_empty() {
            return Err(config("name", "must not be empty"));
        }
        if self.slots == 0 {
            return Err(config("slots", "must be at least 1"));
        }
        if let Some(c) = self.capabilities.iter().find(|c| c.trim().is_empty()) {
            return Err(config("capabilities", format!("{c:?} is empty")));
        }
        self.reconnect.validate()?;
        Ok(())
    }

    /// The way to `master`: the tonic endpoint with keepalive and connect timeout set, and for
    /// `https://` the TLS configuration (the CA file is read here).
    pub(crate) fn endpoint(&self) -> Result<MasterEndpoint, WorkerError> {
        let endpoint = Endpoint::from_shared(self.master.clone())
            .map_err(|e| config("master", format!("{:?} is not a URI: {e}", self.master)))?;
        let Some(host) = endpoint.uri().host() else {
            return Err(config("master", format!("{:?} has no host", self.master)));
        };
        let tls = match endpoint.uri().scheme_str() {
            Some("https") => Some(std::sync::Arc::new(
                crate::tls::client_config(self.ca_file.as_deref(), &[b"h2"])
                    .map_err(|e| config("ca_file", e))?,
            )),
            Some("http") => {
                crate::tls::check_plaintext(host, self.insecure_plaintext)
                    .map_err(|e| config("master", e))?;
                None
            }
            _ => {
                return Err(config(
                    "master",
                    format!("{:?} must start with https:// or http://", self.master),
                ));
            }
        };
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        Ok(MasterEndpoint { endpoint, tls })
    }

    /// The `authorization` metadata value.
    pub(crate) fn authorization(&self) -> Result<MetadataValue<Ascii>, WorkerError> {
        if self.token.is_empty() {
            return Err(config("token", "must not be empty"));
        }
        format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| config("token", "must be printable ASCII without line breaks"))
    }
}

fn config(field: &'static str, message: impl Into<String>) -> WorkerError {
    WorkerError::Config {
        field,
        message: message.into(),
    }
}

/// Exponential backoff with jitter: attempt `n` (from 0) waits `min(initial · 2ⁿ, max)`, less a
/// random part of up to `jitter` of that (`jitter = 0`: no randomness; `1`: anywhere from zero).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Fraction in `[0, 1]`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms doubling up to 30 s, with half of each delay random.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), given `unit`, a uniform random draw in
    /// `[0, 1)`. Pure: the randomness comes in as a parameter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.initial.saturating_mul(factor).min(self.max);
        let cut = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        if cut <= 0.0 {
            return base;
        }
        // `mul_f64` panics on overflow near `Duration::MAX`; the checked form cannot
        Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 - cut)).unwrap_or(base)
    }

    /// The delay before attempt `attempt`, with a fresh random draw.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    fn validate(&self) -> Result<(), WorkerError> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(config(
                "reconnect.jitter",
                format!("{} is not between 0 and 1", self.jitter),
            ));
        }
        if self.max < self.initial {
            return Err(config(
                "reconnect.max",
                format!(
                    "{:?} is less than reconnect.initial {:?}",
                    self.max, self.initial
                ),
            ));
        }
        if self.max.is_zero() {
            return Err(config("reconnect.max", "must be more than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_max_without_jitter() {
        let b = Backoff {
            initial: ms(100),
            max: ms(1000),
            jitter: 0.0,
        };
        let delays: Vec<Duration> = (0..7).map(|n| b.delay(n, 0.99)).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        // huge attempt numbers neither overflow nor panic
        assert_eq!(b.delay(u32::MAX, 0.5), ms(1000));
        let huge = Backoff {
            initial: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
            jitter: 0.0,
        };
        assert_eq!(huge.delay(40, 0.0), Duration::MAX);
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction() {
        let b = Backoff {
            initial: ms(1000),
            max: ms(8000),
            jitter: 0.5,
        };
        assert_eq!(b.delay(0, 0.0), ms(1000));
        assert_eq!(b.delay(0, 0.5), ms(750));
        assert_eq!(b.delay(3, 1.0), ms(4000));
        // out-of-range draws are clamped
        assert_eq!(b.delay(0, 7.0), ms(500));
        assert_eq!(b.delay(0, -1.0), ms(1000));
        let full = Backoff { jitter: 1.0, ..b };
        assert_eq!(full.delay(1, 1.0), Duration::ZERO);
        for n in 0..10 {
            let d = b.next_delay(n);
            let base = b.delay(n, 0.0);
            assert!(
                d <= base && d >= base / 2,
                "attempt {n}: {d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let good = WorkerConfig::new("http://127.0.0.1:9090", "tok", "w1", "/tmp/spool");
        good.validate().unwrap();
        type Mutation = Box<dyn Fn(&mut WorkerConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("master", Box::new(|c| c.master = "not a uri".into())),
            (
                "master",
                Box::new(|c| c.master = "http://master:9090".into()),
            ),
            (
                "ca_file",
                Box::new(|c| {
                    c.master = "https://master:9090".into();
                    c.ca_file = Some("/nonexistent/ca.pem".into());
                }),
            ),
            ("master", Box::new(|c| c.master = "ftp://master".into())),
            ("token", Box::new(|c| c.token.clear())),
            ("token", Box::new(|c| c.token = "a\nb".into())),
            ("name", Box::new(|c| c.name = " ".into())),
            ("slots", Box::new(|c| c.slots = 0)),
            (
                "capabilities",
                Box::new(|c| c.capabilities = vec!["docker".into(), "".into()]),
            ),
            ("reconnect.jitter", Box::new(|c| c.reconnect.jitter = 1.5)),
            ("reconnect.max", Box::new(|c| c.reconnect.max = ms(1))),
        ];
        for (field, mutate) in cases {
            let mut c = good.clone();
            mutate(&mut c);
            match c.validate() {
                Err(WorkerError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        assert_eq!(good.authorization().unwrap(), "Bearer tok");
        // plain TCP beyond loopback only when asked for; https needs no flag
        let mut remote = good.clone();
        remote.master = "http://master:9090".into();
        remote.insecure_plaintext = true;
        remote.validate().unwrap();
        for local in ["http://localhost:9090", "http://[::1]:9090"] {
            let c = WorkerConfig::new(local, "tok", "w1", "/tmp/spool");
            c.validate().unwrap();
        }
    }
}

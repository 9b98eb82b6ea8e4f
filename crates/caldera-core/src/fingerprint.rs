//! The result cache's fingerprint of one side of a job: everything that can change its outcome.
//!
//! A side's outcome is a function of the crate (its id, which carries the registry checksum when
//! one is known, or a git commit), the lockfile it builds with, the toolchain (its compact form:
//! source, flags, target, patches) and the *build* of that toolchain (its [`ToolchainIdentity`]),
//! the mode, the lint cap, the lockfile policy, the crate's overrides (`skip_tests`,
//! `extra_timeout_secs`, `extra_memory_mib`), and the worker's [`Environment`]: the sandbox image,
//! its resource limits and the classifier's version. [`cache_key`] hashes all of that except the
//! lockfile: the master computes the key when an experiment starts, before any worker has prepared
//! (or generated) the lockfile, so the lookup cannot include it. Instead a side settled from the
//! cache takes its lockfile from the source experiment (copied to the new experiment's lockfile key
//! before any worker prepares the crate), so the side that still runs builds with the same
//! lockfile; [`fingerprint`] is the key together with that lockfile's hash.
//!
//! The encoding is canonical (a JSON array of the inputs in a fixed order, prefixed with
//! [`FINGERPRINT_VERSION`]) and hashed with SHA-256. Bump the version when an input is added or
//! its meaning changes: old entries then simply stop matching. (The lockfile policy is the one
//! input added without a bump: it is appended only when it is `fresh`, so the keys of `shipped`
//! sides, every side before it existed, stay what they were.)

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crates::CrateId;
use crate::experiment::{CapLints, LockfilePolicy, Mode};
use crate::job::{JobSpec, Side};
use crate::outcome::Outcome;
use crate::toolchain::{Toolchain, ToolchainIdentity};

/// The version of the encoding below; part of every key.
pub const FINGERPRINT_VERSION: u32 = 1;

/// What a worker advertises (in `Hello`) that the master cannot know and that can change an
/// outcome: the sandbox image it builds in, its resource limits, and its classifier's version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Environment {
    /// The sandbox image's id (`sha256:…`), not its tag: a tag can be moved to another image.
    pub image: String,
    /// The worker's container limits in a canonical text form (memory, CPUs, pids, timeouts,
    /// disk), e.g. `memory=4294967296,cpus=1,pids=512,timeout=900,no_output=300`.
    pub limits: String,
    /// `caldera_classify::CLASSIFIER_VERSION` of the worker.
    pub classifier: u32,
}

impl Environment {
    /// Whether every field is filled (a worker that leaves one empty offers no cache).
    pub fn is_complete(&self) -> bool {
        !self.image.is_empty() && !self.limits.is_empty() && self.classifier > 0
    }
}

/// The inputs of one side's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideInputs<'a> {
    pub krate: &'a CrateId,
    pub toolchain: &'a Toolchain,
    /// The build of `toolchain` the side runs (or ran) with.
    pub identity: &'a ToolchainIdentity,
    pub mode: Mode,
    pub cap_lints: CapLints,
    /// `fresh` resolves the lockfile anew: the settled lockfile's hash is in [`fingerprint`],
    /// but the lookup must not match a side that ran with a shipped one.
    pub lockfile: LockfilePolicy,
    pub skip_tests: bool,
    pub extra_timeout_secs: u32,
    pub extra_memory_mib: u32,
    pub environment: &'a Environment,
}

impl<'a> SideInputs<'a> {
    /// The inputs of `side` of `spec`, run with `identity` in `environment`.
    pub fn of_job(
        spec: &'a JobSpec,
        side: Side,
        identity: &'a ToolchainIdentity,
        environment: &'a Environment,
    ) -> Self {
        SideInputs {
            krate: &spec.krate,
            toolchain: match side {
                Side::Start => &spec.start,
                Side::End => &spec.end,
            },
            identity,
            mode: spec.mode,
            cap_lints: spec.cap_lints,
            lockfile: spec.lockfile,
            skip_tests: spec.skip_tests,
            extra_timeout_secs: spec.extra_timeout_secs,
            extra_memory_mib: spec.extra_memory_mib,
            environment,
        }
    }
}

/// Whether a crate's content is fixed by its id: a registry version (immutable once published)
/// or a git commit given as a full hash. A local directory, or a git branch or tag, can change
/// under the same id, so such crates are never cached.
pub fn is_cacheable(krate: &CrateId) -> bool {
    match krate {
        CrateId::Registry { .. } => true,
        CrateId::Git { rev, .. } => rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        CrateId::Local { .. } => false,
    }
}

/// Whether an outcome may settle a later side with the same key: a verdict of the crate itself,
/// never an infrastructure `error`, never a spurious one (a sandbox limit hit: `oom`, `timeout`,
/// `no-output-timeout`, `pids-limit`, `no-space` — noise of the machine at the time), never
/// `skipped` or `broken` by an override (not a run), and never `prepare-fail` or a `broken` found
/// while preparing (preparation reaches the network and the registry — a yanked dependency —
/// which may answer otherwise next time).
pub fn is_trustworthy(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Error { .. }
        | Outcome::Skipped
        | Outcome::PrepareFail { .. }
        | Outcome::Broken { .. } => false,
        o => !o.is_spurious(),
    }
}

/// The lookup key of a side: `v<version>:<sha256 hex>` of everything but the lockfile, or `None`
/// for a crate that is never cached ([`is_cacheable`]).
pub fn cache_key(inputs: &SideInputs<'_>) -> Option<String> {
    if !is_cacheable(inputs.krate) {
        return None;
    }
    let id = inputs.identity;
    let env = inputs.environment;
    let mut canonical = serde_json::json!([
        FINGERPRINT_VERSION,
        inputs.krate.to_string(),
        inputs.toolchain.to_string(),
        [
            &id.commit_hash,
            &id.commit_date,
            &id.host,
            &id.release,
            &id.cargo
        ],
        inputs.mode.as_str(),
        inputs.cap_lints.as_str(),
        inputs.skip_tests,
        inputs.extra_timeout_secs,
        inputs.extra_memory_mib,
        [&env.image, &env.limits],
        env.classifier,
    ]);
    if inputs.lockfile != LockfilePolicy::Shipped
        && let Some(all) = canonical.as_array_mut()
    {
        all.push(inputs.lockfile.as_str().into());
    }
    Some(digest(&canonical.to_string()))
}

/// The full fingerprint: the key together with the SHA-256 (hex) of the lockfile the side built
/// with (`None`: no lockfile was stored).
pub fn fingerprint(key: &str, lockfile_sha256: Option<&str>) -> String {
    let canonical = serde_json::json!([FINGERPRINT_VERSION, key, lockfile_sha256]);
    digest(&canonical.to_string())
}

/// The SHA-256 (hex) of `bytes`, e.g. of a lockfile.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn digest(canonical: &str) -> String {
    format!(
        "v{FINGERPRINT_VERSION}:{}",
        sha256_hex(canonical.as_bytes())
    )
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod tests;

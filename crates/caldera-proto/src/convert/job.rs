//! Jobs: what to build (`JobSpec`) and the assignment that hands it to a worker under a lease.

use caldera_core::crates::CrateId;
use caldera_core::experiment::LockfilePolicy;
use caldera_core::job::{JobSpec, Side};
use caldera_core::toolchain::Toolchain;

use crate::lease::{Lease, LeaseToken};
use crate::v1;
use crate::{WireError, wire};

impl From<&JobSpec> for v1::JobSpec {
    fn from(j: &JobSpec) -> Self {
        v1::JobSpec {
            experiment: j.experiment.clone(),
            crate_id: j.krate.to_string(),
            start: j.start.to_string(),
            end: j.end.to_string(),
            mode: j.mode.to_string(),
            cap_lints: j.cap_lints.to_string(),
            skip_tests: j.skip_tests,
            quiet: j.quiet,
            extra_timeout_secs: j.extra_timeout_secs,
            extra_memory_mib: j.extra_memory_mib,
            run: j.run,
            only: j.only.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            lockfile: j.lockfile.to_string(),
        }
    }
}

impl TryFrom<v1::JobSpec> for JobSpec {
    type Error = WireError;
    fn try_from(j: v1::JobSpec) -> Result<Self, WireError> {
        if j.experiment.is_empty() {
            return Err(wire("spec.experiment", "empty"));
        }
        let toolchain = |field: &str, s: &str| {
            s.parse::<Toolchain>()
                .map_err(|e| wire(field, format!("{s:?}: {e}")))
        };
        Ok(JobSpec {
            krate: j
                .crate_id
                .parse::<CrateId>()
                .map_err(|e| wire("spec.crate_id", format!("{:?}: {e}", j.crate_id)))?,
            start: toolchain("spec.start", &j.start)?,
            end: toolchain("spec.end", &j.end)?,
            mode: j
                .mode
                .parse()
                .map_err(|e| wire("spec.mode", format!("{:?}: {e}", j.mode)))?,
            cap_lints: j
                .cap_lints
                .parse()
                .map_err(|e| wire("spec.cap_lints", format!("{:?}: {e}", j.cap_lints)))?,
            experiment: j.experiment,
            skip_tests: j.skip_tests,
            quiet: j.quiet,
            extra_timeout_secs: j.extra_timeout_secs,
            extra_memory_mib: j.extra_memory_mib,
            lockfile: match j.lockfile.as_str() {
                "" => LockfilePolicy::Shipped,
                s => s
                    .parse()
                    .map_err(|e| wire("spec.lockfile", format!("{s:?}: {e}")))?,
            },
            run: j.run,
            only: match j.only.as_str() {
                "" => None,
                "start" => Some(Side::Start),
                "end" => Some(Side::End),
                other => {
                    return Err(wire(
                        "spec.only",
                        format!("{other:?}: expected \"start\", \"end\" or nothing"),
                    ));
                }
            },
        })
    }
}

/// One job handed to a worker: what to build, under which lease, on which attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// The fencing token: the master accepts a result only under the job's current lease.
    pub lease: Lease,
    /// 1 for the first try, more when an earlier lease expired.
    pub attempt: u32,
    pub spec: JobSpec,
}

impl From<&Assign> for v1::Assign {
    fn from(a: &Assign) -> Self {
        v1::Assign {
            job_id: a.lease.job_id,
            lease_token: a.lease.token.to_string(),
            attempt: a.attempt,
            spec: Some((&a.spec).into()),
        }
    }
}

impl TryFrom<&v1::Assign> for Assign {
    type Error = WireError;
    /// The lease is checked first, then the spec.
    fn try_from(a: &v1::Assign) -> Result<Self, WireError> {
        let token = LeaseToken::from_wire("lease_token", &a.lease_token)?;
        let spec = a.spec.clone().ok_or_else(|| wire("spec", "missing"))?;
        Ok(Assign {
            lease: Lease {
                job_id: a.job_id,
                token,
            },
            attempt: a.attempt,
            spec: JobSpec::try_from(spec)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> v1::JobSpec {
        v1::JobSpec {
            experiment: "e".into(),
            crate_id: "reg:serde@1.0.0".into(),
            start: "stable".into(),
            end: "nightly".into(),
            mode: "build-and-test".into(),
            cap_lints: "forbid".into(),
            lockfile: "shipped".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_wire_data_names_the_field() {
        let good = good();
        let spec = JobSpec::try_from(good.clone()).unwrap();
        assert_eq!(v1::JobSpec::from(&spec), good, "round trip");
        assert_eq!(spec.only, None, "no side named: both");
        // an older master sends no lockfile policy: the crate's shipped lockfile, as before
        let old = v1::JobSpec {
            lockfile: String::new(),
            ..good.clone()
        };
        assert_eq!(
            JobSpec::try_from(old).unwrap().lockfile,
            LockfilePolicy::Shipped
        );
        let fresh = v1::JobSpec {
            lockfile: "fresh".into(),
            ..good.clone()
        };
        let spec_fresh = JobSpec::try_from(fresh.clone()).unwrap();
        assert_eq!(spec_fresh.lockfile, LockfilePolicy::Fresh);
        assert_eq!(v1::JobSpec::from(&spec_fresh), fresh, "round trip");
        for side in Side::BOTH {
            let one = v1::JobSpec {
                only: side.as_str().into(),
                ..good.clone()
            };
            let spec = JobSpec::try_from(one.clone()).unwrap();
            assert_eq!(spec.only, Some(side));
            assert_eq!(v1::JobSpec::from(&spec), one, "round trip");
        }
        let e = JobSpec::try_from(v1::JobSpec {
            only: "both".into(),
            ..good.clone()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid spec.only: "both": expected "start", "end" or nothing"#
        );
        for (field, mutate) in [
            (
                "spec.experiment",
                Box::new(|j: &mut v1::JobSpec| j.experiment.clear())
                    as Box<dyn Fn(&mut v1::JobSpec)>,
            ),
            (
                "spec.crate_id",
                Box::new(|j: &mut v1::JobSpec| j.crate_id = "nope".into()),
            ),
            (
                "spec.start",
                Box::new(|j: &mut v1::JobSpec| j.start = "".into()),
            ),
            (
                "spec.end",
                Box::new(|j: &mut v1::JobSpec| j.end = "nightlyy".into()),
            ),
            (
                "spec.mode",
                Box::new(|j: &mut v1::JobSpec| j.mode = "fuzz".into()),
            ),
            (
                "spec.cap_lints",
                Box::new(|j: &mut v1::JobSpec| j.cap_lints = "loud".into()),
            ),
            (
                "spec.only",
                Box::new(|j: &mut v1::JobSpec| j.only = "both".into()),
            ),
            (
                "spec.lockfile",
                Box::new(|j: &mut v1::JobSpec| j.lockfile = "newest".into()),
            ),
        ] {
            let mut j = good.clone();
            mutate(&mut j);
            assert_eq!(JobSpec::try_from(j).unwrap_err().field, field);
        }
    }

    #[test]
    fn assignments_check_the_lease_then_the_spec() {
        let wire = v1::Assign {
            job_id: 7,
            lease_token: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            attempt: 2,
            spec: Some(good()),
        };
        let a = Assign::try_from(&wire).unwrap();
        assert_eq!((a.lease.job_id, a.attempt), (7, 2));
        assert_eq!(v1::Assign::from(&a), wire, "round trip");

        let mut bad_spec = good();
        bad_spec.mode = "fuzz".into();
        for (field, assign) in [
            (
                "lease_token",
                v1::Assign {
                    lease_token: "not-a-token".into(),
                    spec: Some(bad_spec.clone()),
                    ..wire.clone()
                },
            ),
            (
                "spec",
                v1::Assign {
                    spec: None,
                    ..wire.clone()
                },
            ),
            (
                "spec.mode",
                v1::Assign {
                    spec: Some(bad_spec),
                    ..wire.clone()
                },
            ),
        ] {
            let e = Assign::try_from(&assign).unwrap_err();
            assert_eq!(e.field, field);
            assert!(
                e.to_string().starts_with(&format!("invalid {field}:")),
                "{e}"
            );
        }
    }
}

//! The build of each side's toolchain an experiment ran with (table `experiment_toolchains`,
//! migration `0009_toolchain_identity`).
//!
//! The first result recorded for a side that carries a [`ToolchainIdentity`] pins it: the pin is
//! written and its capability (`toolchain-id:<name>=<short hash>`) added to the experiment's
//! queue requirements in one transaction, so from then on only workers with that build claim the
//! experiment's jobs. A result of another build (from a job claimed before the pin) is refused
//! (see [`caldera_core::toolchain::pin_verdict`]): the result writer turns it into an
//! infrastructure error, so the job is queued again for a worker with the pinned build. Two
//! workers with different nightlies so never make a difference in one experiment.

use std::collections::HashMap;

use caldera_core::job::Side;
use caldera_core::toolchain::{PinVerdict, ToolchainIdentity, pin_verdict};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::DbError;

/// The identities an experiment pinned, per side (`None`: not pinned, e.g. an experiment run
/// before identities existed, or by workers that do not report them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub start: Option<ToolchainIdentity>,
    pub end: Option<ToolchainIdentity>,
}

impl Pins {
    pub fn side(&self, side: Side) -> Option<&ToolchainIdentity> {
        match side {
            Side::Start => self.start.as_ref(),
            Side::End => self.end.as_ref(),
        }
    }

    fn set(&mut self, side: Side, identity: ToolchainIdentity) {
        match side {
            Side::Start => self.start = Some(identity),
            Side::End => self.end = Some(identity),
        }
    }
}

fn side_of(s: &str) -> Option<Side> {
    match s {
        "start" => Some(Side::Start),
        "end" => Some(Side::End),
        _ => None,
    }
}

/// The pins of one experiment (by id).
pub async fn of_experiment(pool: &PgPool, experiment_id: Uuid) -> Result<Pins, DbError> {
    let rows: Vec<(String, Json<ToolchainIdentity>)> =
        sqlx::query_as("SELECT side, identity FROM experiment_toolchains WHERE experiment_id = $1")
            .bind(experiment_id)
            .fetch_all(pool)
            .await?;
    let mut pins = Pins::default();
    for (side, Json(identity)) in rows {
        if let Some(side) = side_of(&side) {
            pins.set(side, identity);
        }
    }
    Ok(pins)
}

/// One side of a result to check: the build it ran with, and whether its outcome came from the
/// compiler.
#[derive(Debug, Clone, Copy)]
pub struct SideCheck<'a> {
    pub identity: Option<&'a ToolchainIdentity>,
    pub built: bool,
}

/// A result to check against its experiment's pins, fenced like its completion.
#[derive(Debug, Clone, Copy)]
pub struct ResultCheck<'a> {
    pub job_id: i64,
    pub lease_token: Uuid,
    pub worker: Uuid,
    pub start: SideCheck<'a>,
    pub end: SideCheck<'a>,
}

/// A pin to write.
struct NewPin {
    experiment: Uuid,
    side: Side,
    identity: ToolchainIdentity,
    worker: Uuid,
}

/// Checks a batch of results against their experiments' pins, in order, pinning the sides that
/// are not pinned yet from the first result that carries an identity. Returns, per result, why it
/// must not be recorded (`None`: record it). A result whose lease is not current is not looked at
/// (its completion rejects it) and pins nothing.
pub async fn check_results(
    conn: &mut sqlx::PgConnection,
    batch: &[ResultCheck<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Option<String>>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = batch.iter().map(|c| c.job_id).collect();
    let tokens: Vec<Uuid> = batch.iter().map(|c| c.lease_token).collect();
    let rows: Vec<(i64, Uuid, Option<String>, Option<Json<ToolchainIdentity>>)> = sqlx::query_as(
        "SELECT j.id, j.experiment_id, t.side, t.identity
             FROM unnest($1::bigint[], $2::uuid[]) AS b(id, token)
             JOIN jobs j ON j.id = b.id AND j.lease_token = b.token
             LEFT JOIN experiment_toolchains t ON t.experiment_id = j.experiment_id",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(&mut *conn)
    .await?;
    let mut experiment_of: HashMap<i64, Uuid> = HashMap::new();
    let mut pins: HashMap<Uuid, Pins> = HashMap::new();
    for (job, experiment, side, identity) in rows {
        experiment_of.insert(job, experiment);
        let entry = pins.entry(experiment).or_default();
        if let (Some(side), Some(Json(identity))) = (side.as_deref().and_then(side_of), identity) {
            entry.set(side, identity);
        }
    }
    let mut new_pins = Vec::new();
    let verdicts = batch
        .iter()
        .map(|c| {
            let experiment = *experiment_of.get(&c.job_id)?;
            let pinned = pins.entry(experiment).or_default();
            let mut refusals = Vec::new();
            for (side, check) in [(Side::Start, c.start), (Side::End, c.end)] {
                match pin_verdict(pinned.side(side), check.identity, check.built) {
                    PinVerdict::Accept => {}
                    PinVerdict::Pin(identity) => {
                        pinned.set(side, identity.clone());
                        new_pins.push(NewPin {
                            experiment,
                            side,
                            identity,
                            worker: c.worker,
                        });
                    }
                    PinVerdict::Refuse(why) => refusals.push(format!("{}: {why}", side.as_str())),
                }
            }
            (!refusals.is_empty()).then(|| refusals.join("; "))
        })
        .collect();
    if !new_pins.is_empty() {
        write_pins(conn, &new_pins, now).await?;
    }
    Ok(verdicts)
}

/// Writes the pins and adds their capabilities to the queues' requirements, in one transaction.
/// A side pinned meanwhile keeps its pin (`ON CONFLICT DO NOTHING`): the result writer is the
/// only writer, so that does not happen while one master runs.
async fn write_pins(
    conn: &mut sqlx::PgConnection,
    pins: &[NewPin],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let experiments: Vec<Uuid> = pins.iter().map(|p| p.experiment).collect();
    let sides: Vec<&str> = pins.iter().map(|p| p.side.as_str()).collect();
    let identities: Vec<Json<&ToolchainIdentity>> =
        pins.iter().map(|p| Json(&p.identity)).collect();
    let capabilities: Vec<Option<String>> = pins.iter().map(|p| p.identity.capability()).collect();
    let workers: Vec<Uuid> = pins.iter().map(|p| p.worker).collect();
    sqlx::query(
        "WITH pinned AS (
             INSERT INTO experiment_toolchains (experiment_id, side, identity, capability, worker_id, pinned_at)
             SELECT * , $6::timestamptz FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[])
             ON CONFLICT (experiment_id, side) DO NOTHING
             RETURNING experiment_id, capability, worker_id
         ), caps AS (
             -- required only when the pinning worker advertises it: a worker that reports the
             -- builds it ran with but not those it has (an older or embedded worker) would
             -- otherwise leave the experiment with no worker to claim it; results of another
             -- build are refused all the same
             SELECT p.experiment_id, jsonb_agg(DISTINCT p.capability) AS caps FROM pinned p
             JOIN workers w ON w.id = p.worker_id
             WHERE p.capability IS NOT NULL AND w.capabilities ? p.capability
             GROUP BY p.experiment_id
         )
         UPDATE job_queues q
         SET requirements = q.requirements || (SELECT jsonb_agg(c) FROM jsonb_array_elements(caps.caps) AS c
                                               WHERE NOT q.requirements @> jsonb_build_array(c))
         FROM caps
         WHERE q.experiment_id = caps.experiment_id
           AND NOT q.requirements @> caps.caps",
    )
    .bind(&experiments)
    .bind(&sides)
    .bind(&identities)
    .bind(&capabilities)
    .bind(&workers)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

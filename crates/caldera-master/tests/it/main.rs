//! The master's HTTP API, dashboard and triage through a running master, in one test binary (one
//! build, one private Postgres cluster). The storage tests of logs (`tests/logs.rs`) stay a
//! binary of their own: they stop and restart S3 servers on fixed ports, which a test of another
//! module running in parallel could take meanwhile.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod dashboard;
mod estimate;
mod farm;
mod registry;
mod review;
mod triage;

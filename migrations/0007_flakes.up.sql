-- Flaky memory across experiments (caldera_db::flakes, caldera_core::flaky): every difference
-- between two outcomes of a crate on the same toolchain that should have agreed — a first run's
-- side and the same side of a confirmation run, or the start and end of a calibration (A/A)
-- experiment — counted per (crate, subject), with the evidence of its last sighting.
--
-- * `crate_id`: the resolved crate (`crates.id`), so a flake belongs to one version of a registry
--   crate, one revision of a git crate, one local path: another version is other code, and its
--   tests may not flake. Looking up by name goes through `crates.name` (and `crates.version`).
-- * `subject`: `test:NAME`, or a failure kind (`build-fail:oom`, `test-fail:timeout`, …).
-- * `count`: sightings, across experiments; `first_seen` / `last_seen`: when they were recorded.
-- * the last sighting: `experiment` (its name, kept as text: deleting the experiment leaves the
--   memory), `source` (`confirmation` or `calibration`), `run`, `side` (for a calibration: the
--   end side, compared with the start), `log_key` (the run that was compared against: run 0's side,
--   or the calibration's start) and `other_log_key` (the run that differed).
--
-- Written only by the result writer for batches that finish a confirmation run or a job of a
-- calibration experiment; never on the scheduler's ordinary path.
CREATE TABLE flakes (
    crate_id      bigint NOT NULL REFERENCES crates (id),
    subject       text NOT NULL,
    count         bigint NOT NULL CHECK (count > 0),
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    experiment    text NOT NULL,
    source        text NOT NULL CHECK (source IN ('confirmation', 'calibration')),
    run           smallint NOT NULL CHECK (run >= 0),
    side          text NOT NULL CHECK (side IN ('start', 'end')),
    log_key       text,
    other_log_key text,
    PRIMARY KEY (crate_id, subject)
);

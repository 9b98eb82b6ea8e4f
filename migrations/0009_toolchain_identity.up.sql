-- The build of each side's toolchain an experiment ran with (issue 14): which `nightly` (rustc's
-- commit hash, date, host, release; cargo's version) as the worker resolved it. The first result
-- recorded for a side that carries an identity pins it; from then on the experiment's queue
-- requires `capability` (added to `job_queues.requirements` in the same transaction), so only
-- workers with that build are given its jobs, and a result of another build is not recorded.
CREATE TABLE experiment_toolchains (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    side          text NOT NULL CHECK (side IN ('start', 'end')),
    -- caldera_core::toolchain::ToolchainIdentity as JSON
    identity      jsonb NOT NULL,
    -- `toolchain-id:<name>=<short hash>`; NULL when the name makes no valid capability (the pin
    -- is then enforced on the results only)
    capability    text,
    -- the worker whose result pinned it (kept when the worker row goes)
    worker_id     uuid,
    pinned_at     timestamptz NOT NULL,
    PRIMARY KEY (experiment_id, side)
);

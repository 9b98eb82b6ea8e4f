-- caldera initial schema. Postgres holds the truth; bulk bytes live in object storage (keys only here).

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'operator', 'worker', 'viewer')),
    -- SHA-256 of the secret. Tokens are 256-bit random values, so a fast hash is sufficient.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE experiments (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'completed', 'aborted')),
    -- the validated experiment spec (caldera_core::experiment::ExperimentSpec) as JSON
    spec         jsonb NOT NULL,
    priority     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX experiments_status_idx ON experiments (status, priority DESC, created_at);
CREATE INDEX experiments_created_idx ON experiments (created_at DESC);

CREATE TABLE crate_lists (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crate_list_entries (
    list_id   uuid NOT NULL REFERENCES crate_lists (id) ON DELETE CASCADE,
    position  integer NOT NULL,
    -- a crate spec as the user wrote it (caldera_core::crates::CrateSpec)
    spec      text NOT NULL,
    PRIMARY KEY (list_id, position),
    UNIQUE (list_id, spec)
);

-- resolved crate identities (caldera_core::crates::CrateId), shared by all experiments
CREATE TABLE crates (
    id        bigserial PRIMARY KEY,
    crate_id  text NOT NULL UNIQUE,
    kind      text NOT NULL CHECK (kind IN ('registry', 'git', 'local')),
    name      text NOT NULL,
    version   text,
    checksum  text
);

CREATE TABLE workers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    version       text NOT NULL DEFAULT '',
    capabilities  jsonb NOT NULL DEFAULT '[]',
    slots         integer NOT NULL DEFAULT 1 CHECK (slots > 0),
    token_id      uuid REFERENCES api_tokens (id) ON DELETE SET NULL,
    connected     boolean NOT NULL DEFAULT false,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               bigserial PRIMARY KEY,
    experiment_id    uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    crate_id         bigint NOT NULL REFERENCES crates (id),
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'error', 'cancelled')),
    -- copied from the experiment so the claim index needs no join
    priority         integer NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- fencing token of the current lease; a result is accepted only with this token
    lease_token      uuid,
    lease_owner      uuid REFERENCES workers (id) ON DELETE SET NULL,
    lease_expires_at timestamptz,
    -- when the current (or last) lease was handed out
    claimed_at       timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, crate_id),
    CHECK ((state = 'running') = (lease_token IS NOT NULL))
);
-- queue claim: highest priority first, then oldest
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, id) WHERE state = 'queued';
-- the reaper: running jobs by lease expiry
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_experiment_state_idx ON jobs (experiment_id, state);
CREATE INDEX jobs_lease_owner_idx ON jobs (lease_owner) WHERE state = 'running';

CREATE TABLE results (
    id                bigserial PRIMARY KEY,
    experiment_id     uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    crate_id          bigint NOT NULL REFERENCES crates (id),
    toolchain         text NOT NULL CHECK (toolchain IN ('start', 'end')),
    job_id            bigint REFERENCES jobs (id) ON DELETE SET NULL,
    -- caldera_core::outcome::Outcome as JSON, plus its kind for filtering
    outcome           jsonb NOT NULL,
    outcome_kind      text NOT NULL,
    log_key           text,
    duration_ms       bigint,
    peak_memory_bytes bigint,
    -- [{"name": "build", "duration_ms": 1234}, …]
    steps             jsonb NOT NULL DEFAULT '[]',
    worker_id         uuid REFERENCES workers (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, crate_id, toolchain)
);
-- report queries: all results of an experiment, by outcome kind
CREATE INDEX results_report_idx ON results (experiment_id, outcome_kind, toolchain);

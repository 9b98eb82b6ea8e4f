-- Requirements an experiment implies, set when it starts: `toolchain:<name>` for each rustup
-- toolchain it names. A worker that lists its toolchains among its capabilities is offered only the
-- jobs whose toolchains it has.
ALTER TABLE experiments ADD COLUMN implied_requirements jsonb NOT NULL DEFAULT '[]'::jsonb;

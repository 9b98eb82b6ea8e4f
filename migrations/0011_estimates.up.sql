-- The estimate made when an experiment started (caldera_core::estimate::Estimate as JSON), so
-- the report can set what it cost against what was expected.
CREATE TABLE experiment_estimates (
    experiment_id uuid PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
    made_at       timestamptz NOT NULL,
    estimate      jsonb NOT NULL
);

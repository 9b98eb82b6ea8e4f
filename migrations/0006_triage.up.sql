-- Triage marks: a person's verdict on a regression (expected, known-issue with a link, ignore),
-- kept per crate and cause so that it follows the crate into later experiments while the cause
-- (caldera_core::triage::cause of the end outcome) stays the same.
CREATE TABLE triage_marks (
    id          bigserial PRIMARY KEY,
    -- caldera_core::triage::crate_key: the registry name, or git:URL / local:/DIR
    crate_name  text NOT NULL,
    -- caldera_core::triage::cause, e.g. build-fail:compiler-error(E0308)
    cause       text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('expected', 'known-issue', 'ignore')),
    link        text,
    note        text NOT NULL DEFAULT '',
    -- where the mark was last set from: the experiment and the crate id there (provenance only)
    experiment  text NOT NULL,
    crate_id    text NOT NULL,
    -- the API token's name
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'known-issue' OR link IS NOT NULL)
);
-- One mark per crate and cause. Causes can be long (many failed tests), longer than a btree
-- entry may be, so the key holds their md5.
CREATE UNIQUE INDEX triage_marks_key ON triage_marks (crate_name, md5(cause));

-- Every change to a mark, removals included. Not tied to triage_marks by a foreign key: the
-- history outlives the mark.
CREATE TABLE triage_audit (
    id          bigserial PRIMARY KEY,
    crate_name  text NOT NULL,
    cause       text NOT NULL,
    action      text NOT NULL CHECK (action IN ('set', 'update', 'remove')),
    -- the mark before and after, as {"kind", "link", "note"}; null when there was none
    before      jsonb,
    after       jsonb,
    experiment  text NOT NULL,
    crate_id    text NOT NULL,
    actor       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX triage_audit_crate_idx ON triage_audit (crate_name, id);

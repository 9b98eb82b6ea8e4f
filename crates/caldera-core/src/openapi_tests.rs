//! Checks the OpenAPI schemas of the HTTP body types (only with the `openapi` feature).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use utoipa::openapi::{ComponentsBuilder, OpenApiBuilder};

use crate::{
    CapLints, Comparison, CrateId, CrateOverride, CrateSelection, CrateSpec, ExperimentEdit,
    ExperimentSpec, ExperimentStatus, LockfilePolicy, Mode, Outcome, Toolchain,
};

fn document() -> Value {
    let components = ComponentsBuilder::new()
        .schema_from::<ExperimentSpec>()
        .schema_from::<ExperimentEdit>()
        .schema_from::<Toolchain>()
        .schema_from::<CrateSelection>()
        .schema_from::<CrateSpec>()
        .schema_from::<CrateId>()
        .schema_from::<Mode>()
        .schema_from::<CapLints>()
        .schema_from::<LockfilePolicy>()
        .schema_from::<CrateOverride>()
        .schema_from::<ExperimentStatus>()
        .schema_from::<Outcome>()
        .schema_from::<Comparison>()
        .build();
    serde_json::to_value(OpenApiBuilder::new().components(Some(components)).build()).unwrap()
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.insert(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let mut refs = BTreeSet::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.get(name).is_some(), "dangling reference {r}");
    }
}

#[test]
fn string_or_object_types_document_both_forms() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let toolchain = &schemas["Toolchain"]["oneOf"];
    assert_eq!(toolchain[0]["type"], json!("string"));
    assert_eq!(toolchain[1]["type"], json!("object"));
    assert_eq!(toolchain[1]["required"], json!(["toolchain"]));
    let props: BTreeSet<&str> = toolchain[1]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        props,
        BTreeSet::from([
            "toolchain",
            "rustflags",
            "rustdocflags",
            "cargoflags",
            "target",
            "patches"
        ])
    );
    assert_eq!(
        toolchain[1]["properties"]["patches"]["items"]["required"],
        json!(["crate", "git", "rev"])
    );

    let selection = &schemas["CrateSelection"]["oneOf"];
    assert_eq!(selection[0]["type"], json!("string"));
    let kinds: BTreeSet<String> = selection[1]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["properties"]["kind"]["enum"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["all", "crate-list", "list", "random", "rdeps", "top"]
            .map(String::from)
            .into()
    );

    assert_eq!(schemas["CrateSpec"]["type"], json!("string"));
    assert_eq!(schemas["CrateId"]["type"], json!("string"));
}

#[test]
fn spec_required_fields_and_enums() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let required: BTreeSet<&str> = schemas["ExperimentSpec"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, BTreeSet::from(["name", "start", "end", "crates"]));
    assert!(schemas["ExperimentEdit"].get("required").is_none());
    assert_eq!(
        schemas["Mode"]["enum"],
        json!([
            "build-and-test",
            "build-only",
            "check-only",
            "clippy",
            "rustdoc",
            "miri"
        ])
    );
    assert_eq!(
        schemas["CapLints"]["enum"],
        json!(["allow", "warn", "deny", "forbid"])
    );
    assert_eq!(
        schemas["ExperimentStatus"]["enum"],
        json!(["queued", "running", "paused", "completed", "aborted"])
    );
    assert_eq!(
        schemas["Comparison"]["enum"].as_array().unwrap().len(),
        Comparison::ALL.len()
    );
    let outcome_kinds: BTreeSet<String> = schemas["Outcome"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["properties"]["kind"]["enum"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(outcome_kinds.len(), 8);
    assert!(outcome_kinds.contains("build-fail"));
}

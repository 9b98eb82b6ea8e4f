//! The OpenAPI document, generated from the handlers and types (`/api/v1/openapi.json`).
//!
//! Each handler's `#[utoipa::path]` declares what is particular to it (its success, its 404 or
//! 409, its parameters' bounds). The answers every route shares — the edge's and the
//! authentication's (see [`crate::edge`] and [`crate::auth`]) — are added to every operation they
//! can happen on by [`CommonResponses`], so no handler can forget them.

use serde_json::Value;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{crate_lists, estimate, experiments, farm, flakes, logs, pr, report, tokens, triage};
use crate::error::{ErrorBody, ErrorDetail};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Adds the responses the edge and the authentication give on every route where they can
/// happen, unless the handler documents that status itself:
///
/// * 400 everywhere (a NUL in the path or query; with a body, a body that is not JSON);
/// * 401, 403 and 503 (the token is looked up in the database) on every operation with a token;
/// * 404 on every operation with a path parameter (no such name);
/// * 413, 415 and 422 on every operation with a JSON body; 415 on every other `POST`, `PUT` and
///   `PATCH` (a body that is sent must be JSON).
struct CommonResponses;

/// What an operation can be refused for, as far as the shared answers go.
struct Shape {
    method: &'static str,
    secured: bool,
    admin_only: bool,
    has_body: bool,
    has_path_params: bool,
}

impl Shape {
    fn of(method: &'static str, op: &Operation) -> Shape {
        let security = op
            .security
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let secured = security.as_array().is_some_and(|s| !s.is_empty());
        Shape {
            method,
            secured,
            admin_only: security.to_string().contains("\"admin\""),
            has_body: op.request_body.is_some(),
            has_path_params: op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == ParameterIn::Path),
        }
    }

    /// The shared responses of this operation: status and description.
    fn responses(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let bad = if self.has_body {
            "the body is not JSON (`invalid-json`, `field`: `body`), or the path or query holds a NUL character, `%00` (`invalid-path`)"
        } else {
            "the path or query holds a NUL character, `%00` (`invalid-path`), or a parameter is invalid (`invalid-field`)"
        };
        out.push(("400", bad.to_owned()));
        if self.secured {
            out.push((
                "401",
                "no token, a malformed `Authorization` header, or an unknown or revoked token (`unauthorized`)".to_owned(),
            ));
            let who = if self.admin_only {
                "an admin token"
            } else if self.method == "get" {
                "a viewer, operator or admin token"
            } else {
                "an operator or admin token"
            };
            out.push((
                "403",
                format!("the token's role may not do this: it needs {who} (`forbidden`)"),
            ));
            out.push((
                "503",
                "the database is unavailable; retry later (`unavailable`)".to_owned(),
            ));
        }
        if self.has_path_params {
            out.push((
                "404",
                "no such resource: `field` or the message names what is missing (`not-found`)"
                    .to_owned(),
            ));
        }
        if self.has_body {
            out.push((
                "413",
                format!(
                    "the body is larger than {} bytes (`too-large`)",
                    crate::edge::MAX_BODY_BYTES
                ),
            ));
            out.push((
                "422",
                "a body field is invalid; `field` is its JSON path (`invalid-field`)".to_owned(),
            ));
        }
        if self.has_body || matches!(self.method, "post" | "put" | "patch") {
            out.push((
                "415",
                "a body was sent without `Content-Type: application/json` (`unsupported-media-type`)"
                    .to_owned(),
            ));
        }
        out
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                for (status, description) in Shape::of(method, op).responses() {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(&description).into());
                }
            }
        }
    }
}

/// Gives path parameters the bounds the server enforces, from one source each: experiment
/// names the pattern of `ExperimentSpec.name`, crate list names that of `NewCrateList.name`,
/// report files the names of [`crate::export::FILES`].
struct ParamSchemas;

/// (path prefix, path parameter, what it may be).
enum Allowed {
    /// The pattern of a field of a schema in the document.
    PatternOf(&'static str, &'static str),
    /// One of these values.
    OneOf(&'static [&'static str]),
}

const PARAMS: [(&str, &str, Allowed); 3] = [
    (
        "/api/v1/experiments/{name}",
        "name",
        Allowed::PatternOf("ExperimentSpec", "name"),
    ),
    (
        "/api/v1/crate-lists/{name}",
        "name",
        Allowed::PatternOf("NewCrateList", "name"),
    ),
    (
        "/api/v1/experiments/{name}/report/{file}",
        "file",
        Allowed::OneOf(crate::export::FILES),
    ),
];

impl Allowed {
    fn schema(&self, openapi: &utoipa::openapi::OpenApi) -> utoipa::openapi::Schema {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let string = ObjectBuilder::new().schema_type(Type::String);
        match self {
            Allowed::PatternOf(schema, field) => {
                let doc = serde_json::to_value(openapi).unwrap_or_default();
                let pattern = doc["components"]["schemas"][schema]["properties"][field]["pattern"]
                    .as_str()
                    .map(str::to_owned);
                assert!(pattern.is_some(), "{schema}.{field} has no pattern");
                string.pattern(pattern).build().into()
            }
            Allowed::OneOf(values) => string
                .enum_values(Some(values.iter().copied()))
                .build()
                .into(),
        }
    }
}

impl Modify for ParamSchemas {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schemas: Vec<_> = PARAMS.iter().map(|(_, _, a)| a.schema(openapi)).collect();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    let rule = PARAMS.iter().zip(&schemas).find(|((prefix, name, _), _)| {
                        path.starts_with(prefix)
                            && p.name == *name
                            && p.parameter_in == ParameterIn::Path
                    });
                    if let Some((_, schema)) = rule {
                        p.schema = Some(schema.clone().into());
                    }
                }
            }
        }
    }
}

/// A response type that flattens a request type (`ExperimentView` holds an `ExperimentSpec`) is
/// generated as `allOf: [{$ref: ExperimentSpec}, {its own fields}]`. The request type rejects
/// unknown fields (`additionalProperties: false`), so under `allOf` every response would be
/// invalid. Such a schema becomes one object with the fields of all its parts.
struct MergeClosedParts;

impl Modify for MergeClosedParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let all = serde_json::to_value(&components.schemas).unwrap_or_default();
        let target = |part: &Value| -> Option<&Value> {
            let name = part["$ref"].as_str()?.rsplit('/').next()?;
            all.get(name)
        };
        for (name, schema) in components.schemas.iter_mut() {
            let Some(parts) = all[name]["allOf"].as_array() else {
                continue;
            };
            let closed = parts
                .iter()
                .any(|p| target(p).is_some_and(|t| t["additionalProperties"] == false));
            if !closed {
                continue;
            }
            let mut merged =
                serde_json::json!({"type": "object", "properties": {}, "required": []});
            if let Some(d) = all[name]["description"].as_str() {
                merged["description"] = d.into();
            }
            for part in parts {
                let part = target(part).unwrap_or(part);
                for (field, s) in part["properties"].as_object().into_iter().flatten() {
                    merged["properties"][field] = s.clone();
                }
                for field in part["required"].as_array().into_iter().flatten() {
                    merged["required"]
                        .as_array_mut()
                        .expect("an array")
                        .push(field.clone());
                }
            }
            *schema = serde_json::from_value(merged).expect("a merged schema is a schema");
        }
    }
}

/// A response with the JSON error body.
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "caldera", description = "caldera master HTTP API: experiments over the Rust ecosystem"),
    paths(
        crate::health,
        experiments::create, experiments::list, experiments::get, experiments::edit, experiments::delete,
        experiments::start, experiments::pause, experiments::resume, experiments::abort,
        experiments::confirmations, estimate::get,
        flakes::of_crate, flakes::of_experiment,
        logs::get_log,
        crate_lists::create, crate_lists::list, crate_lists::get, crate_lists::delete,
        report::regenerate, report::list, report::file, pr::comment,
        triage::mark, triage::unmark, triage::experiment, triage::list,
        farm::workers, farm::queue,
        tokens::list, tokens::revoke,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth, &CommonResponses, &ParamSchemas, &MergeClosedParts),
    tags(
        (name = "experiments", description = "define and control experiments"),
        (name = "crate-lists", description = "named crate selections"),
        (name = "flakes", description = "flaky memory: tests and failure kinds seen to come and go between runs that should agree"),
        (name = "health", description = "liveness"),
        (name = "triage", description = "marks on regressions (expected, known issue, ignore), carried to later experiments while the cause stays the same"),
        (name = "reports", description = "exported report files: summary.md, retry.txt, results.json, index.html, logs.tar.zst"),
        (name = "farm", description = "the workers and the queue they take jobs from"),
        (name = "tokens", description = "API and worker tokens: list and revoke (create them with `caldera token create`, which prints the secret once)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;

    fn operations() -> Vec<(String, String, Value)> {
        let doc = serde_json::to_value(document()).unwrap();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (method, path, op) in operations() {
            let id = op["operationId"]
                .as_str()
                .expect("an operationId")
                .to_owned();
            let here = format!("{method} {path}");
            if let Some(before) = seen.insert(id.clone(), here.clone()) {
                panic!("operationId {id:?} is used by {before} and {here}");
            }
        }
    }

    /// Table: which shared statuses each kind of operation gets.
    #[test]
    fn the_shared_responses_follow_the_operation() {
        for (method, path, statuses, absent) in [
            (
                "get",
                "/healthz",
                &["200", "400", "503"][..],
                &["401", "403", "404", "415"][..],
            ),
            (
                "get",
                "/api/v1/experiments",
                &["400", "401", "403", "503"],
                &["404", "413", "415", "422"],
            ),
            (
                "post",
                "/api/v1/experiments",
                &["400", "401", "403", "413", "415", "422", "503"],
                &["404"],
            ),
            (
                "patch",
                "/api/v1/experiments/{name}",
                &["400", "401", "403", "404", "413", "415", "422"],
                &[],
            ),
            (
                "post",
                "/api/v1/experiments/{name}/start",
                &["401", "403", "404", "415"],
                &["413", "422"],
            ),
            (
                "delete",
                "/api/v1/tokens/{id}",
                &["400", "401", "403", "404", "503"],
                &["413", "415", "422"],
            ),
        ] {
            let (_, _, op) = operations()
                .into_iter()
                .find(|(m, p, _)| m == method && p == path)
                .unwrap_or_else(|| panic!("{method} {path} is missing"));
            for s in statuses {
                assert!(op["responses"][s].is_object(), "{method} {path} lacks {s}");
                if *s != "200" && *s != "503" || path != "/healthz" {
                    let schema = &op["responses"][s]["content"]["application/json"]["schema"];
                    assert!(schema.is_object(), "{method} {path} {s} has no JSON body");
                }
            }
            for s in absent {
                assert!(
                    op["responses"][s].is_null(),
                    "{method} {path} documents {s}"
                );
            }
        }
    }

    #[test]
    fn path_parameters_carry_the_servers_bounds() {
        let experiment = r"^[a-z0-9][a-z0-9-]{0,63}$";
        let mut named = 0;
        for (method, path, op) in operations() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let here = format!("{method} {path} {}", p["name"]);
                match (p["in"].as_str(), p["name"].as_str()) {
                    (Some("path"), Some("name")) => {
                        assert_eq!(p["schema"]["pattern"], experiment, "{here}");
                        named += 1;
                    }
                    (Some("path"), Some("file")) => {
                        assert_eq!(
                            p["schema"]["enum"],
                            serde_json::json!(crate::export::FILES),
                            "{here}"
                        );
                    }
                    _ => {}
                }
            }
        }
        assert!(named >= 15, "{named} operations with a name");
        let (_, _, list) = operations()
            .into_iter()
            .find(|(m, p, _)| m == "get" && p == "/api/v1/crate-lists/{name}")
            .unwrap();
        assert_eq!(list["parameters"][0]["schema"]["pattern"], experiment);
    }

    #[test]
    fn a_flattened_closed_schema_is_merged() {
        let doc = serde_json::to_value(document()).unwrap();
        let view = &doc["components"]["schemas"]["ExperimentView"];
        assert!(view["allOf"].is_null(), "{view}");
        for field in ["id", "status", "name", "start", "crates", "progress"] {
            assert!(view["properties"][field].is_object(), "{field}: {view}");
        }
        assert!(view["additionalProperties"].is_null(), "{view}");
        let spec = &doc["components"]["schemas"]["ExperimentSpec"];
        assert_eq!(spec["additionalProperties"], false, "requests stay closed");
    }

    #[test]
    fn a_handlers_own_description_is_kept() {
        let doc = serde_json::to_value(document()).unwrap();
        let r = &doc["paths"]["/api/v1/experiments/{name}"]["delete"]["responses"]["503"];
        assert!(
            r["description"].as_str().unwrap().contains("storage"),
            "{r}"
        );
        let r = &doc["paths"]["/api/v1/tokens/{id}"]["delete"]["responses"]["403"];
        assert!(
            r["description"].as_str().unwrap().contains("admin token"),
            "{r}"
        );
    }
}

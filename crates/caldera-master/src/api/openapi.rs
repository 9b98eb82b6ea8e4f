//! The OpenAPI document, generated from the handlers and types (`/api/v1/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{crate_lists, experiments, flakes, logs, report, triage};
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

#[derive(OpenApi)]
#[openapi(
    info(title = "caldera", description = "caldera master HTTP API: experiments over the Rust ecosystem"),
    paths(
        crate::health,
        experiments::create, experiments::list, experiments::get, experiments::edit, experiments::delete,
        experiments::start, experiments::pause, experiments::resume, experiments::abort,
        experiments::confirmations,
        flakes::of_crate, flakes::of_experiment,
        logs::get_log,
        crate_lists::create, crate_lists::list, crate_lists::get, crate_lists::delete,
        report::regenerate, report::list, report::file,
        triage::mark, triage::unmark, triage::experiment, triage::list,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "experiments", description = "define and control experiments"),
        (name = "crate-lists", description = "named crate selections"),
        (name = "flakes", description = "flaky memory: tests and failure kinds seen to come and go between runs that should agree"),
        (name = "health", description = "liveness"),
        (name = "triage", description = "marks on regressions (expected, known issue, ignore), carried to later experiments while the cause stays the same"),
        (name = "reports", description = "exported report files: summary.md, retry.txt, results.json, index.html, logs.tar.zst"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

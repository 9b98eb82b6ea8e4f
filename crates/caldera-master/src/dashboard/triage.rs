//! The triage section of a regressed crate's page, and the form that sets or removes its mark.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use caldera_core::crates::CrateId;
use caldera_core::outcome::Outcome;
use caldera_core::triage::{MarkKind, MarkRequest, cause};
use caldera_db::triage::{CrateRef, Mark};
use maud::{Markup, html};
use serde::Deserialize;

use super::views::{self, crate_href};
use super::{PageError, Viewer};
use crate::AppState;
use crate::api::triage::{remove_mark, set_mark};
use crate::error::ApiError;

/// The words a shell needs quoted, single-quoted.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@=+%".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The section: the cause, the mark (kind, link, note, who, when) and either the form (for an
/// operator) or the command that sets the mark.
pub(super) fn section(
    experiment: &str,
    krate: &CrateId,
    end: &Outcome,
    mark: Option<&Mark>,
    operator: Option<&str>,
) -> Markup {
    let action = format!("{}/triage", crate_href(experiment, krate));
    let cli = format!(
        "caldera triage mark {} {} --kind known-issue --link URL --note TEXT",
        sh(experiment),
        sh(&krate.to_string())
    );
    html! {
        section #triage {
            h2 { "Triage" }
            p.small { "Cause: " code { (cause(end)) } ". A mark applies to this crate (any version) in every experiment where it regresses with this same cause." }
            @match mark {
                Some(m) => {
                    table #mark {
                        tr { th { "mark" } td { (crate::triage::badge(m)) } }
                        @if let Some(link) = &m.link { tr { th { "link" } td { a href=(link) rel="noopener noreferrer" { (link) } } } }
                        @if !m.note.is_empty() { tr { th { "note" } td { (m.note) } } }
                        tr { th { "set by" } td { (m.updated_by) " · " (views::timestamp(m.updated_at)) " · on " code { (m.experiment) } } }
                        @if m.created_by != m.updated_by || m.created_at != m.updated_at {
                            tr { th { "first set by" } td { (m.created_by) " · " (views::timestamp(m.created_at)) } }
                        }
                    }
                }
                None => p { "Not triaged." }
            }
            @match operator {
                Some(who) => {
                    form.triage method="post" action=(action) {
                        input type="hidden" name="action" value="set";
                        label { "mark "
                            select name="kind" {
                                @for k in MarkKind::ALL {
                                    option value=(k.as_str()) selected[mark.is_some_and(|m| m.kind == *k)] { (crate::triage::kind_label(*k)) }
                                }
                            }
                        }
                        " "
                        label { "link " input type="url" name="link" value=[mark.and_then(|m| m.link.as_deref())] placeholder="https://… (needed for a known issue)"; }
                        " "
                        label { "note " input type="text" name="note" maxlength="2000" value=[mark.map(|m| m.note.as_str())]; }
                        " "
                        button type="submit" { (if mark.is_some() { "Update" } else { "Mark" }) }
                        span.small { " as " (who) }
                    }
                    @if mark.is_some() {
                        form.triage method="post" action=(action) {
                            input type="hidden" name="action" value="remove";
                            button type="submit" { "Remove the mark" }
                        }
                    }
                }
                None => p.small { "To set it: " code { (cli) } " (or sign in at " a href="/login" { "/login" } " with an operator token to use a form here)." }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TriageForm {
    action: String,
    kind: Option<String>,
    link: Option<String>,
    note: Option<String>,
}

fn page_error(e: ApiError) -> Response {
    let field = e.field.map(|f| format!("{f}: ")).unwrap_or_default();
    PageError {
        status: e.status,
        message: format!("{field}{}", e.message),
    }
    .into_response()
}

/// `POST /experiments/{name}/crates/{crate}/triage`: set (`action=set`, `kind`, `link`, `note`)
/// or remove (`action=remove`) the mark; then back to the crate page. Needs an operator or admin
/// token; errors are pages with the API's status and message.
pub(super) async fn submit(
    State(state): State<AppState>,
    _viewer: Viewer,
    headers: HeaderMap,
    Path((name, krate)): Path<(String, String)>,
    form: Result<Form<TriageForm>, FormRejection>,
) -> Response {
    let who = match super::operator(&state, &headers).await {
        Ok(Some(who)) => who,
        Ok(None) => {
            return PageError {
                status: StatusCode::FORBIDDEN,
                message: "setting a triage mark needs an operator or admin token: sign in at /login with one".into(),
            }
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let Form(form) = match form {
        Ok(f) => f,
        Err(e) => return PageError::bad_request(e.body_text()).into_response(),
    };
    let id: CrateId = match krate.parse() {
        Ok(id) => id,
        Err(e) => {
            return PageError::bad_request(format!("{krate:?} is not a crate id: {e}"))
                .into_response();
        }
    };
    let back = crate_href(&name, &id);
    let krate = CrateRef::Id(id);
    let result = match form.action.as_str() {
        "set" => {
            let request = MarkRequest {
                kind: match form.kind.as_deref().unwrap_or("").parse::<MarkKind>() {
                    Ok(k) => k,
                    Err(e) => return page_error(ApiError::invalid("kind", e.to_string())),
                },
                link: form
                    .link
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_owned()),
                note: form.note.unwrap_or_default().trim().to_owned(),
            };
            if let Err(e) = request.validate() {
                return page_error(ApiError::invalid(e.field, e.message));
            }
            set_mark(&state, &name, &krate, &request, &who)
                .await
                .map(|_| ())
        }
        "remove" => remove_mark(&state, &name, &krate, &who).await.map(|_| ()),
        other => Err(ApiError::bad_request(
            "action",
            format!("unknown action {other:?}; expected set or remove"),
        )),
    };
    match result {
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [(
                LOCATION,
                HeaderValue::from_str(&format!("{back}#triage"))
                    .unwrap_or(HeaderValue::from_static("/")),
            )],
        )
            .into_response(),
        Err(e) => page_error(e),
    }
}

//! What S3's failures mean: the SDK's errors as [`StorageError`]s, read from the HTTP status and
//! S3's error code (two tables of codes), so that callers know what to fix and what to retry.

use std::error::Error as StdError;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::S3Store;
use crate::error::StorageError;
use crate::key::ObjectKey;

/// Error codes that mean the credentials are wrong or may not do this (as do HTTP 401 and 403).
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccessDenied",
    "NotSignedUp",
];

/// Error codes of a server that is busy or briefly failing: worth retrying (as are HTTP 429 and
/// 5xx).
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
];

/// What S3 answered to a failed request: the HTTP status, and the error code and message when the
/// body had them (else empty).
struct ServiceResponse<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl ServiceResponse<'_> {
    /// The cause as an error message shows it: code, message and status, as far as known.
    fn cause(&self) -> String {
        let status = self.status;
        match (self.code, self.message) {
            ("", "") => format!("HTTP {status}"),
            ("", m) => format!("{m} (HTTP {status})"),
            (c, "") => format!("{c} (HTTP {status})"),
            (c, m) => format!("{c}: {m} (HTTP {status})"),
        }
    }
}

/// The [`StorageError`] for an error response to `op` on `key`: a missing bucket, a missing object
/// (by code, or a 404 without one), bad credentials, or else a backend error, transient when the
/// server is busy or failing.
fn service_error(
    store: String,
    op: &'static str,
    key: String,
    response: ServiceResponse<'_>,
) -> StorageError {
    let cause = response.cause();
    match (response.status, response.code) {
        (_, "NoSuchBucket") => StorageError::NoSuchBucket {
            store,
            op,
            key,
            cause,
        },
        (_, "NoSuchKey" | "NotFound") | (404, "") => StorageError::NotFound { store, key },
        (401 | 403, _) => StorageError::Credentials {
            store,
            op,
            key,
            cause,
        },
        (_, code) if CREDENTIAL_CODES.contains(&code) => StorageError::Credentials {
            store,
            op,
            key,
            cause,
        },
        (status, code) => StorageError::Backend {
            store,
            op,
            key,
            cause,
            transient: status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code),
        },
    }
}

impl S3Store {
    /// The [`StorageError`] for a failed SDK call `op` on `key`: an error response is read by its
    /// status and code ([`service_error`]); a request that never got one is `Unavailable`, unless
    /// the SDK refused to send it (a bug or a configuration problem).
    pub(super) fn error<E>(
        &self,
        op: &'static str,
        key: &ObjectKey,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let store = self.label.to_string();
        let key = key.to_string();
        match &err {
            SdkError::ServiceError(service) => {
                let response = ServiceResponse {
                    status: service.raw().status().as_u16(),
                    code: err.code().unwrap_or(""),
                    message: err.message().unwrap_or(""),
                };
                service_error(store, op, key, response)
            }
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => {
                let is_user = matches!(&err, SdkError::DispatchFailure(d) if d.is_user());
                let cause = DisplayErrorContext(&err).to_string();
                if is_user {
                    StorageError::Backend {
                        store,
                        op,
                        key,
                        cause,
                        transient: false,
                    }
                } else {
                    StorageError::Unavailable {
                        store,
                        op,
                        key,
                        cause,
                    }
                }
            }
            // Construction failures (and anything new) are bugs or configuration problems.
            _ => StorageError::Backend {
                store,
                op,
                key,
                cause: DisplayErrorContext(&err).to_string(),
                transient: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_read_by_status_and_code() {
        // (status, code, what it becomes, whether it is retried)
        let cases: &[(u16, &str, &str, bool)] = &[
            (404, "NoSuchBucket", "no such bucket", false),
            (403, "NoSuchBucket", "no such bucket", false),
            (404, "NoSuchKey", "not found", false),
            (400, "NotFound", "not found", false),
            (404, "", "not found", false),
            (403, "", "credentials", false),
            (401, "SomethingElse", "credentials", false),
            (400, "ExpiredToken", "credentials", false),
            (400, "SignatureDoesNotMatch", "credentials", false),
            (503, "SlowDown", "backend", true),
            (500, "", "backend", true),
            (429, "", "backend", true),
            (400, "RequestTimeout", "backend", true),
            (400, "RequestTimeTooSkewed", "backend", true),
            (400, "InvalidArgument", "backend", false),
            (404, "SomethingElse", "backend", false),
        ];
        for &(status, code, want, transient) in cases {
            let response = ServiceResponse {
                status,
                code,
                message: "",
            };
            let err = service_error("store".into(), "get", "k".into(), response);
            let kind = match &err {
                StorageError::NoSuchBucket { .. } => "no such bucket",
                StorageError::NotFound { .. } => "not found",
                StorageError::Credentials { .. } => "credentials",
                StorageError::Backend { .. } => "backend",
                other => panic!("{other:?}"),
            };
            assert_eq!(
                (kind, err.is_transient()),
                (want, transient),
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn causes_name_what_the_response_had() {
        let cause = |code, message| {
            ServiceResponse {
                status: 503,
                code,
                message,
            }
            .cause()
        };
        assert_eq!(cause("", ""), "HTTP 503");
        assert_eq!(cause("", "busy"), "busy (HTTP 503)");
        assert_eq!(cause("SlowDown", ""), "SlowDown (HTTP 503)");
        assert_eq!(cause("SlowDown", "busy"), "SlowDown: busy (HTTP 503)");
    }
}

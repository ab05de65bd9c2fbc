//! Bearer tokens and their scopes (`[http] tokens_file`).

use super::ApiError;
use crate::config::{HttpSettings, Scope};
use axum::http::{header, HeaderMap, StatusCode};

/// Whether the caller's token allows `need` for `what` (e.g.
/// `POST /api/v1/jobs/backup/runs`). Without a tokens file the API is open
/// and read-only.
pub(super) fn check(
    http: &HttpSettings,
    headers: &HeaderMap,
    need: Scope,
    what: &str,
) -> Result<(), ApiError> {
    let Some(tokens) = &http.tokens else {
        if need == Scope::Read {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            format!("{what} needs a token of scope {need}, and this API is read-only: [http] tokens_file is not set"),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let unauthorized = |message: &str| {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.bearer_challenge = true;
        e
    };
    let Some(presented) = presented else {
        return Err(unauthorized(
            "send a token: Authorization: Bearer TOKEN (one of [http] tokens_file)",
        ));
    };
    match tokens.scope_of(presented) {
        None => Err(unauthorized("the token is not one of [http] tokens_file")),
        Some(scope) if scope < need => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} needs a token of scope {need}; this one has scope {scope}"),
        )),
        Some(_) => Ok(()),
    }
}

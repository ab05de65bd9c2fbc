//! Bearer tokens and their scopes (`[http] tokens_file`).

use super::ApiError;
use crate::config::{HttpSettings, Scope};
use axum::http::{header, HeaderMap, StatusCode};

/// The scope the caller's token grants: `None` without a tokens file (the
/// API is then open and read-only); 401 without a token or with an unknown
/// one.
pub(super) fn scope_of(
    http: &HttpSettings,
    headers: &HeaderMap,
) -> Result<Option<Scope>, ApiError> {
    let Some(tokens) = &http.tokens else {
        return Ok(None);
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
        Some(scope) => Ok(Some(scope)),
    }
}

/// Whether the caller's token allows `need` for `what` (e.g.
/// `POST /api/v1/jobs/backup/runs`).
pub(super) fn check(
    http: &HttpSettings,
    headers: &HeaderMap,
    need: Scope,
    what: &str,
) -> Result<(), ApiError> {
    match scope_of(http, headers)? {
        None if need == Scope::Read => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            format!("{what} needs a token of scope {need}, and this API is read-only: [http] tokens_file is not set"),
        )),
        Some(scope) if scope < need => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} needs a token of scope {need}; this one has scope {scope}"),
        )),
        Some(_) => Ok(()),
    }
}

/// `GET /api/v1/auth`: what the caller may do, so that a client (the
/// dashboard) can offer only what will be allowed.
pub(super) async fn whoami(
    axum::extract::State(api): axum::extract::State<std::sync::Arc<super::Api>>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let config = api.config();
    let scope = scope_of(&config.http, &headers)?;
    Ok(super::json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "tokens_file": config.http.tokens.is_some(),
            "scope": scope.unwrap_or(Scope::Read).to_string(),
            "read_only": scope.is_none(),
        }),
    ))
}

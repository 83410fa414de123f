//! Bearer-token authentication for the `/v1` API.
//!
//! Tokens come from `ROWPIPE_AUTH_TOKENS` and/or `ROWPIPE_AUTH_TOKENS_FILE`;
//! comparison runs in constant time over every configured token, so neither
//! timing nor the order of tokens leaks which prefix matched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// The accepted tokens, or "auth disabled".
#[derive(Clone, Debug)]
pub enum Auth {
    Disabled,
    Tokens(Arc<Vec<Vec<u8>>>),
}

impl Auth {
    /// Build from configuration; refuses an empty token set unless disabled.
    pub fn from_config(
        tokens: Option<&str>,
        file: Option<&std::path::Path>,
        disabled: bool,
    ) -> anyhow::Result<Self> {
        if disabled {
            tracing::warn!(
                "ROWPIPE_AUTH_DISABLED=true: the upload API accepts requests without a token; use this for local runs only"
            );
            return Ok(Auth::Disabled);
        }
        let mut all: Vec<Vec<u8>> = Vec::new();
        if let Some(list) = tokens {
            all.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.as_bytes().to_vec()),
            );
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read ROWPIPE_AUTH_TOKENS_FILE {}: {e}",
                    path.display()
                )
            })?;
            all.extend(
                text.lines()
                    .flat_map(|l| l.split(','))
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && !t.starts_with('#'))
                    .map(|t| t.as_bytes().to_vec()),
            );
        }
        if all.is_empty() {
            anyhow::bail!(
                "no API tokens configured: set ROWPIPE_AUTH_TOKENS or ROWPIPE_AUTH_TOKENS_FILE, or ROWPIPE_AUTH_DISABLED=true for a local run"
            );
        }
        Ok(Auth::Tokens(Arc::new(all)))
    }

    fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match self {
            Auth::Disabled => true,
            Auth::Tokens(tokens) => {
                let Some(presented) = presented else {
                    return false;
                };
                let mut any = 0u8;
                for t in tokens.iter() {
                    any |= constant_time_eq(t, presented) as u8;
                }
                any == 1
            }
        }
    }
}

/// Equal-length comparison without early exit; lengths are not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Middleware: 401 unless the request carries an accepted bearer token.
pub async fn require_token(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().as_bytes().to_vec());
    if auth.accepts(presented.as_deref()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let auth = Auth::from_config(Some("alpha, beta"), None, false).expect("auth");
        assert!(auth.accepts(Some(b"beta")));
        assert!(!auth.accepts(Some(b"bet")));
        assert!(!auth.accepts(None));
        assert!(Auth::from_config(None, None, false).is_err());
    }
}

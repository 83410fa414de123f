//! Bearer-token authentication for the `/v1` API, and whose a request is.
//!
//! Tokens come from `ROWPIPE_AUTH_TOKENS` and/or `ROWPIPE_AUTH_TOKENS_FILE`.
//! Each is `tenant=token` (the token's uploads belong to that tenant, and it
//! sees and exports only those) or a bare token (an operator's, which sees
//! every upload). Comparison runs in constant time over every configured
//! token, so neither timing nor the order of tokens leaks which prefix
//! matched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// Who sent a request: put into the request's extensions by
/// [`require_token`], read by the handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A bare token (or authentication disabled): sees every upload.
    Operator,
    /// A tenant's token: sees only the uploads it sent.
    Tenant(Arc<str>),
}

impl Caller {
    /// The tenant uploads are recorded under (None for an operator).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    /// Whether this caller may see an upload recorded under `tenant`.
    pub fn may_see(&self, tenant: Option<&str>) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Tenant(mine) => tenant == Some(&**mine),
        }
    }
}

/// One accepted token and whose it is.
#[derive(Clone, Debug)]
pub struct Token {
    secret: Vec<u8>,
    caller: Caller,
}

/// The accepted tokens, or "auth disabled".
#[derive(Clone, Debug)]
pub enum Auth {
    Disabled,
    Tokens(Arc<Vec<Token>>),
}

/// Longest tenant name (the `uploads.tenant` column holds 128).
const MAX_TENANT_LEN: usize = 128;

/// `tenant=token` or a bare token. A name is ASCII letters, digits, `-`,
/// `_` and `.`; an empty name (`=token`) is an operator token that contains
/// `=`; a tail of only `=` is base64 padding of a bare token.
fn parse_token(item: &str) -> anyhow::Result<Token> {
    let bare = || Token {
        secret: item.as_bytes().to_vec(),
        caller: Caller::Operator,
    };
    let Some((name, secret)) = item.split_once('=') else {
        return Ok(bare());
    };
    if secret.bytes().all(|b| b == b'=') {
        return Ok(bare());
    }
    let secret = secret.trim();
    if name.is_empty() {
        return Ok(Token {
            secret: secret.as_bytes().to_vec(),
            caller: Caller::Operator,
        });
    }
    let name = name.trim();
    if name.len() > MAX_TENANT_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        anyhow::bail!(
            "tenant name {name:?} in the configured tokens is not valid: use at most \
             {MAX_TENANT_LEN} ASCII letters, digits, '-', '_' or '.'"
        );
    }
    Ok(Token {
        secret: secret.as_bytes().to_vec(),
        caller: Caller::Tenant(name.into()),
    })
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
        let mut items: Vec<String> = Vec::new();
        if let Some(list) = tokens {
            items.extend(list.split(',').map(str::to_string));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read ROWPIPE_AUTH_TOKENS_FILE {}: {e}",
                    path.display()
                )
            })?;
            items.extend(
                text.lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .flat_map(|l| l.split(','))
                    .map(str::to_string),
            );
        }
        let all = items
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(parse_token)
            .collect::<anyhow::Result<Vec<Token>>>()?;
        if all.is_empty() {
            anyhow::bail!(
                "no API tokens configured: set ROWPIPE_AUTH_TOKENS or ROWPIPE_AUTH_TOKENS_FILE, or ROWPIPE_AUTH_DISABLED=true for a local run"
            );
        }
        Ok(Auth::Tokens(Arc::new(all)))
    }

    /// Whose the presented token is, if it is accepted.
    fn caller(&self, presented: Option<&[u8]>) -> Option<Caller> {
        match self {
            Auth::Disabled => Some(Caller::Operator),
            Auth::Tokens(tokens) => {
                let presented = presented?;
                // Every token is compared; the match is picked without an
                // early exit.
                let mut found = None;
                for t in tokens.iter() {
                    if constant_time_eq(&t.secret, presented) && found.is_none() {
                        found = Some(t.caller.clone());
                    }
                }
                found
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

/// Middleware: 401 unless the request carries an accepted bearer token;
/// the [`Caller`] goes into the request's extensions.
pub async fn require_token(
    State(auth): State<Auth>,
    mut request: Request,
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
    match auth.caller(presented.as_deref()) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            Ok(next.run(request).await)
        }
        None => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let auth = Auth::from_config(Some("alpha, beta"), None, false).expect("auth");
        assert_eq!(auth.caller(Some(b"beta")), Some(Caller::Operator));
        assert_eq!(auth.caller(Some(b"bet")), None);
        assert_eq!(auth.caller(None), None);
        assert!(Auth::from_config(None, None, false).is_err());
    }

    #[test]
    fn named_tokens_belong_to_their_tenant_and_bare_ones_to_operators() {
        let auth =
            Auth::from_config(Some("acme=T1,globex=T2,OPS,b64pad=="), None, false).expect("auth");
        assert_eq!(
            auth.caller(Some(b"T1")),
            Some(Caller::Tenant("acme".into()))
        );
        assert_eq!(
            auth.caller(Some(b"T2")),
            Some(Caller::Tenant("globex".into()))
        );
        assert_eq!(auth.caller(Some(b"OPS")), Some(Caller::Operator));
        assert_eq!(auth.caller(Some(b"b64pad==")), Some(Caller::Operator));
        assert_eq!(auth.caller(Some(b"acme=T1")), None);
        assert!(Auth::from_config(Some("bad name=T"), None, false).is_err());
        let dir = std::env::temp_dir().join(format!("rowpipe-tokens-{}", std::process::id()));
        std::fs::write(&dir, "# tenants\nacme=F1\n=op=with=equals\n").expect("write");
        let auth = Auth::from_config(None, Some(&dir), false).expect("auth");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            auth.caller(Some(b"F1")),
            Some(Caller::Tenant("acme".into()))
        );
        assert_eq!(auth.caller(Some(b"op=with=equals")), Some(Caller::Operator));
    }
}

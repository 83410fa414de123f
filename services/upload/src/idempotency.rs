//! Replays: a retried upload gets the upload it repeats instead of having its
//! rows enqueued a second time.
//!
//! A client names a retry with an `Idempotency-Key`, or sends the file's
//! sha256 in `X-Content-SHA256`; the same content within the configured
//! window then counts as the same upload. The body's own hash is known only
//! after the whole body was read, too late to avoid enqueuing it, which is
//! why the client's hash is the one compared.
//!
//! Both are a tenant's own: a key is recorded prefixed with the tenant's
//! name, and a content match is an upload of the same tenant, so no tenant
//! can replay, resume or even learn of another one's upload.

use axum::http::HeaderMap;
use rowpipe_core::store::{Store, StoreError, UploadRecord};

/// What a request says about being a retry.
#[derive(Debug, Default)]
pub struct Idempotency {
    /// The key as recorded: the tenant's name and the client's key.
    key: Option<String>,
    sha256: Option<String>,
    tenant: Option<String>,
}

/// Between a tenant's name and its key in the recorded key: a control
/// character, which no header value can hold, so no client's key can
/// spell another tenant's.
const TENANT_SEPARATOR: char = '\u{1f}';

/// The longest recorded key (`uploads.idempotency_key` holds 255).
const MAX_KEY_LEN: usize = 255;

impl Idempotency {
    /// Read from the request headers of `tenant` (None: an operator); a
    /// malformed value counts as absent.
    pub fn from_headers(headers: &HeaderMap, tenant: Option<&str>) -> Self {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| match tenant {
                Some(t) => format!("{t}{TENANT_SEPARATOR}{s}"),
                None => s.to_string(),
            })
            .filter(|s| s.len() <= MAX_KEY_LEN);
        Idempotency {
            key,
            sha256: client_sha256(headers),
            tenant: tenant.map(str::to_string),
        }
    }

    /// The `Idempotency-Key`, recorded with a new upload so that its retries
    /// find it.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The earlier upload this request repeats: the same key, or else the same
    /// content within `window_secs` (0 disables the content match).
    pub async fn earlier_upload(
        &self,
        store: &Store,
        window_secs: u64,
    ) -> Result<Option<UploadRecord>, StoreError> {
        if let Some(key) = &self.key
            && let Some(existing) = store.upload_by_idempotency_key(key).await?
        {
            return Ok(Some(existing));
        }
        if let Some(sha) = &self.sha256
            && window_secs > 0
        {
            let since = rowpipe_core::now_ms() - (window_secs as i64) * 1000;
            return store
                .upload_by_sha256(sha, since, self.tenant.as_deref())
                .await;
        }
        Ok(None)
    }
}

/// `X-Content-SHA256` when it is 64 hex digits, lower-cased.
fn client_sha256(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())?;
    let v = v.trim().to_ascii_lowercase();
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

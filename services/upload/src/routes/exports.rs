//! `/v1/uploads/{id}/rejects` and `/v1/uploads/{id}/duplicates`: an upload's
//! rows that were not stored, as CSV a client can fix and send back; and
//! `/v1/uploads/{id}/unverified`: rows stored although the consumer's DNS
//! check could not verify their domain, in the rejects' shape.
//!
//! Both row exports end with a `suggestion` column: the address the sender
//! probably meant (`jane@gmail.com` for `jane@gmial.com`), read from the
//! message that carries it (`rowpipe_core::suggest`), so the column and the
//! message always agree; empty where there is none.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rowpipe_core::store::unverified::UnverifiedRow;
use rowpipe_core::store::uploads::RejectedRow;
use rowpipe_core::store::{Store, StoreError};
use rowpipe_core::suggest;

use crate::auth::Caller;
use crate::csv_writer::{PAGE, paged_csv};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/uploads/{id}/rejects", get(get_rejects))
        .route("/v1/uploads/{id}/duplicates", get(get_duplicates))
        .route("/v1/uploads/{id}/unverified", get(get_unverified))
}

/// `GET /v1/uploads/{id}/rejects`
pub async fn get_rejects(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    export(state, caller, id, Export::Rejects).await
}

/// `GET /v1/uploads/{id}/duplicates`
pub async fn get_duplicates(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    export(state, caller, id, Export::Duplicates).await
}

/// `GET /v1/uploads/{id}/unverified`
pub async fn get_unverified(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    export(state, caller, id, Export::Unverified).await
}

/// The exports of an upload's rows; all have the same shape (a row number,
/// then fields) and differ only in the header and the rows read.
#[derive(Clone, Copy, Debug)]
enum Export {
    /// Every rejected row (row number, reason, message, the original fields
    /// as JSON), ready to send back.
    Rejects,
    /// Row numbers that lost to an earlier row with the same email.
    Duplicates,
    /// Stored rows whose mail domain DNS could not verify (row number,
    /// reason, message, the fields as stored, the domain).
    Unverified,
}

impl Export {
    fn header(self) -> &'static str {
        match self {
            Export::Rejects => "row_number,reason,message,fields,suggestion",
            Export::Duplicates => "row_number,email",
            Export::Unverified => "row_number,reason,message,fields,domain,suggestion",
        }
    }

    /// The rows of upload `id` after row number `after`, at most [`PAGE`].
    async fn page(
        self,
        store: &Store,
        id: &str,
        after: i64,
    ) -> Result<Vec<(i64, Vec<String>)>, StoreError> {
        Ok(match self {
            Export::Rejects => {
                let rows = store.rejected_rows_page(id, after, PAGE).await?;
                let fields = |r: RejectedRow| {
                    let suggestion = suggestion_of(&r.message);
                    (
                        r.row_number,
                        vec![r.reason, r.message, r.fields, suggestion],
                    )
                };
                rows.into_iter().map(fields).collect()
            }
            Export::Duplicates => {
                let rows = store.duplicate_rows_page(id, after, PAGE).await?;
                rows.into_iter()
                    .map(|(n, email)| (n, vec![email]))
                    .collect()
            }
            Export::Unverified => {
                let rows = store.unverified_rows_page(id, after, PAGE).await?;
                let fields = |r: UnverifiedRow| {
                    let suggestion = suggestion_of(&r.message);
                    (
                        r.row_number,
                        vec![r.reason, r.message, r.fields, r.domain, suggestion],
                    )
                };
                rows.into_iter().map(fields).collect()
            }
        })
    }
}

/// The `suggestion` column: what the message suggests, or empty.
fn suggestion_of(message: &str) -> String {
    suggest::suggestion_in(message).unwrap_or("").to_string()
}

/// The CSV export of upload `id`, or 404 when there is no such upload or
/// it is another tenant's (an upload without such rows gets the header line
/// only).
async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    export: Export,
) -> Result<Response, ApiError> {
    match state.store.upload_tenant(&id).await? {
        Some(tenant) if caller.may_see(tenant.as_deref()) => {}
        _ => return Err(ApiError::NotFound(id)),
    }
    let store = state.store;
    let body = paged_csv(export.header(), move |after| {
        let (store, id) = (store.clone(), id.clone());
        async move { export.page(&store, &id, after).await }
    });
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

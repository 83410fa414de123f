//! `/v1/uploads/{id}/rejects` and `/v1/uploads/{id}/duplicates`: an upload's
//! rows that were not stored, as CSV a client can fix and send back.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rowpipe_core::store::uploads::RejectedRow;
use rowpipe_core::store::{Store, StoreError};

use crate::auth::Caller;
use crate::csv_writer::{PAGE, paged_csv};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/uploads/{id}/rejects", get(get_rejects))
        .route("/v1/uploads/{id}/duplicates", get(get_duplicates))
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

/// The exports of an upload's rows; both have the same shape (a row number,
/// then fields) and differ only in the header and the rows read.
#[derive(Clone, Copy, Debug)]
enum Export {
    /// Every rejected row (row number, reason, message, the original fields
    /// as JSON), ready to send back.
    Rejects,
    /// Row numbers that lost to an earlier row with the same email.
    Duplicates,
}

impl Export {
    fn header(self) -> &'static str {
        match self {
            Export::Rejects => "row_number,reason,message,fields",
            Export::Duplicates => "row_number,email",
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
                let fields = |r: RejectedRow| (r.row_number, vec![r.reason, r.message, r.fields]);
                rows.into_iter().map(fields).collect()
            }
            Export::Duplicates => {
                let rows = store.duplicate_rows_page(id, after, PAGE).await?;
                rows.into_iter()
                    .map(|(n, email)| (n, vec![email]))
                    .collect()
            }
        })
    }
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

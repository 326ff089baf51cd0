//! The companion HTTP API (feature `api`): budget config, heartbeat ingestion and the workspace
//! registry, as one tower service — mount it with axum's `nest_service`/`fallback_service`, or
//! serve it with hyper.
//!
//! | route | who | does |
//! |---|---|---|
//! | `GET /workspaces/{id}/budget` | admin, the workspace | limits, spend, remaining per period + legacy monthly fields |
//! | `PATCH /workspaces/{id}/budget` | admin | `{"budget_limits": {…}}` (merge patch) or legacy `{"budget_limit": n}` |
//! | `POST /registry/heartbeat` | admin, the workspace | `{"workspace_id", "monthly_spend", "seq"}` → recorded delta |
//! | `POST /registry/register` | admin | `{"workspace_id", "url"}` → a new workspace token (shown once) |
//! | `GET /workspaces/{id}/spend?step=&since=&until=` | admin, the workspace | spend per UTC hour or day |
//! | `GET /workspaces?after=&limit=&include=status` | admin | registered workspace ids, in order, paged; with `include=status` each with its budget GET body and `exceeded_periods` |
//! | `DELETE /workspaces/{id}` | admin | marks the workspace removed |
//!
//! Every body is JSON; errors are `{"error": "…"}`. Checks run in this order: no bearer token →
//! 401; a token that is nobody's → 403; an invalid body, path or query → 400 (413 over 64 KiB);
//! a workspace token acting for another workspace (or on an admin route) → 403; an unknown or
//! removed workspace → 404. A rejected request changes nothing.
//!
//! ```
//! use std::sync::Arc;
//! use tower_budget::api::{BudgetApi, TokenAuth};
//! use tower_budget::layer::BudgetLayer;
//! use tower_budget::store::{CachingStore, MemoryStore};
//!
//! // One caching store for the layer and the API: decisions see the API's writes at once.
//! let store = Arc::new(CachingStore::with_defaults(Arc::new(MemoryStore::new())));
//! let layer = BudgetLayer::from_arc(store.clone());
//! let api = BudgetApi::new(store.clone(), TokenAuth::new("admin-secret", store));
//! let app: axum::Router = axum::Router::new().fallback_service(api);
//! # drop(app);
//! ```

mod auth;
mod budget;
mod heartbeat;
mod history;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tower_service::Service;

pub use auth::{generate_token, hash_token, Authorize, Principal, TokenAuth};

use crate::store::{Store, StoreError};
use crate::WorkspaceId;

/// The largest JSON body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Default bound on the store calls of a read (→ 503 after it).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request body may take to arrive (→ 408 after it).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The budget page (`/ui` in the example gateway): one self-contained HTML file, no build step,
/// no CDN. It talks to this API with the admin token the operator types in.
pub const BUDGET_PAGE: &str = include_str!("budget_page.html");

/// The API as a tower service. Cheap to clone.
#[derive(Clone)]
pub struct BudgetApi {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn Store>,
    auth: Arc<dyn Authorize>,
    store_timeout: Duration,
}

impl std::fmt::Debug for BudgetApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetApi").finish_non_exhaustive()
    }
}

impl BudgetApi {
    /// The API over `store`, authorizing with `auth`. Pass the store the
    /// [`BudgetLayer`](crate::layer::BudgetLayer) asks (the same
    /// [`CachingStore`](crate::store::CachingStore)) so that its decisions see writes at once.
    pub fn new(store: Arc<dyn Store>, auth: impl Authorize) -> Self {
        BudgetApi {
            inner: Arc::new(Inner {
                store,
                auth: Arc::new(auth),
                store_timeout: DEFAULT_STORE_TIMEOUT,
            }),
        }
    }

    /// Bounds the store calls of reads — token lookups, budget GETs, listings — (default
    /// [`DEFAULT_STORE_TIMEOUT`]): a store that does not answer in time gets `503`. Writes
    /// (heartbeats, registrations, limit patches, removals) are not cut short here: they wait
    /// for the store's own bounded answer (the Postgres store's pool and query timeouts), so that
    /// a 503 means the write did not complete rather than "it may land later", and this
    /// process's cache is dropped after the write, not before it lands.
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).store_timeout = timeout;
        self
    }
}

impl<B> Service<Request<B>> for BudgetApi
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = match inner.handle(request).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            };
            Ok(response.map(Full::new))
        })
    }
}

/// Why a request was refused; turned into `{"error": …}` in one place.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized,
    Forbidden(&'static str),
    BadRequest(String),
    NotFound(&'static str),
    MethodNotAllowed(&'static str),
    PayloadTooLarge,
    BodyTimeout,
    Unavailable,
}

impl ApiError {
    pub(crate) fn bad(message: impl std::fmt::Display) -> Self {
        ApiError::BadRequest(message.to_string())
    }

    fn into_response(self) -> Response<Bytes> {
        use crate::response::error;
        match self {
            ApiError::Unauthorized => {
                let mut res = error(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token (Authorization: Bearer …)",
                );
                res.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                res
            }
            ApiError::Forbidden(why) => error(StatusCode::FORBIDDEN, why),
            ApiError::BadRequest(why) => error(StatusCode::BAD_REQUEST, why),
            ApiError::NotFound(what) => error(StatusCode::NOT_FOUND, what),
            ApiError::MethodNotAllowed(allow) => {
                let mut res = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                res.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                res
            }
            ApiError::PayloadTooLarge => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::BodyTimeout => error(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {} s", BODY_TIMEOUT.as_secs()),
            ),
            ApiError::Unavailable => {
                error(StatusCode::SERVICE_UNAVAILABLE, "budget store unavailable")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("workspace not found"),
            e => {
                tracing::warn!(error = %e, "budget API: store failure");
                ApiError::Unavailable
            }
        }
    }
}

enum Route<'a> {
    Budget(&'a str),
    Spend(&'a str),
    Workspace(&'a str),
    Workspaces,
    Heartbeat,
    Register,
}

fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let (route, allow) = match segments.as_slice() {
        ["workspaces", id, "budget"] => (Route::Budget(id), "GET, PATCH"),
        ["workspaces", id, "spend"] => (Route::Spend(id), "GET"),
        ["workspaces", id] => (Route::Workspace(id), "DELETE"),
        ["workspaces"] => (Route::Workspaces, "GET"),
        ["registry", "heartbeat"] => (Route::Heartbeat, "POST"),
        ["registry", "register"] => (Route::Register, "POST"),
        _ => return Err(ApiError::NotFound("not found")),
    };
    let allowed = match &route {
        Route::Budget(_) => method == Method::GET || method == Method::PATCH,
        Route::Workspace(_) => method == Method::DELETE,
        Route::Workspaces | Route::Spend(_) => method == Method::GET,
        Route::Heartbeat | Route::Register => method == Method::POST,
    };
    if allowed {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

impl Inner {
    async fn handle<B>(&self, request: Request<B>) -> Result<Response<Bytes>, ApiError>
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        let route = route(&parts.method, parts.uri.path())?;
        let token = auth::bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let principal = self
            .bounded(self.auth.authenticate(token))
            .await??
            .ok_or(ApiError::Forbidden("unknown token"))?;
        let store = &*self.store;
        match route {
            Route::Budget(id) if parts.method == Method::GET => {
                let id = workspace_in_path(id)?;
                self.bounded(budget::get(store, &principal, id)).await?
            }
            Route::Budget(id) => {
                let id = workspace_in_path(id)?;
                let body = read_json(body).await?;
                budget::patch(store, &principal, id, &body).await
            }
            Route::Spend(id) => {
                let id = workspace_in_path(id)?;
                self.bounded(history::get(store, &principal, id, parts.uri.query()))
                    .await?
            }
            Route::Workspace(id) => {
                let id = workspace_in_path(id)?;
                budget::remove(store, &principal, id).await
            }
            Route::Workspaces => {
                self.bounded(budget::list(store, &principal, parts.uri.query()))
                    .await?
            }
            Route::Heartbeat => {
                let body = read_bytes(body).await?;
                heartbeat::record(store, &principal, &body).await
            }
            Route::Register => {
                let body = read_json(body).await?;
                heartbeat::register(store, &principal, &body).await
            }
        }
    }

    /// `work` within the store timeout; after it, 503.
    async fn bounded<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
        tokio::time::timeout(self.store_timeout, work)
            .await
            .map_err(|_| {
                tracing::warn!(timeout = ?self.store_timeout, "budget API: store did not answer in time");
                ApiError::Unavailable
            })
    }
}

/// A workspace id from the path, a query or a body field (`what` names it in the message).
pub(crate) fn workspace_id(raw: &str, what: &str) -> Result<WorkspaceId, ApiError> {
    WorkspaceId::new(raw).map_err(|e| ApiError::bad(format!("invalid {what}: {e}")))
}

pub(crate) fn workspace_in_path(raw: &str) -> Result<WorkspaceId, ApiError> {
    workspace_id(raw, "workspace id")
}

/// The caller may act for `workspace` (its own token, or the admin's): else 403.
pub(crate) fn require_acting_for(
    principal: &Principal,
    workspace: &WorkspaceId,
) -> Result<(), ApiError> {
    if principal.may_act_for(workspace) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this token may not act for that workspace",
        ))
    }
}

/// The caller is the admin: else 403.
pub(crate) fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin token required"))
    }
}

/// Reads at most [`MAX_BODY_BYTES`]; a longer body is 413. (A declared length is not trusted
/// either way: the limit is applied to what arrives, and the client has usually finished
/// sending by then, so it reads the 413 rather than a reset connection.)
async fn read_bytes<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect());
    match read.await.map_err(|_| ApiError::BodyTimeout)? {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(e) => Err(ApiError::bad(format!("could not read the body: {e}"))),
    }
}

async fn read_json<B>(body: B) -> Result<serde_json::Value, ApiError>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = read_bytes(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("invalid JSON: {e}")))
}

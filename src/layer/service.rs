//! The service the layer makes: resolves the workspace, answers from the cache when it can,
//! else hands the request and the check to the response future.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::body::ResponseBody;
use super::check::Checker;
use super::future::ResponseFuture;
use crate::WorkspaceId;

/// The service [`BudgetLayer`](super::BudgetLayer) produces: checks the request's workspace,
/// then calls the inner service or answers itself (402, 503, 400).
#[derive(Clone)]
pub struct BudgetService<S> {
    inner: S,
    checker: Arc<Checker>,
}

impl<S> BudgetService<S> {
    pub(crate) fn new(inner: S, checker: Arc<Checker>) -> Self {
        BudgetService { inner, checker }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for BudgetService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for BudgetService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let exempt = self.checker.exempt.as_ref().is_some_and(|e| e(&parts));
        let workspace = if exempt {
            None
        } else {
            self.checker
                .resolver
                .resolve(&parts)
                .map(|raw| WorkspaceId::new(&raw))
        };
        match workspace {
            None => ResponseFuture::pass(self.inner.call(Request::from_parts(parts, body))),
            Some(Err(e)) => ResponseFuture::respond(crate::response::error(
                StatusCode::BAD_REQUEST,
                format!("invalid workspace id: {e}"),
            )),
            Some(Ok(workspace)) => match self.checker.decide_from_cache(workspace) {
                // A cached answer: call the ready inner service right away.
                Ok((decision, headers)) => {
                    parts.extensions.insert(decision);
                    let future = self.inner.call(Request::from_parts(parts, body));
                    ResponseFuture::allowed(future, headers)
                }
                Err(workspace) => {
                    // The inner service was made ready by poll_ready: take that one into the
                    // future and keep a fresh clone here (tower's "be careful when cloning inner
                    // services").
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    let check = Box::pin(self.checker.clone().decide(workspace));
                    let request = Request::from_parts(parts, body);
                    ResponseFuture::check(check, ready, request, self.checker.clone())
                }
            },
        }
    }
}

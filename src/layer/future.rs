use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::decision::{insert_budget_headers, payment_required, BudgetDecision};
use super::layer::Shared;

pin_project! {
    /// Response future of [`BudgetService`](super::BudgetService).
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Checking {
            check: BoxFuture<'static, BudgetDecision>,
            inner: Option<S>,
            request: Option<Request<ReqB>>,
            shared: Arc<Shared>,
        },
        Calling {
            #[pin]
            future: S::Future,
            decision: Option<BudgetDecision>,
            headers: bool,
        },
        Responding {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    pub(crate) fn pass(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                decision: None,
                headers: false,
            },
        }
    }

    pub(crate) fn allowed(future: S::Future, decision: BudgetDecision, headers: bool) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                decision: Some(decision),
                headers,
            },
        }
    }

    pub(crate) fn respond(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Responding {
                response: Some(response),
            },
        }
    }

    pub(crate) fn check(
        check: BoxFuture<'static, BudgetDecision>,
        inner: S,
        request: Request<ReqB>,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Checking {
                check,
                inner: Some(inner),
                request: Some(request),
                shared,
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    inner,
                    request,
                    shared,
                } => {
                    let decision = ready!(check.as_mut().poll(cx));
                    if !decision.is_allowed() {
                        let mut response = match &decision {
                            BudgetDecision::Blocked(blocked) => payment_required(blocked),
                            _ => crate::response::error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "budget check unavailable",
                            ),
                        };
                        response.extensions_mut().insert(decision);
                        this.state.set(State::Responding {
                            response: Some(response),
                        });
                        continue;
                    }
                    let (mut inner, request) = match (inner.take(), request.take()) {
                        (Some(i), Some(r)) => (i, r),
                        _ => unreachable!("the check completes once"),
                    };
                    let headers = shared.budget_headers;
                    let future = inner.call(request);
                    this.state.set(State::Calling {
                        future,
                        decision: Some(decision),
                        headers,
                    });
                }
                StateProj::Calling {
                    future,
                    decision,
                    headers,
                } => {
                    let mut response = ready!(future.poll(cx))?.map(ResponseBody::inner);
                    if let Some(decision) = decision.take() {
                        if let (true, BudgetDecision::Allowed { status, .. }) =
                            (*headers, &decision)
                        {
                            insert_budget_headers(status, response.headers_mut());
                        }
                        response.extensions_mut().insert(decision);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Responding { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}

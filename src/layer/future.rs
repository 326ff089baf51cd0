//! The response future: waits for the check, then calls the inner service or answers itself
//! (402, 503); adds the budget headers to allowed responses.

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
use super::check::Checker;
use super::decision::{insert_budget_headers, payment_required, BudgetDecision, HeaderValues};

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
        // Boxed: a cache miss waits for the store anyway, and the future every request carries
        // stays small.
        Checking {
            checking: Box<Checking<S, ReqB>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            // The budget headers, when they are on.
            headers: HeaderValues,
        },
        Responding {
            response: Option<Response<Bytes>>,
        },
    }
}

struct Checking<S, ReqB> {
    check: BoxFuture<'static, BudgetDecision>,
    inner: Option<S>,
    request: Option<Request<ReqB>>,
    checker: Arc<Checker>,
}

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    pub(crate) fn pass(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                headers: None,
            },
        }
    }

    pub(crate) fn allowed(future: S::Future, headers: HeaderValues) -> Self {
        ResponseFuture {
            state: State::Calling { future, headers },
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
        checker: Arc<Checker>,
    ) -> Self {
        ResponseFuture {
            state: State::Checking {
                checking: Box::new(Checking {
                    check,
                    inner: Some(inner),
                    request: Some(request),
                    checker,
                }),
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
                StateProj::Checking { checking } => {
                    let Checking {
                        check,
                        inner,
                        request,
                        checker,
                    } = &mut **checking;
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
                    let (mut inner, mut request) = match (inner.take(), request.take()) {
                        (Some(i), Some(r)) => (i, r),
                        _ => unreachable!("the check completes once"),
                    };
                    let headers = checker.headers_for(&decision);
                    request.extensions_mut().insert(decision);
                    let future = inner.call(request);
                    this.state.set(State::Calling { future, headers });
                }
                StateProj::Calling { future, headers } => {
                    let mut response = ready!(future.poll(cx))?.map(ResponseBody::inner);
                    insert_budget_headers(headers.take(), response.headers_mut());
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

//! The response body: the inner service's, or a small JSON body of the layer's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response from [`BudgetService`](super::BudgetService): the inner
    /// service's body, streamed untouched, or the layer's own JSON (402, 503, 400), which needs
    /// nothing from `B`.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Body { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            inner: Inner::Body { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full { data: Some(data) },
        }
    }
}

impl<B: From<Bytes>> ResponseBody<B> {
    /// The body as the inner service's own body type, for body types that can hold the layer's
    /// bytes (axum's `Body`, `Full<Bytes>`, …). A framework that would otherwise box the
    /// `ResponseBody` around an already boxed body then keeps one box, not two:
    ///
    /// ```
    /// use axum::body::Body;
    /// use tower::ServiceBuilder;
    /// use tower_budget::layer::{BudgetLayer, ResponseBody};
    /// use tower_budget::store::MemoryStore;
    ///
    /// let service = ServiceBuilder::new()
    ///     .map_response(|r: http::Response<ResponseBody<Body>>| r.map(ResponseBody::into_body))
    ///     .layer(BudgetLayer::new(MemoryStore::new()))
    ///     .service_fn(|_req: http::Request<Body>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("agent answer")))
    ///     });
    /// # drop(service);
    /// ```
    pub fn into_body(self) -> B {
        match self.inner {
            Inner::Body { body } => body,
            Inner::Full { data } => B::from(data.unwrap_or_default()),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Body { body } => f.debug_tuple("ResponseBody::Inner").field(body).finish(),
            Inner::Full { data } => f.debug_tuple("ResponseBody::Full").field(data).finish(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Body { body } => body.poll_frame(cx),
            InnerProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Body { body } => body.is_end_stream(),
            Inner::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Body { body } => body.size_hint(),
            Inner::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

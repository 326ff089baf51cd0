//! JSON responses, in one place for the layer and the API.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::{json, Value};

/// A response with `body` serialised as JSON.
pub(crate) fn json(status: StatusCode, body: &Value) -> Response<Bytes> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut res = Response::new(bytes);
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Bytes> {
    json(status, &json!({ "error": message.to_string() }))
}

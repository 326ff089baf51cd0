//! The reverse proxy: `/workspaces/{id}/a2a[/{rest}]` → the workspace's registered agent URL.
//! Bodies stream both ways; hop-by-hop headers are dropped; agent cards are rewritten.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_budget::layer::BudgetDecision;
use tower_budget::store::{Registry, StoreError};
use tower_budget::WorkspaceId;

use crate::agents::{self, strip_hop_by_hop, Agents, Error as AgentError};
use crate::card;
use crate::coarse_timer::CoarseTimer;

/// Largest agent card the gateway rewrites.
const MAX_CARD_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Registry>,
    agents: Arc<Agents>,
    public_url: String,
    timeout: Duration,
    /// Times `timeout`: never early, late by about a twentieth of it at most (10 ms to 1 s).
    timer: CoarseTimer,
    /// The longest a registration lookup may take (the budget check's timeout).
    lookup_timeout: Duration,
    warn: WarnEvery,
    /// For agent URLs the proxy cannot use.
    url_warn: WarnEvery,
    /// `gateway_registry_fallbacks_total{outcome="last_known"|"unavailable"}`, resolved once.
    fallbacks: [metrics::Counter; 2],
}

/// When the request reached the gateway (set by its outermost middleware): the registration
/// lookup shares the check timeout that starts then.
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub std::time::Instant);

/// At most one warning per interval.
#[derive(Default)]
struct WarnEvery {
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl WarnEvery {
    fn due(&self) -> bool {
        let now = std::time::Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|n| now < n) {
            return false;
        }
        *next = Some(now + Duration::from_secs(10));
        true
    }
}

impl Proxy {
    /// Proxies to the agents registered in `store` (lookups go through its cache), waiting at
    /// most `timeout` for an agent's response headers and `lookup_timeout` for the store.
    pub fn new(
        store: Arc<dyn Registry>,
        public_url: String,
        timeout: Duration,
        lookup_timeout: Duration,
    ) -> Self {
        let agents = Agents::new(timeout.min(Duration::from_secs(10)));
        Proxy {
            inner: Arc::new(Inner {
                store,
                agents,
                public_url,
                timeout,
                timer: CoarseTimer::new(
                    (timeout / 20).clamp(Duration::from_millis(10), Duration::from_secs(1)),
                ),
                lookup_timeout,
                warn: WarnEvery::default(),
                url_warn: WarnEvery::default(),
                fallbacks: ["last_known", "unavailable"]
                    .map(|o| metrics::counter!("gateway_registry_fallbacks_total", "outcome" => o)),
            }),
        }
    }
}

/// Why a path below `/workspaces/{id}/a2a` could leave the agent's registered path, if it could:
/// a `.` or `..` segment, an encoded slash, a backslash or a NUL — raw or percent-encoded once or
/// twice, in any case, and before a `;` (servlet containers read `..;x` as `..`). Such a request is
/// refused, not forwarded.
pub fn steering(suffix: &str) -> Option<&'static str> {
    // The common path has none of the bytes any of these forms needs: no work, no allocation.
    if !suffix
        .bytes()
        .any(|b| matches!(b, b'.' | b'%' | b'\\' | b';' | 0))
    {
        return None;
    }
    for segment in suffix.split('/') {
        let mut decoded = segment.as_bytes().to_vec();
        for depth in 0..3 {
            if depth > 0 {
                decoded = percent_decode(&decoded);
            }
            let base = decoded.split(|b| *b == b';').next().unwrap_or_default();
            if base == b"." || base == b".." {
                return Some("dot segments are not allowed in the path");
            }
            if depth > 0 && decoded.contains(&b'/') {
                return Some("encoded slashes are not allowed in the path");
            }
            if decoded.contains(&b'\\') {
                return Some("backslashes are not allowed in the path");
            }
            if decoded.contains(&0) {
                return Some("NUL bytes are not allowed in the path");
            }
        }
    }
    None
}

/// One level of percent-decoding; malformed escapes stay as they are.
pub fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// The workspace id and the path below `/workspaces/{id}/a2a`, for a proxied path.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/workspaces/")?;
    // A byte loop rather than `split_once`, which sets up a `memchr` for a few bytes.
    let slash = rest.bytes().position(|b| b == b'/')?;
    let (id, rest) = (&rest[..slash], &rest[slash + 1..]);
    let suffix = rest.strip_prefix("a2a")?;
    (suffix.is_empty() || suffix.starts_with('/')).then_some((id, suffix))
}

/// A GET or HEAD of an agent card: exempt from the budget check, so discovery keeps working.
pub fn is_card_request(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && split_path(path).is_some_and(|(_, suffix)| card::is_card_path(suffix))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut res = Response::new(Body::from(json!({ "error": message }).to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.forward(request).await) })
    }
}

impl Inner {
    async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let Some((id, suffix)) = split_path(parts.uri.path()) else {
            return error(StatusCode::NOT_FOUND, "not found");
        };
        let Ok(workspace) = WorkspaceId::new(id) else {
            return error(StatusCode::BAD_REQUEST, "invalid workspace id");
        };
        if let Some(why) = steering(suffix) {
            return error(StatusCode::BAD_REQUEST, why);
        }
        // The lookup shares the check's budget: it may wait until the check timeout after the
        // request arrived, and not at all when the check just found the store unable to answer.
        let store_down = matches!(
            parts.extensions.get::<BudgetDecision>(),
            Some(BudgetDecision::Unavailable { .. })
        );
        let arrived = parts
            .extensions
            .get::<Arrived>()
            .map_or_else(tokio::time::Instant::now, |a| a.0.into());
        let deadline = (!store_down).then_some(arrived + self.lookup_timeout);
        let agent_url = match self.agent_url(&workspace, deadline).await {
            Ok(url) => url,
            Err(response) => return response,
        };
        // A card asked for under another spelling (`agent%2Dcard.json`, `.WELL-KNOWN/…`,
        // `…json;x`) is a card too: an agent's router may decode or case-fold the path and serve
        // it, so it is fetched under its one spelling and rewritten like any other.
        let card_path = card::canonical_card_path(suffix);
        let is_card = card_path.is_some();
        let suffix = card_path.unwrap_or(suffix);
        let Some((host, base)) = agents::split_url(&agent_url) else {
            return self.unusable(&workspace, &agent_url);
        };
        // The agent's path, the path below `/a2a` and the client's query (both parsed by the
        // server and checked above; `Target::new` checks the whole again).
        let query = parts.uri.query();
        let mut path =
            String::with_capacity(base.len() + suffix.len() + query.map_or(0, str::len) + 2);
        if suffix.is_empty() {
            path.push_str(base);
        } else {
            path.push_str(base.trim_end_matches('/'));
            path.push_str(suffix);
        }
        if path.is_empty() {
            path.push('/');
        }
        if let Some(q) = query {
            path.push('?');
            path.push_str(q);
        }
        strip_hop_by_hop(&mut parts.headers);
        // The client's Host is not passed on: the request head gets the agent's
        // (`wire::write_request_head`, which skips the field).
        if is_card {
            // The card is rewritten, so it must arrive whole and uncompressed; a HEAD is sent as
            // a GET so that its headers describe the rewritten card.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            for conditional in [
                header::RANGE,
                header::IF_RANGE,
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
            ] {
                parts.headers.remove(conditional);
            }
            if parts.method == Method::HEAD {
                parts.method = Method::GET;
            }
        }
        let Some(to) = agents::Target::new(host, &path) else {
            return self.unusable(&workspace, &agent_url);
        };
        let mut sending = std::pin::pin!(self.agents.send(to, &parts.method, &parts.headers, body));
        let mut timeout = self.timer.sleep_for(self.timeout);
        let answer = std::future::poll_fn(|cx| match sending.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(Some(answer)),
            Poll::Pending => std::pin::Pin::new(&mut timeout).poll(cx).map(|()| None),
        })
        .await;
        drop(timeout); // its slot back now, not after a card is read
        let response = match answer {
            None => return error(StatusCode::GATEWAY_TIMEOUT, "agent did not answer in time"),
            Some(Err(e)) => {
                tracing::debug!(%workspace, error = %e, "agent call failed");
                return match e {
                    AgentError::Malformed(_) => {
                        error(StatusCode::BAD_GATEWAY, "agent response malformed")
                    }
                    AgentError::RequestBody => {
                        error(StatusCode::BAD_REQUEST, "request body did not arrive whole")
                    }
                    _ => error(StatusCode::BAD_GATEWAY, "agent unreachable"),
                };
            }
            Some(Ok(r)) => r,
        };
        let (mut parts, body) = response.into_parts();
        // The agent client leaves hop-by-hop fields out of the heads it parses; this one scan of
        // the names present keeps that a promise of this function too.
        strip_hop_by_hop(&mut parts.headers);
        let root = || format!("{}/workspaces/{workspace}/a2a", self.public_url);
        // A redirect to the agent's own host would hand the client its address.
        if parts.headers.contains_key(header::LOCATION)
            || parts.headers.contains_key(header::CONTENT_LOCATION)
        {
            point_at_gateway(&mut parts.headers, &agent_url, &root());
        }
        if is_card {
            if parts.status == StatusCode::OK {
                let read = tokio::time::timeout(self.timeout, read_card(body)).await;
                return match read {
                    Ok(Ok(bytes)) => rewrite_card(parts, bytes, &agent_url, &root()),
                    Ok(Err(response)) => response,
                    Err(_) => error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "agent card not received in time",
                    ),
                };
            }
            if parts.status.is_redirection() {
                return error(StatusCode::BAD_GATEWAY, "agent card redirected");
            }
        }
        Response::from_parts(parts, body)
    }

    /// The answer for a registered agent URL the proxy cannot use (https://, or odd stored
    /// data): 502, and a warning (at most one per 10 s) that says which.
    fn unusable(&self, workspace: &WorkspaceId, agent_url: &str) -> Response<Body> {
        let https = agent_url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let why = if https {
            "agent URL is https://: the gateway reaches agents over plain http:// only"
        } else {
            "agent URL is not valid"
        };
        if self.url_warn.due() {
            // Not the URL itself: it may carry credentials.
            tracing::warn!(%workspace, "{why} (warnings held back for 10 s)");
        }
        error(StatusCode::BAD_GATEWAY, why)
    }

    /// The workspace's agent URL: from the store (through its cache) by `deadline`, else the last
    /// one it gave; a workspace never resolved here gets 503. Without a deadline (the store is
    /// down) no lookup is started: the last known URL or 503 at once.
    async fn agent_url(
        &self,
        workspace: &WorkspaceId,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<String, Response<Body>> {
        let failure = match deadline {
            None => "the budget check found the store down".to_owned(),
            Some(deadline) => {
                let answer = match self.store.registration_now(workspace) {
                    // Cached: no future, no timer.
                    Some(answer) => Ok(answer),
                    None => {
                        tokio::time::timeout_at(deadline, self.store.registration(workspace)).await
                    }
                };
                match answer {
                    Ok(Ok(registration)) => {
                        return registration.agent_url.ok_or_else(|| {
                            error(StatusCode::NOT_FOUND, "workspace has no registered agent")
                        });
                    }
                    Ok(Err(StoreError::NotFound)) => {
                        return Err(error(StatusCode::NOT_FOUND, "workspace not registered"));
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {:?}", self.lookup_timeout),
                }
            }
        };
        // The caching store keeps the last answer, and drops it with a register or DELETE
        // through it.
        let known = self
            .store
            .last_known_registration(workspace)
            .and_then(|r| r.agent_url);
        let used = known.is_some();
        let counter = if used {
            &self.fallbacks[0]
        } else {
            &self.fallbacks[1]
        };
        counter.increment(1);
        if self.warn.due() {
            tracing::warn!(%workspace, error = %failure, last_known_used = used, "registry lookup failed (warnings held back for 10 s)");
        }
        known.ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "registry unavailable"))
    }
}

/// `Location` and `Content-Location` values on the agent's origin, pointed at the gateway (the
/// same mapping as card URLs); other origins are left alone.
fn point_at_gateway(headers: &mut HeaderMap, agent_url: &str, gateway_root: &str) {
    const NAMES: [HeaderName; 2] = [header::LOCATION, header::CONTENT_LOCATION];
    if !NAMES.iter().any(|n| headers.contains_key(n)) {
        return;
    }
    let Ok(agent) = agent_url.parse::<Uri>() else {
        return;
    };
    let (Some(scheme), Some(host)) = (agent.scheme_str(), agent.host()) else {
        return;
    };
    let origin = format!(
        "{scheme}://{}",
        agent.authority().map_or("", |a| a.as_str())
    );
    for name in NAMES {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let absolute = if let Some(rest) = value.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if value.starts_with('/') {
            format!("{origin}{value}")
        } else {
            value.to_owned()
        };
        let Ok(uri) = absolute.parse::<Uri>() else {
            continue;
        };
        // The agent's host, on any port or scheme, is the agent's address.
        if uri.host().is_some_and(|h| h.eq_ignore_ascii_case(host)) {
            // Spelled with the agent URL's own origin, so that the mapping below matches it.
            let absolute = format!(
                "{origin}{}",
                uri.path_and_query().map_or("/", |pq| pq.as_str())
            );
            let mapped = card::map_url(&absolute, agent_url, gateway_root);
            match HeaderValue::from_str(&mapped) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            }
        }
    }
}

async fn read_card(body: Body) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_CARD_BYTES).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::BAD_GATEWAY,
            "agent card unreadable or too large",
        )),
    }
}

fn rewrite_card(
    mut parts: http::response::Parts,
    bytes: Bytes,
    agent_url: &str,
    gateway_root: &str,
) -> Response<Body> {
    // A card passed on unrewritten would hand the client the agent's own address, and every
    // later call would skip the budget: what cannot be rewritten is not passed on.
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let parsed = serde_json::from_slice::<serde_json::Value>(text);
    let mut value = match parsed {
        Ok(value @ serde_json::Value::Object(_)) if !encoded => value,
        _ => return error(StatusCode::BAD_GATEWAY, "agent card unreadable"),
    };
    card::rewrite(&mut value, agent_url, gateway_root);
    let out = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    let etag = format!("\"{:x}\"", Sha256::digest(&out));
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, v);
    }
    parts.headers.remove(header::LAST_MODIFIED);
    Response::from_parts(parts, Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split_path("/workspaces/ws-1/a2a"), Some(("ws-1", "")));
        assert_eq!(split_path("/workspaces/ws-1/a2a/"), Some(("ws-1", "/")));
        assert_eq!(
            split_path("/workspaces/ws-1/a2a/x/y"),
            Some(("ws-1", "/x/y"))
        );
        assert_eq!(split_path("/workspaces/ws-1/a2ax"), None);
        assert_eq!(split_path("/workspaces/ws-1/budget"), None);
        assert!(is_card_request(
            &Method::GET,
            "/workspaces/w/a2a/.well-known/agent-card.json"
        ));
        assert!(is_card_request(
            &Method::HEAD,
            "/workspaces/w/a2a/.well-known/agent.json"
        ));
        assert!(!is_card_request(
            &Method::POST,
            "/workspaces/w/a2a/.well-known/agent-card.json"
        ));
        assert!(!is_card_request(&Method::GET, "/workspaces/w/a2a/other"));
    }

    #[test]
    fn steering_forms() {
        for bad in [
            "/..",
            "/.",
            "/a/../b",
            "/%2e%2E",
            "/.%2e",
            "/..;x",
            "/%2e%2e%3b",
            "/%252e%252e",
            "/a%2fb",
            "/a%252Fb",
            "/a\\b",
            "/a%5cb",
            "/a%255cb",
            "/a%00b",
            "/a%2500b",
        ] {
            assert!(steering(bad).is_some(), "{bad}");
        }
        for ok in [
            "", "/", "/a/b", "/a..b", "/...", "/a;b", "/%41", "/a%20b", "/%", "/%2",
        ] {
            assert!(steering(ok).is_none(), "{ok}");
        }
    }

    #[test]
    fn redirects_to_the_agent_point_at_the_gateway() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://Agent:9/base/x?q=1"),
        );
        h.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("https://elsewhere/y"),
        );
        point_at_gateway(&mut h, "http://agent:9/base", "https://gw/workspaces/w/a2a");
        assert_eq!(h[header::LOCATION], "https://gw/workspaces/w/a2a/x?q=1");
        assert_eq!(
            h[header::CONTENT_LOCATION],
            "https://elsewhere/y",
            "other origins stay"
        );
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("/other"));
        point_at_gateway(&mut h, "http://agent:9/base", "https://gw/workspaces/w/a2a");
        assert_eq!(
            h[header::LOCATION],
            "https://gw/workspaces/w/a2a",
            "outside the base: the root"
        );
    }
}

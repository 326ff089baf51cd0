//! Connections to agents: HTTP/1.1 keep-alive connections, pooled per serving thread.
//!
//! Each serving thread has its own [`Proxy`](crate::proxy::Proxy) and so its own pool: a request
//! and the agent connection it uses run on one thread, and the pool's lock is never contended.
//! A connection goes back to the pool when its response body has been read to the end (a body
//! dropped before then closes it: HTTP/1.1 cannot abandon a response half-read), and is taken
//! again by the next request to the same `host:port` — the most recently used first, so a
//! quiet pool keeps its few warm connections and lets the others age out. Idle connections are
//! closed after [`IDLE_TIMEOUT`] (a task of the thread's runtime sweeps every second); at most
//! [`MAX_IDLE_PER_AGENT`] wait per agent and [`MAX_IDLE`] per thread.
//!
//! Measured against hyper-util's pooled client, which this replaced (BENCHMARKS.md): that client
//! hashes the pool key with SipHash twice per request (checkout and return), races each
//! checkout against a connect, and spawns a task per response to wait for the connection to be
//! reusable.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per agent (`host:port`); nginx's `keepalive 64` is per worker too.
pub const MAX_IDLE_PER_AGENT: usize = 64;
/// Idle connections kept per thread, over all agents (the client connection cap leaves file
/// descriptors for them, `app::connection_cap`).
pub const MAX_IDLE: usize = 256;
/// How often idle connections past their timeout are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a request did not reach the agent.
#[derive(Debug)]
pub enum Error {
    /// The URL is not `http://host[:port]/…`.
    Url,
    /// Could not connect within the connect timeout (or at all).
    Connect(std::io::Error),
    /// The connection failed while sending or waiting for the response.
    Http(hyper::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Url => f.write_str("agent URL is not http://host[:port]/…"),
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// One thread's connections to agents.
pub struct Agents {
    idle: Mutex<Idle>,
    connect_timeout: Duration,
    /// `gateway_agent_connections_opened_total`: with keep-alive working it stays near the
    /// number of requests in flight at once, not the number of requests.
    opened: metrics::Counter,
}

#[derive(Default)]
struct Idle {
    by_agent: HashMap<Arc<str>, Agent, foldhash::fast::RandomState>,
    count: usize,
}

/// One agent's parked connections, least recently used first, and the map's key again (so that
/// a checkout hands the body its key without allocating).
struct Agent {
    key: Arc<str>,
    parked: Vec<Parked>,
}

struct Parked {
    send: SendRequest<Body>,
    since: Instant,
}

impl Agents {
    /// A pool whose connects wait at most `connect_timeout` in all. Within a Tokio runtime, a
    /// task of that runtime closes idle connections past [`IDLE_TIMEOUT`] every second (until
    /// the pool is dropped); without one, they are closed when the pool is next used.
    pub fn new(connect_timeout: Duration) -> Arc<Agents> {
        let agents = Arc::new(Agents {
            idle: Mutex::new(Idle::default()),
            connect_timeout,
            opened: metrics::counter!("gateway_agent_connections_opened_total"),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&agents);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                loop {
                    every.tick().await;
                    let Some(agents) = pool.upgrade() else { return };
                    agents.lock().sweep_all(Instant::now());
                }
            });
        }
        agents
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (its URI absolute, `http://host[:port]/path?query`) on an idle
    /// connection to its agent, or a new one. A request refused by an idle connection before it
    /// was written (the agent closed it meanwhile) is sent again on another.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, Error> {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        if parts.scheme.take() != Some(http::uri::Scheme::HTTP) {
            return Err(Error::Url);
        }
        let Some(authority) = parts.authority.take() else {
            return Err(Error::Url);
        };
        // Sent in origin form, with the agent's `host[:port]` as Host (never the URL's user
        // info), as a browser would.
        parts.path_and_query = parts
            .path_and_query
            .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::Url)?;
        let host = match authority.as_str().rsplit_once('@') {
            Some((_, host)) => host,
            None => authority.as_str(),
        };
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(host).map_err(|_| Error::Url)?,
        );
        loop {
            let (mut send, key, reused) = match self.checkout(host) {
                Some((send, key)) => (send, key, true),
                None => (self.connect(&authority).await?, Arc::from(host), false),
            };
            match send.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|body| {
                        Body::new(Pooled {
                            body,
                            back: Some((self.clone(), key, send)),
                        })
                    }))
                }
                Err(mut e) => match e.take_message() {
                    // Not written: an idle connection that closed or is not reusable yet.
                    Some(back) if reused => request = back,
                    _ => return Err(Error::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently parked open connection to `host` (`host[:port]`), with the pool's key.
    fn checkout(&self, host: &str) -> Option<(SendRequest<Body>, Arc<str>)> {
        let now = Instant::now();
        let mut idle = self.lock();
        let Idle {
            by_agent, count, ..
        } = &mut *idle;
        let agent = by_agent.get_mut(host)?;
        let mut found = None;
        // The most recent first. Closed and expired ones go; one that is open but not ready
        // yet (its request body still being sent after an early response) stays for later.
        let mut i = agent.parked.len();
        while i > 0 {
            i -= 1;
            let p = &agent.parked[i];
            if p.send.is_closed() || now >= p.since + IDLE_TIMEOUT {
                agent.parked.remove(i);
                *count -= 1;
            } else if p.send.is_ready() {
                found = Some((agent.parked.remove(i).send, agent.key.clone()));
                *count -= 1;
                break;
            }
        }
        if agent.parked.is_empty() {
            by_agent.remove(host);
        }
        found
    }

    async fn connect(&self, authority: &http::uri::Authority) -> Result<SendRequest<Body>, Error> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = self.connect_tcp(host, port).await?;
        stream.set_nodelay(true).map_err(Error::Connect)?;
        self.opened.increment(1);
        let (send, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "agent connection closed");
            }
        });
        Ok(send)
    }

    /// A TCP connection to one of `host`'s addresses, in the order the resolver gives them, each
    /// given an equal share of what is left of the connect timeout (an address that drops
    /// packets does not take the whole of it).
    async fn connect_tcp(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, Error> {
        let timed_out = || Error::Connect(std::io::ErrorKind::TimedOut.into());
        let deadline = Instant::now() + self.connect_timeout;
        let addresses: Vec<std::net::SocketAddr> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(Error::Connect)?
                .collect();
        let mut failure = Error::Connect(std::io::ErrorKind::NotFound.into());
        for (i, address) in addresses.iter().enumerate() {
            let share =
                deadline.saturating_duration_since(Instant::now()) / (addresses.len() - i) as u32;
            match tokio::time::timeout(share, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => failure = Error::Connect(e),
                Err(_) => failure = timed_out(),
            }
        }
        Err(failure)
    }

    /// Parks a connection whose response was read to the end.
    fn park(&self, key: Arc<str>, send: SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        if idle.count >= MAX_IDLE {
            idle.sweep_all(now);
            if idle.count >= MAX_IDLE {
                return; // dropped: it closes
            }
        }
        let Idle {
            by_agent, count, ..
        } = &mut *idle;
        let agent = by_agent.entry(key.clone()).or_insert_with(|| Agent {
            key,
            parked: Vec::new(),
        });
        if agent.parked.len() >= MAX_IDLE_PER_AGENT {
            agent.parked.remove(0); // the least recently used
        } else {
            *count += 1;
        }
        agent.parked.push(Parked { send, since: now });
    }
}

impl Idle {
    /// Closes what idled past its timeout or was closed by the agent.
    fn sweep_all(&mut self, now: Instant) {
        self.by_agent.retain(|_, agent| {
            agent
                .parked
                .retain(|p| !p.send.is_closed() && now < p.since + IDLE_TIMEOUT);
            !agent.parked.is_empty()
        });
        self.count = self.by_agent.values().map(|a| a.parked.len()).sum();
    }
}

/// A response body that parks its connection when read to the end.
struct Pooled {
    body: Incoming,
    back: Option<(Arc<Agents>, Arc<str>, SendRequest<Body>)>,
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            // The end, or the last frame: the connection can take the next request.
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            // An error: the connection is not reused (dropped with this body).
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    /// A body with nothing in it (a HEAD's, a 204's, a `Content-Length: 0` one) is complete
    /// before anyone polls it, and servers drop such bodies unpolled: its connection is
    /// reusable all the same.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Pooled {
    fn release(&mut self) {
        if let Some((agents, key, send)) = self.back.take() {
            agents.park(key, send);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent that answers each request on a connection with an empty 200, and says when a
    /// connection it accepted was closed by the other side.
    async fn agent() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (closed, closures) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = closed.send(());
                                return;
                            }
                            Ok(_) => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (url, closures)
    }

    async fn get(agents: &Arc<Agents>, url: &str) {
        let request = Request::get(url).body(Body::empty()).unwrap();
        let response = agents.send(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        drop(response); // empty: the connection goes back to the pool
    }

    /// A connection idle past the timeout is closed by the sweep, with no request to notice it.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_the_timeout() {
        let (url, mut closures) = agent().await;
        let agents = Agents::new(Duration::from_secs(1));
        get(&agents, &url).await;
        get(&agents, &url).await;
        assert_eq!(agents.lock().count, 1, "one connection, reused and parked");
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert_eq!(agents.lock().count, 1, "not yet");
        tokio::time::advance(Duration::from_secs(3)).await;
        // The sweep runs on its interval; the agent sees the close.
        tokio::time::timeout(Duration::from_secs(5), closures.recv())
            .await
            .expect("the agent saw its connection closed")
            .unwrap();
        assert_eq!(agents.lock().count, 0);
    }
}

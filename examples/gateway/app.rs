//! The gateway's parts that do not depend on its flags: the store, and the router around the
//! proxied service.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_budget::api::{BudgetApi, BUDGET_PAGE};
use tower_budget::store::postgres::{
    migrate, ChangeListener, ListenOptions, ListenerState, PgStore, PoolOptions,
};
use tower_budget::store::{CachingStore, MemoryStore, Refresher, Store, DEFAULT_CACHE_TTL};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::coarse_timer::CoarseTimer;
use crate::proxy;

/// How long a client may take to send a request's headers before its connection is closed
/// (slow clients cannot hold connections open for ever).
/// Timed by each serving thread's [`CoarseTimer`]: never before, and about
/// [`HEADER_READ_TIMER_RESOLUTION`] after at most.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the header read timer looks at its clock and its timers.
const HEADER_READ_TIMER_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(1);
/// Most client connections open at once (fewer when the process may open fewer files); further
/// ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Default of `--cache-capacity`: workspaces held in the decision and registration caches.
pub const DEFAULT_CACHE_CAPACITY: usize = 250_000;

/// File descriptors kept for the database, logs and the like.
const RESERVED_FDS: usize = 256;

/// The connection cap for `threads` serving threads: [`MAX_CONNECTIONS`], or less where the soft
/// limit on open files would be reached first (accept would then fail, and so would connections
/// to agents and the database). Beyond [`RESERVED_FDS`] and the idle agent connections each
/// thread may keep, each client connection counts twice: its own descriptor and the agent
/// connection its request in flight holds (HTTP/1; an HTTP/2 client with many streams in flight
/// holds more — the known limit).
pub fn connection_cap(threads: usize) -> usize {
    let reserved = RESERVED_FDS + crate::agents::MAX_IDLE * threads.max(1);
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    match soft {
        Some(soft) => MAX_CONNECTIONS.min((soft.saturating_sub(reserved) / 2).max(16)),
        None => MAX_CONNECTIONS,
    }
}

/// The protocol a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// Prior knowledge: the connection opened with the HTTP/2 preface.
    Http2,
}

/// Which protocol the client speaks, once it has sent enough to tell (the first bytes differ
/// from the HTTP/2 preface, or all 24 of it are there); `None` at end of stream or on an error.
/// Peeked, not read: the connection's server reads the same bytes again.
async fn protocol(stream: &tokio::net::TcpStream) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if first[..n] != PREFACE[..n] => return Some(Protocol::Http1),
            Ok(n) if n == PREFACE.len() => return Some(Protocol::Http2),
            // Part of the preface: wait for the rest (peek returns at once while data is there),
            // backing off so that a client trickling bytes costs next to nothing.
            Ok(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(250));
            }
        }
    }
}

type Slot = tokio::sync::OwnedSemaphorePermit;

/// One thread's connections: each served on this thread's runtime with this thread's router
/// (and so its own connections to agents), finished gracefully at shutdown.
///
/// Each connection is served by HTTP/1 (`crate::http1`, which hands what it does not serve to
/// hyper's HTTP/1 server) or hyper's HTTP/2 server, chosen by what the client's first bytes
/// (peeked) say, rather than through `hyper_util`'s auto server, which reads them itself and
/// then reads every request of the connection through a rewinding wrapper.
struct Connections<S> {
    router: S,
    /// Times HTTP/1 header reads, here and in hyper's server.
    timer: CoarseTimer,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    drain: Arc<Drain>,
}

/// A thread's open connections, and what tells them to finish at shutdown: each connection
/// registers its task's waker once and looks at a flag when it is polled; shutdown sets the flag
/// and wakes them all once. (hyper_util's `GracefulShutdown`, used before, has every connection
/// poll a channel receiver each time it is polled: ~450 instructions per proxied request.)
#[derive(Default)]
struct Drain {
    /// Set under the state's lock, so that a waker registered without seeing it is woken.
    draining: std::sync::atomic::AtomicBool,
    state: std::sync::Mutex<DrainState>,
    /// Notified when the last connection closes while draining.
    idle: tokio::sync::Notify,
}

#[derive(Default)]
struct DrainState {
    /// The open connections' tasks, to wake when draining starts (`None` for a free slot).
    wakers: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
    open: usize,
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, DrainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a connection as open until the returned guard is dropped.
    fn enter(self: &Arc<Self>) -> Open {
        let mut state = self.lock();
        state.open += 1;
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                state.wakers.push(None);
                state.wakers.len() - 1
            }
        };
        Open {
            drain: self.clone(),
            slot,
            registered: None,
        }
    }

    /// Tells every open connection to finish (the request in flight, then close) and waits
    /// until all have closed.
    async fn shutdown(&self) {
        let wakers: Vec<_> = {
            let mut state = self.lock();
            self.draining
                .store(true, std::sync::atomic::Ordering::SeqCst);
            state.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for waker in wakers {
            waker.wake();
        }
        loop {
            let mut idle = std::pin::pin!(self.idle.notified());
            idle.as_mut().enable();
            if self.lock().open == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One open connection, counted by its thread's [`Drain`].
pub struct Open {
    drain: Arc<Drain>,
    slot: usize,
    /// The waker last registered for this connection's task.
    registered: Option<std::task::Waker>,
}

impl Open {
    /// Whether the thread drains; otherwise `cx`'s waker is what draining will wake (registered
    /// once per task, as a task's waker stays the same).
    pub fn draining(&mut self, cx: &std::task::Context<'_>) -> bool {
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return self.drain.draining();
        }
        let mut state = self.drain.lock();
        // Under the lock that shutdown sets the flag under: either this waker is taken and
        // woken by it, or the flag is seen here.
        state.wakers[self.slot] = Some(cx.waker().clone());
        self.registered = Some(cx.waker().clone());
        self.drain.draining()
    }

    /// Whether the thread drains (without registering for it).
    pub fn is_draining(&self) -> bool {
        self.drain.draining()
    }

    /// `fut`'s output, or `None` as soon as the thread drains (`fut` is dropped then).
    async fn unless_drained<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if self.draining(cx) {
                return std::task::Poll::Ready(None);
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Drives `conn` to its end; once the thread drains, `graceful` is called on it, once —
    /// after its first poll, so that what the client sent before is read and answered (hyper
    /// closes a connection told before it read anything without an answer).
    pub async fn serve<C: std::future::Future>(
        &mut self,
        conn: C,
        graceful: impl Fn(std::pin::Pin<&mut C>),
    ) -> C::Output {
        let mut conn = std::pin::pin!(conn);
        let mut polled = false;
        let mut told = false;
        std::future::poll_fn(|cx| {
            if !told && self.draining(cx) {
                if !polled {
                    polled = true;
                    if let std::task::Poll::Ready(out) = conn.as_mut().poll(cx) {
                        return std::task::Poll::Ready(out);
                    }
                }
                told = true;
                graceful(conn.as_mut());
            }
            polled = true;
            conn.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let last = {
            let mut state = self.drain.lock();
            state.wakers[self.slot] = None;
            state.free.push(self.slot);
            state.open -= 1;
            state.open == 0
        };
        if last && self.drain.draining() {
            self.drain.idle.notify_waiters();
        }
    }
}

/// What a serving thread runs: the gateway's whole service (see [`router`]).
pub trait App:
    tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<Body>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

impl<S: App> Connections<S> {
    fn new(router: S) -> Connections<S> {
        use hyper_util::rt::{TokioExecutor, TokioTimer};
        let timer = CoarseTimer::new(HEADER_READ_TIMER_RESOLUTION);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(timer.clone())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // A peer that stops answering pings is dropped.
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(10));
        Connections {
            router,
            timer,
            http1,
            http2,
            drain: Arc::default(),
        }
    }

    /// Serves `stream` on a task of the current runtime; `slot` is held until it closes.
    fn serve(&self, stream: tokio::net::TcpStream, slot: Slot) {
        use hyper_util::rt::TokioIo;
        use tower::ServiceExt as _;
        let router = self.router.clone();
        let (timer, http1, http2) = (self.timer.clone(), self.http1.clone(), self.http2.clone());
        // Open from here: shutdown waits for a connection still telling its protocol too.
        let mut open = self.drain.enter();
        tokio::spawn(async move {
            // Telling HTTP/1 from HTTP/2 waits for the client's first bytes, with no timeout of
            // its own: a client that sends nothing is dropped after the header read timeout, or
            // at once when the thread drains.
            let detected = open
                .unless_drained(tokio::time::timeout(HEADER_READ_TIMEOUT, protocol(&stream)))
                .await;
            let Some(Ok(Some(protocol))) = detected else {
                return;
            };
            match protocol {
                Protocol::Http1 => {
                    crate::http1::serve(stream, router, &mut open, &timer, &http1).await;
                }
                Protocol::Http2 => {
                    let service =
                        hyper_util::service::TowerToHyperService::new(router.map_request(
                            |r: http::Request<hyper::body::Incoming>| r.map(Body::new),
                        ));
                    let conn = http2.serve_connection(TokioIo::new(stream), service);
                    let _ = open.serve(conn, |c| c.graceful_shutdown()).await;
                }
            }
            drop(open);
            drop(slot);
        });
    }
}

/// Serves on `listener` until `shutdown` completes, then lets open connections finish their
/// requests. HTTP/1 and HTTP/2, with a header read timeout and one connection cap for all.
///
/// Connections are spread over `threads` threads, each with its own single-threaded runtime
/// and its own router from `make_router` (the calling thread is the first): a connection's
/// requests are read, checked, forwarded to the agent and answered on one thread, so a request
/// wakes no other thread — on a small machine those wake-ups cost more than the proxying
/// (BENCHMARKS.md, "The gateway against nginx"). This task accepts and hands each connection
/// to the next thread in turn.
pub async fn serve_on_threads<S: App>(
    listener: tokio::net::TcpListener,
    make_router: Arc<dyn Fn() -> S + Send + Sync>,
    threads: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let cap = connection_cap(threads);
    tracing::debug!(cap, threads, "client connection cap");
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let here = Connections::new(make_router());
    let mut others = Vec::new();
    let mut finished = Vec::new();
    for i in 1..threads.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, Slot)>();
        let make_router = make_router.clone();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let connections = Connections::new(make_router());
                    // Ends when the accepting task drops the sender (shutdown).
                    while let Some((stream, slot)) = rx.recv().await {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => connections.serve(stream, slot),
                            Err(e) => tracing::warn!(error = %e, "cannot serve a connection"),
                        }
                    }
                    connections.drain.shutdown().await;
                    let _ = done.send(());
                });
            });
        match spawned {
            Ok(_) => {
                others.push(tx);
                finished.push(done_rx);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a serving thread; using fewer"),
        }
    }
    let mut next_warning = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut turn = 0usize;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    if Instant::now() >= next_warning {
                        tracing::warn!(error = %e, "accept failed (warnings held back for 10 s)");
                        next_warning = Instant::now() + std::time::Duration::from_secs(10);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        turn = (turn + 1) % (others.len() + 1);
        if turn == 0 {
            here.serve(stream, slot);
            continue;
        }
        // Handed over as a plain socket: the other thread registers it with its own runtime.
        match stream.into_std() {
            Ok(stream) => {
                if let Err(back) = others[turn - 1].send((stream, slot)) {
                    // That thread is gone (it panicked): serve here instead.
                    let (stream, slot) = back.0;
                    if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                        here.serve(stream, slot);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
        }
    }
    drop(listener);
    drop(others);
    here.drain.shutdown().await;
    // The other threads finish their connections too. Awaited, never joined: the caller bounds
    // this whole wait (the shutdown grace, a second signal), and when it stops waiting the
    // process exits with those threads, instead of blocking on them.
    for done in finished {
        let _ = done.await;
    }
}

/// The longest the migrations may take at start.
const MIGRATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The store every part of the gateway shares, and what keeps it in step with other replicas.
pub struct Backend {
    /// One caching store for the layer, the API and the proxy: decisions see writes at once.
    pub store: Arc<CachingStore<dyn Store>>,
    /// With PostgreSQL: the change listener (notifications from every replica's writes).
    pub listener: Option<ChangeListener>,
    /// Reads statuses in use again shortly before they expire, many at once (only while the
    /// TTL is long: with the listener connected, or a long `--cache-ttl-ms`). Held for its
    /// lifetime: dropping it stops the refresher.
    _refresher: Refresher,
}

impl Backend {
    /// What `/healthz` reports.
    pub fn health(&self) -> Health {
        Health(self.listener.as_ref().map(ChangeListener::state))
    }
}

/// `/healthz`'s detail: the store, and with PostgreSQL whether the change listener is connected.
#[derive(Clone, Debug)]
pub struct Health(Option<ListenerState>);

impl Health {
    fn json(&self) -> String {
        match &self.0 {
            None => r#"{"status":"ok","store":"memory"}"#.to_owned(),
            Some(state) => format!(
                r#"{{"status":"ok","store":"postgres","listener":"{}"}}"#,
                if state.is_connected() {
                    "connected"
                } else {
                    "disconnected"
                }
            ),
        }
    }
}

/// The Postgres store for `database_url` (migrated, with its change listener), else the
/// in-process store; behind one caching store. `cache_ttl` overrides the TTL: with PostgreSQL
/// the one used while the listener is connected (default 30 s; 1 s, or less, while it is not),
/// with the in-process store the only one (default 1 s).
pub async fn store(
    database_url: Option<&str>,
    cache_ttl: Option<std::time::Duration>,
    cache_capacity: usize,
) -> Result<Backend, Box<dyn std::error::Error>> {
    Ok(match database_url {
        Some(url) => {
            let options = PoolOptions::default();
            let pool = options.build(url)?;
            // Bounded like every other wait: a database that stops answering mid-migration
            // stops the start with an error instead of hanging it.
            tokio::time::timeout(MIGRATE_TIMEOUT, migrate(&pool))
                .await
                .map_err(|_| {
                    format!("database: migrations did not finish within {MIGRATE_TIMEOUT:?}")
                })?
                .map_err(|e| format!("database: {e}"))?;
            let raw: Arc<dyn Store> = Arc::new(PgStore::new(pool));
            let listen = match cache_ttl {
                Some(ttl) => ListenOptions::default().with_connected_ttl(ttl),
                None => ListenOptions::default(),
            };
            let store = Arc::new(CachingStore::new(
                raw,
                listen.disconnected_ttl,
                cache_capacity,
            ));
            let listener = ChangeListener::spawn(options.connect_config(url)?, &store, listen);
            tracing::info!("PostgreSQL store, migrations applied");
            Backend {
                _refresher: store.spawn_refresher(),
                store,
                listener: Some(listener),
            }
        }
        None => {
            tracing::info!("in-process store: budgets and spend live in memory and are lost on exit (use --database-url to keep them)");
            let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let store = Arc::new(CachingStore::new(
                raw,
                cache_ttl.unwrap_or(DEFAULT_CACHE_TTL),
                cache_capacity,
            ));
            Backend {
                _refresher: store.spawn_refresher(),
                store,
                listener: None,
            }
        }
    })
}

/// The gateway's routes around `proxied`, the service behind `/workspaces/{id}/a2a[/…]`
/// (the proxy wrapped in the budget layer; the load bench passes the bare proxy as its
/// baseline).
pub fn router<S>(
    proxied: S,
    api: BudgetApi,
    metrics: PrometheusHandle,
    health: Health,
) -> impl App + Sync
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let others = Router::new()
        .route(
            "/healthz",
            get(move || async move {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    health.json(),
                )
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/ui", get(|| async { Html(BUDGET_PAGE) }))
        .fallback_service(api);
    let routes = ProxyFirst { proxied, others };
    // Outermost first: `Authorization` is marked sensitive, so it never reaches a log line;
    // every request gets an id (`RequestIds`) — kept when the client sent a plain one — that
    // goes to the agent, back to the client and into the span; `Track`: the route's metrics and
    // a span per request, closed by a debug `response` event whatever the status (a 5xx is the
    // caller's business, not an error line here); a panic in any handler is a 500 JSON and the
    // process lives (`CatchPanic`; counted by `Track`, logged in the request's span, with its id).
    //
    // Around the router as one stack, not with `Router::layer`: that wraps every route in each
    // layer and boxes it again, and axum clones the matched route per request — 21 nested boxes
    // and 29 allocations per proxied request (BENCHMARKS.md, "The gateway against nginx").
    //
    // Served as it is, not as an axum `Router`'s fallback: a router at the top treats every
    // response as its own (a `Content-Length` added, a HEAD body emptied), and proxied
    // responses must pass as the agent sent them.
    tower::ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
        ]))
        .layer(tower::layer::layer_fn(RequestIds))
        .layer(tower::layer::layer_fn(Track))
        .layer(tower::layer::layer_fn(CatchPanic))
        .service(routes)
}

/// `/workspaces/{id}/a2a[/{rest}]` (a non-empty `id`) to `proxied`, the rest to `others`: the
/// proxy path skips axum's route matching, its path parameters (allocated and put into the
/// request's extensions, which the proxy does not read) and its boxed per-request route clone.
#[derive(Clone)]
struct ProxyFirst<S> {
    proxied: S,
    others: Router,
}

impl<S> tower::Service<Request<Body>> for ProxyFirst<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures_util::future::Either<S::Future, <Router as tower::Service<Request<Body>>>::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready (the proxy stack and axum's router).
        match self.proxied.poll_ready(cx) {
            std::task::Poll::Ready(Ok(())) => {
                tower::Service::<Request<Body>>::poll_ready(&mut self.others, cx)
            }
            other => other,
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if proxy::split_path(request.uri().path()).is_some_and(|(id, _)| !id.is_empty()) {
            futures_util::future::Either::Left(self.proxied.call(request))
        } else {
            futures_util::future::Either::Right(self.others.call(request))
        }
    }
}

/// The request id header.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Every request carries one `x-request-id`: the client's when it sent one plain value
/// (`[A-Za-z0-9._-]`, 1–64 bytes), else a fresh one ([`next_request_id`]) — so logs never carry
/// what a client chose to inject. It goes to the agent with the request, into the request's
/// span, and back to the client on the response (unless the response has one already).
///
/// One service instead of tower-http's `SetRequestId` and `PropagateRequestId` (and a
/// `map_request` for the check): those also put the id into the request's and the response's
/// extensions — a map allocated for each, which nothing here reads — and clone it twice more
/// (BENCHMARKS.md, "The gateway against nginx").
#[derive(Clone)]
struct RequestIds<S>(S);

impl<S, B, RB> tower::Service<Request<B>> for RequestIds<S>
where
    S: tower::Service<Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // One lookup of the field (a custom name is hashed byte by byte), then an insert in place.
        let id = match request.headers_mut().entry(X_REQUEST_ID) {
            http::header::Entry::Occupied(sent)
                if sent.iter().nth(1).is_none() && is_plain_request_id(sent.get()) =>
            {
                sent.get().clone()
            }
            // Several, or one that is not plain: all replaced by a fresh one.
            http::header::Entry::Occupied(mut sent) => {
                let id = next_request_id();
                sent.insert(id.clone());
                id
            }
            http::header::Entry::Vacant(none) => none.insert(next_request_id()).clone(),
        };
        WithRequestId {
            inner: self.0.call(request),
            id: Some(id),
        }
    }
}

fn is_plain_request_id(id: &http::HeaderValue) -> bool {
    (1..=64).contains(&id.len())
        && id
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pin_project_lite::pin_project! {
    struct WithRequestId<F> {
        #[pin]
        inner: F,
        id: Option<http::HeaderValue>,
    }
}

impl<F, RB, E> std::future::Future for WithRequestId<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<RB>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            // Unless the response has one already.
            response.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// One span per request (at debug level: `RUST_LOG=debug` or `RUST_LOG=gateway=debug` shows
/// them, each closed by a `response` event with status and latency), naming the request id
/// and, on the proxy routes, the workspace. Its fields are only looked at when it is enabled.
fn request_span(request: &Request<Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        workspace = proxy::split_path(request.uri().path()).map_or("", |(ws, _)| ws),
    )
}

/// Request ids: a random prefix per process and a counter — unique across replicas and restarts
/// in practice, and cheap.
fn next_request_id() -> http::HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed ^ std::process::id().rotate_left(16)
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Written into a stack buffer: `format!` would allocate a String only to copy it.
    let mut id = [0u8; 8 + 1 + 16];
    let mut len = 0;
    for (value, digits) in [(u64::from(*prefix), 8), (n, 0)] {
        if len > 0 {
            id[len] = b'-';
            len += 1;
        }
        let digits = digits
            .max((64 - value.leading_zeros() as usize).div_ceil(4))
            .max(1);
        for i in (0..digits).rev() {
            id[len] = b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize];
            len += 1;
        }
    }
    http::HeaderValue::from_bytes(&id[..len]).expect("hexadecimal digits and a dash")
}

/// A handler that panicked: 500 with the API's JSON error shape; the panic itself is logged.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked");
    let mut response = Response::new(Body::from(r#"{"error":"internal error"}"#));
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A panic in `call` or while its future runs becomes [`panic_response`]. Like tower-http's
/// `CatchPanic`, without its re-boxing of every response body into a body type of its own (which
/// the stack then boxed again into axum's): the response passes as it came.
#[derive(Clone)]
struct CatchPanic<S>(S);

impl<S> tower::Service<Request<Body>> for CatchPanic<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Caught<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => Caught::Running { future },
            Err(panic) => Caught::Panicked {
                response: Some(panic_response(panic)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = CaughtProj]
    enum Caught<F> {
        Running { #[pin] future: F },
        Panicked { response: Option<Response> },
    }
}

impl<F> std::future::Future for Caught<F>
where
    F: std::future::Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            CaughtProj::Running { future } => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => poll,
                    Err(panic) => std::task::Poll::Ready(Ok(panic_response(panic))),
                }
            }
            CaughtProj::Panicked { response } => std::task::Poll::Ready(Ok(response
                .take()
                .expect("a Caught future polled after it completed"))),
        }
    }
}

/// The route metrics and the access log around everything inside: the request's class (proxy,
/// ops, API), its status and duration, and the request's span ([`request_span`]), entered
/// while anything inside runs; it also stamps the request with its arrival time
/// ([`proxy::Arrived`]). A service of its own rather than `axum::middleware::from_fn`, which
/// clones and boxes the whole inner stack and boxes two futures per request, or tower-http's
/// `TraceLayer`, which cost ~2,000 instructions per proxied request (its response body wrapper
/// and callbacks) for a log that is off by default.
#[derive(Clone)]
struct Track<S>(S);

impl<S, R> tower::Service<Request<Body>> for Track<S>
where
    S: tower::Service<Request<Body>, Response = R, Error = Infallible>,
    R: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        request.extensions_mut().insert(proxy::Arrived(started));
        let path = request.uri().path();
        let route = if proxy::split_path(path).is_some() {
            Route::Proxy
        } else if matches!(path, "/healthz" | "/metrics" | "/ui") {
            Route::Ops
        } else {
            Route::Api
        };
        let span = request_span(&request);
        Tracked {
            inner: span.in_scope(|| self.0.call(request)),
            started,
            route,
            span,
        }
    }
}

pin_project_lite::pin_project! {
    struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Route,
        span: tracing::Span,
    }
}

impl<F, R> std::future::Future for Tracked<F>
where
    F: std::future::Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let response = response.into_response();
        let metrics = RouteMetrics::get(*this.route);
        metrics.requests(response.status()).increment(1);
        let took = this.started.elapsed();
        metrics.duration.record(took.as_secs_f64());
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            "response"
        );
        std::task::Poll::Ready(Ok(response))
    }
}

#[derive(Clone, Copy)]
enum Route {
    Proxy,
    Ops,
    Api,
}

impl Route {
    const ALL: [Route; 3] = [Route::Proxy, Route::Ops, Route::Api];

    fn label(self) -> &'static str {
        match self {
            Route::Proxy => "proxy",
            Route::Ops => "ops",
            Route::Api => "api",
        }
    }
}

/// A route class's metric handles, resolved once each: on the request path a metric is an
/// atomic add, not a registry lookup with allocated labels.
struct RouteMetrics {
    route: &'static str,
    duration: metrics::Histogram,
    /// `gateway_requests_total{route, status}`, by status code 100..=999.
    requests: [OnceLock<metrics::Counter>; 900],
}

impl RouteMetrics {
    fn get(route: Route) -> &'static RouteMetrics {
        static ALL: OnceLock<[RouteMetrics; 3]> = OnceLock::new();
        &ALL.get_or_init(|| {
            Route::ALL.map(|r| RouteMetrics {
                route: r.label(),
                duration: metrics::histogram!("gateway_request_duration_seconds", "route" => r.label()),
                requests: [const { OnceLock::new() }; 900],
            })
        })[route as usize]
    }

    fn requests(&self, status: http::StatusCode) -> &metrics::Counter {
        // `StatusCode` is always 100..=999.
        self.requests[usize::from(status.as_u16() - 100)].get_or_init(|| {
            metrics::counter!("gateway_requests_total", "route" => self.route, "status" => status.as_str().to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// HTTP/1 and HTTP/2 with prior knowledge are told apart by the first bytes, however
    /// they arrive; a request that merely starts like the preface is HTTP/1.
    #[tokio::test]
    async fn protocols_are_told_apart_by_the_first_bytes() {
        use tokio::io::AsyncWriteExt;
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (first, rest, expected) in [
            (&b"GET / HTTP/1.1\r\n"[..], &b""[..], Protocol::Http1),
            (PREFACE, b"", Protocol::Http2),
            (&PREFACE[..10], &PREFACE[10..], Protocol::Http2),
            (b"PRI", b" /x HTTP/1.1\r\n\r\n", Protocol::Http1),
            (b"P", b"OST / HTTP/1.1\r\n", Protocol::Http1),
        ] {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(first).await.unwrap();
            let told = tokio::spawn(async move { protocol(&server).await });
            client.write_all(rest).await.unwrap();
            let told = tokio::time::timeout(std::time::Duration::from_secs(5), told)
                .await
                .expect("told within the back-off")
                .unwrap();
            assert_eq!(told, Some(expected), "{first:?} {rest:?}");
        }
        // A client that closes having sent nothing.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(client);
        assert_eq!(protocol(&server).await, None);
    }

    /// Stands for a connection: pending until told to finish; then it wakes itself and ends
    /// at the poll after next (so that telling it twice would be seen).
    struct Conn {
        polls: usize,
        /// How many polls it had when told, per telling.
        told_at: Arc<std::sync::Mutex<Vec<usize>>>,
        left: Option<usize>,
    }

    impl Conn {
        fn new(told_at: &Arc<std::sync::Mutex<Vec<usize>>>) -> Conn {
            Conn {
                polls: 0,
                told_at: told_at.clone(),
                left: None,
            }
        }

        fn tell(mut self: std::pin::Pin<&mut Self>) {
            let polls = self.polls;
            self.told_at.lock().unwrap().push(polls);
            self.left = Some(2);
        }
    }

    impl std::future::Future for Conn {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            self.polls += 1;
            match self.left {
                Some(0) => std::task::Poll::Ready(()),
                Some(n) => {
                    self.left = Some(n - 1);
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
                None => std::task::Poll::Pending, // woken by nothing but the drain
            }
        }
    }

    /// Draining wakes every open connection and tells each once — one never polled only after
    /// its first poll, so that hyper reads what its client sent —, closes one still telling its
    /// protocol, and waits until all are closed; the slots are given back.
    #[tokio::test]
    async fn draining_tells_each_connection_once_and_waits_for_all() {
        async fn within<F: std::future::Future>(
            f: F,
        ) -> Result<F::Output, tokio::time::error::Elapsed> {
            tokio::time::timeout(std::time::Duration::from_secs(5), f).await
        }
        let drain = Arc::new(Drain::default());
        within(drain.shutdown())
            .await
            .expect("nothing open: at once");
        let drain = Arc::new(Drain::default());
        let told_at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let mut open = drain.enter();
            let conn = Conn::new(&told_at);
            tasks.push(tokio::spawn(
                async move { open.serve(conn, Conn::tell).await },
            ));
        }
        // One in protocol detection: it never finishes by itself.
        let mut detecting = drain.enter();
        let detection =
            tokio::spawn(
                async move { detecting.unless_drained(std::future::pending::<()>()).await },
            );
        // Let them all register before shutdown.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Open, but its task not polled before the shutdown starts.
        let mut late = drain.enter();
        let finished = tokio::spawn({
            let drain = drain.clone();
            async move { drain.shutdown().await }
        });
        for task in tasks {
            within(task).await.expect("woken by the drain").unwrap();
        }
        assert_eq!(
            within(detection)
                .await
                .expect("woken by the drain")
                .unwrap(),
            None,
            "detection stops at once"
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!finished.is_finished(), "one connection is still open");
        within(late.serve(Conn::new(&told_at), Conn::tell))
            .await
            .expect("ends");
        drop(late);
        within(finished)
            .await
            .expect("shutdown waits for every connection, and no longer")
            .unwrap();
        let mut told_at = told_at.lock().unwrap().clone();
        told_at.sort();
        assert_eq!(
            told_at,
            [1, 1, 1, 1],
            "each told once, after one poll (the late one's was its first)"
        );
        let state = drain.lock();
        assert_eq!((state.open, state.free.len()), (0, 5));
    }

    /// Request ids read `{prefix:08x}-{counter:x}`, the counter one more each time.
    #[test]
    fn request_ids_are_a_prefix_and_a_counter() {
        let ids: Vec<String> = (0..2)
            .map(|_| next_request_id().to_str().unwrap().to_owned())
            .collect();
        let parse = |id: &str| {
            let (prefix, n) = id.split_once('-').unwrap();
            assert_eq!(prefix.len(), 8, "{id}");
            assert!(!(n.is_empty() || n.len() > 1 && n.starts_with('0')), "{id}");
            (
                u32::from_str_radix(prefix, 16).unwrap(),
                u64::from_str_radix(n, 16).unwrap(),
            )
        };
        let (a, b) = (parse(&ids[0]), parse(&ids[1]));
        assert_eq!(a.0, b.0, "one prefix per process");
        assert!(b.1 > a.1, "{ids:?}");
        assert_eq!(
            ids[0],
            format!("{:08x}-{:x}", a.0, a.1),
            "spelled as format! would"
        );
    }

    /// A service that panics in `call` (not in its future) is a 500 JSON too.
    #[tokio::test]
    async fn a_panic_in_call_is_a_500_too() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let api = BudgetApi::new(
            store.clone(),
            tower_budget::api::TokenAuth::new("admin", store),
        );
        // Panics in `call` itself, before any future exists.
        let panicking = tower::service_fn(|request: Request<Body>| {
            assert!(
                request.uri().path().is_empty(),
                "a service whose call panics"
            );
            std::future::ready(Ok::<Response, Infallible>(Response::new(Body::empty())))
        });
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let app = router(panicking, api, metrics, Health(None));
        let request = Request::builder()
            .uri("/workspaces/ws-1/a2a")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
        let health = Request::builder()
            .uri("/healthz")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.oneshot(health).await.unwrap().status(),
            http::StatusCode::OK
        );
    }

    /// A panic in a handler is a 500 JSON; the router keeps serving; every response carries a
    /// request id, and one the client sent is kept.
    #[tokio::test]
    async fn a_panic_is_a_500_and_requests_carry_ids() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let api = BudgetApi::new(
            store.clone(),
            tower_budget::api::TokenAuth::new("admin", store),
        );
        let panicking = tower::service_fn(|request: Request<Body>| async move {
            assert!(request.uri().path().is_empty(), "a handler that panics");
            Ok::<Response, Infallible>(Response::new(Body::empty()))
        });
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let app = router(panicking, api, metrics, Health(None));
        let call = |uri: &str, id: Option<&str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(id) = id {
                request = request.header("x-request-id", id);
            }
            app.clone().oneshot(request.body(Body::empty()).unwrap())
        };
        let response = call("/workspaces/ws-1/a2a", None).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);

        let health = call("/healthz", None).await.unwrap();
        assert_eq!(health.status(), http::StatusCode::OK, "still serving");
        let first = health.headers()["x-request-id"].clone();
        let second = call("/healthz", None).await.unwrap().headers()["x-request-id"].clone();
        assert_ne!(first, second, "a fresh id per request");
        let kept = call("/healthz", Some("client-id-7")).await.unwrap();
        assert_eq!(kept.headers()["x-request-id"], "client-id-7");
        let replaced = call("/healthz", Some("x workspace=ws-9")).await.unwrap();
        assert_ne!(replaced.headers()["x-request-id"], "x workspace=ws-9");
    }

    /// `RequestIds` on its own: the id the inner service sees is the one the client gets back,
    /// a response that carries an id of its own keeps it, and a repeated or unplain id is
    /// replaced by one fresh id, never passed on beside it.
    #[tokio::test]
    async fn request_ids_are_looked_up_once_and_kept_on_the_response_that_has_one() {
        fn ids_in(headers: &http::HeaderMap) -> Vec<http::HeaderValue> {
            headers.get_all(X_REQUEST_ID).iter().cloned().collect()
        }
        let inner = tower::service_fn(|request: Request<Body>| async move {
            let seen = ids_in(request.headers());
            let mut response = Response::new(Body::empty());
            if request.uri().path() == "/own" {
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID, http::HeaderValue::from_static("agent-1"));
            }
            response.extensions_mut().insert(seen);
            Ok::<Response, Infallible>(response)
        });
        let call = |path: &str, ids: &[&str]| {
            let mut request = Request::builder().uri(path);
            for id in ids {
                request = request.header("x-request-id", *id);
            }
            RequestIds(inner).oneshot(request.body(Body::empty()).unwrap())
        };
        let seen = |r: &Response| {
            r.extensions()
                .get::<Vec<http::HeaderValue>>()
                .unwrap()
                .clone()
        };
        for ids in [
            &[][..],
            &["a b"],
            &["plain-1", "plain-2"],
            &["plain-1", "x\ty"],
        ] {
            let r = call("/", ids).await.unwrap();
            let sent = ids_in(r.headers());
            assert_eq!(sent.len(), 1, "{ids:?}");
            assert_eq!(
                seen(&r),
                sent,
                "{ids:?}: the inner service saw the id returned"
            );
            assert!(ids.iter().all(|id| sent[0] != *id), "{ids:?}: replaced");
            assert!(
                is_plain_request_id(&sent[0]),
                "{ids:?}: a fresh id is plain"
            );
        }
        let r = call("/", &["plain-1"]).await.unwrap();
        assert_eq!(r.headers()["x-request-id"], "plain-1");
        assert_eq!(seen(&r), ["plain-1"]);
        let r = call("/own", &["plain-1"]).await.unwrap();
        assert_eq!(
            ids_in(r.headers()),
            ["agent-1"],
            "the response's own id is kept, not doubled"
        );
        assert_eq!(
            seen(&r),
            ["plain-1"],
            "the inner service still got the client's"
        );
    }

    /// With debug logging on, each request has a span naming its id and workspace, and what
    /// is logged inside carries it, down to the closing `response` event; off, nothing is.
    #[tokio::test]
    async fn the_access_log_is_a_span_per_request() {
        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let api = BudgetApi::new(
            store.clone(),
            tower_budget::api::TokenAuth::new("admin", store),
        );
        let agent = tower::service_fn(|_request: Request<Body>| async move {
            tracing::warn!("inside the handler");
            Ok::<Response, Infallible>(Response::new(Body::empty()))
        });
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let app = router(agent, api, metrics, Health(None));
        let call = |app: &_| {
            let request = Request::builder()
                .uri("/workspaces/ws-4/a2a/x")
                .header("x-request-id", "id-42")
                .body(Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(Clone::clone(app), request)
        };
        for (level, logged) in [("debug", true), ("warn", false)] {
            let lines = Lines::default();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(level)
                .with_ansi(false)
                .with_writer({
                    let lines = lines.clone();
                    move || lines.clone()
                })
                .finish();
            let _default = tracing::subscriber::set_default(subscriber);
            call(&app).await.unwrap();
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            let span = "request{method=GET path=/workspaces/ws-4/a2a/x request_id=id-42 workspace=\"ws-4\"}";
            assert_eq!(
                text.contains(&format!("{span}: gateway::app::tests: inside the handler")),
                logged,
                "{level}: {text}"
            );
            assert_eq!(
                text.contains(&format!("{span}: gateway::app: response status=200")),
                logged,
                "{level}: {text}"
            );
            assert!(text.contains("inside the handler"), "{level}: {text}");
        }
    }
}

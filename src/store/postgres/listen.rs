//! The change listener: one connection per process that `LISTEN`s for the notification the
//! database sends when a workspace changes (migration V4), and keeps a [`CachingStore`] in step.
//!
//! Every write that can change a decision or an authorization — a limits PATCH, a heartbeat that
//! records spend, a registration or token rotation, a removal — fires a trigger on `workspaces`
//! that calls `pg_notify('tower_budget', '<kind>:<workspace id>')` in the writing transaction, so
//! the notification goes out only if the write commits. Each process drops that workspace's
//! cached entries when it arrives: every replica sees every write within milliseconds, and the
//! cache TTL can be long (30 s) without serving stale decisions.
//!
//! While the connection is down (the database restarted, the session was terminated, the
//! network broke) the listener cannot know what changed: the cache falls back to a short TTL
//! (1 s) and stops caching tokens, and the listener reconnects with backoff. After a reconnect it
//! drops the whole cache, since it may have missed notifications, then returns to the long TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::store::CachingStore;
use crate::WorkspaceId;

/// The channel the V4 trigger notifies on.
pub const CHANNEL: &str = "tower_budget";

/// The `application_name` of the listen connection (the pool's is `tower-budget`).
pub const LISTEN_APPLICATION_NAME: &str = "tower-budget-listen";

/// Default TTL while the listener is connected.
pub const DEFAULT_CONNECTED_TTL: Duration = Duration::from_secs(30);

/// Default TTL while it is not.
pub const DEFAULT_DISCONNECTED_TTL: Duration = Duration::from_secs(1);

/// Settings for [`ChangeListener::spawn`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The cache's TTL while notifications arrive (default 30 s).
    pub connected_ttl: Duration,
    /// The cache's TTL while the connection is down (default 1 s).
    pub disconnected_ttl: Duration,
    /// How often the idle connection is checked with `SELECT 1`, and how long that may take:
    /// a database that stopped answering without closing the socket is noticed within twice
    /// this (default 2 s).
    pub ping_every: Duration,
    /// Longest wait to connect and to `LISTEN` (default 5 s).
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts; the first is 100 ms, doubling (default 5 s).
    pub max_backoff: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            connected_ttl: DEFAULT_CONNECTED_TTL,
            disconnected_ttl: DEFAULT_DISCONNECTED_TTL,
            ping_every: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ListenOptions {
    /// Uses `ttl` while connected and the shorter of `ttl` and the default 1 s while not (a
    /// zero `ttl` turns the cache off either way).
    #[must_use]
    pub fn with_connected_ttl(mut self, ttl: Duration) -> Self {
        self.connected_ttl = ttl;
        self.disconnected_ttl = ttl.min(DEFAULT_DISCONNECTED_TTL);
        self
    }
}

/// Whether a listener is connected; cheap to clone, for health checks.
#[derive(Clone, Debug)]
pub struct ListenerState(Arc<AtomicBool>);

impl ListenerState {
    /// True while notifications arrive.
    pub fn is_connected(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Keeps a [`CachingStore`] in step with every process's writes to the same database. Dropping
/// it stops the listener and returns the cache to the short TTL.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tower_budget::store::postgres::{migrate, ChangeListener, ListenOptions, PgStore, PoolOptions};
/// use tower_budget::store::CachingStore;
///
/// let url = "postgres://budget@127.0.0.1/budget";
/// let options = PoolOptions::default();
/// let pool = options.build(url)?;
/// migrate(&pool).await?;
/// let cache = Arc::new(CachingStore::with_defaults(Arc::new(PgStore::new(pool))));
/// let listener = ChangeListener::spawn(options.connect_config(url)?, &cache, ListenOptions::default());
/// // Give `cache` to the layer and the API; keep `listener` alive as long as they serve.
/// # drop(listener);
/// # Ok(()) }
/// ```
///
/// Metrics: `tower_budget_listener_connected` (gauge, 1 or 0) and
/// `tower_budget_notifications_total` (counter).
pub struct ChangeListener {
    state: ListenerState,
    task: JoinHandle<()>,
    /// Returns the cache to the short TTL when the listener is dropped.
    on_stop: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl ChangeListener {
    /// Starts listening on a connection of its own made from `config` (outside any pool; its
    /// `application_name` is [`LISTEN_APPLICATION_NAME`]). The cache runs on the short TTL until
    /// the first `LISTEN` succeeds. Must be called within a Tokio runtime.
    pub fn spawn<S>(
        mut config: tokio_postgres::Config,
        cache: &Arc<CachingStore<S>>,
        options: ListenOptions,
    ) -> Self
    where
        S: ?Sized + Send + Sync + 'static,
    {
        config.application_name(LISTEN_APPLICATION_NAME);
        config.connect_timeout(options.connect_timeout);
        let state = ListenerState(Arc::new(AtomicBool::new(false)));
        disconnected(cache, &options, &state);
        let task = tokio::spawn(run(
            config,
            Arc::downgrade(cache),
            options.clone(),
            state.clone(),
        ));
        let weak = Arc::downgrade(cache);
        let on_stop = Box::new(move || {
            if let Some(cache) = weak.upgrade() {
                cache.set_token_caching(false);
                cache.set_ttl(options.disconnected_ttl);
            }
        });
        ChangeListener {
            state,
            task,
            on_stop,
        }
    }

    /// True while notifications arrive.
    pub fn is_connected(&self) -> bool {
        self.state.is_connected()
    }

    /// A handle on the connection state, for health checks.
    pub fn state(&self) -> ListenerState {
        self.state.clone()
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.task.abort();
        self.state.0.store(false, Ordering::Release);
        metrics::gauge!("tower_budget_listener_connected").set(0.0);
        (self.on_stop)();
    }
}

/// Why a session ended.
enum Ended {
    /// The cache is gone: nothing left to keep in step.
    CacheGone,
    /// The connection failed or stopped answering.
    Lost(String),
}

async fn run<S>(
    config: tokio_postgres::Config,
    cache: Weak<CachingStore<S>>,
    options: ListenOptions,
    state: ListenerState,
) where
    S: ?Sized + Send + Sync + 'static,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u64;
    loop {
        let started = tokio::time::Instant::now();
        match session(&config, &cache, &options, &state).await {
            Ended::CacheGone => return,
            Ended::Lost(error) => {
                let Some(strong) = cache.upgrade() else {
                    return;
                };
                let was_connected = state.is_connected();
                disconnected(&strong, &options, &state);
                drop(strong);
                if was_connected {
                    tracing::warn!(%error, ttl = ?options.disconnected_ttl, "change listener lost its connection; reconnecting (decisions cached for the short TTL meanwhile)");
                } else if attempt % 20 == 0 {
                    tracing::warn!(%error, attempts = attempt + 1, "change listener cannot connect; retrying");
                }
            }
        }
        // A session that lived a while starts the backoff over.
        if started.elapsed() > options.max_backoff * 2 {
            backoff = FIRST_BACKOFF;
        }
        attempt += 1;
        tokio::time::sleep(jittered(backoff, attempt)).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// `base` ± 20 %, so that many processes do not reconnect in step after a database restart.
fn jittered(base: Duration, attempt: u64) -> Duration {
    use std::hash::BuildHasher;
    let spread = foldhash::fast::RandomState::default().hash_one(attempt) % 41; // 0..=40
    base.mul_f64(0.8 + spread as f64 / 100.0)
}

fn disconnected<S: ?Sized>(
    cache: &CachingStore<S>,
    options: &ListenOptions,
    state: &ListenerState,
) {
    // Order: the short TTL before anything else reads the flag as "not connected".
    cache.set_token_caching(false);
    cache.set_ttl(options.disconnected_ttl);
    state.0.store(false, Ordering::Release);
    metrics::gauge!("tower_budget_listener_connected").set(0.0);
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection's life: connect, `LISTEN`, drop the cache, then apply notifications until the
/// connection fails or stops answering pings.
async fn session<S>(
    config: &tokio_postgres::Config,
    cache: &Weak<CachingStore<S>>,
    options: &ListenOptions,
    state: &ListenerState,
) -> Ended
where
    S: ?Sized + Send + Sync + 'static,
{
    let connect = tokio::time::timeout(
        options.connect_timeout,
        config.connect(tokio_postgres::NoTls),
    );
    let (client, mut connection) = match connect.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Ended::Lost(e.to_string()),
        Err(_) => {
            return Ended::Lost(format!(
                "no connection within {:?}",
                options.connect_timeout
            ))
        }
    };
    // The connection is driven by a task of its own, which also applies the notifications.
    let weak = cache.clone();
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let notifications = metrics::counter!("tower_budget_notifications_total");
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let Some(cache) = weak.upgrade() else {
                        return Ok(());
                    };
                    notifications.increment(1);
                    apply(&cache, n.payload());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the database closed the connection".to_owned())
    }));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = tokio::time::timeout(options.connect_timeout, client.batch_execute(&statement));
    match listen.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::Lost(e.to_string()),
        Err(_) => return Ended::Lost(format!("LISTEN took over {:?}", options.connect_timeout)),
    }
    // From here every commit is notified; what came before may have been missed.
    {
        let Some(cache) = cache.upgrade() else {
            return Ended::CacheGone;
        };
        cache.clear();
        cache.set_ttl(options.connected_ttl);
        cache.set_token_caching(true);
    }
    state.0.store(true, Ordering::Release);
    metrics::gauge!("tower_budget_listener_connected").set(1.0);
    tracing::info!(ttl = ?options.connected_ttl, "change listener connected: cache in step with every replica");
    let mut ping = tokio::time::interval(options.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            ended = &mut driver.0 => {
                return match ended {
                    Ok(Ok(())) => Ended::CacheGone,
                    Ok(Err(e)) => Ended::Lost(e),
                    Err(e) => Ended::Lost(e.to_string()),
                };
            }
            _ = ping.tick() => {
                if cache.strong_count() == 0 {
                    return Ended::CacheGone;
                }
                match tokio::time::timeout(options.ping_every, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Lost(e.to_string()),
                    Err(_) => return Ended::Lost(format!("no answer to a ping within {:?}", options.ping_every)),
                }
            }
        }
    }
}

/// One notification: `budget:<id>` drops the workspace's budget answers, `agent:<id>` (and any
/// kind this version does not know) everything cached for it.
fn apply<S: ?Sized>(cache: &CachingStore<S>, payload: &str) {
    let (kind, id) = payload.split_once(':').unwrap_or(("", payload));
    // An id the gateway would refuse is never cached.
    let Ok(workspace) = WorkspaceId::new(id) else {
        return;
    };
    match kind {
        "budget" => cache.invalidate_budget(&workspace),
        _ => cache.invalidate(&workspace),
    }
}

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

use chrono::{DateTime, Utc};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};

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

/// While connected, registrations are cached this many times the decision TTL (300 s by
/// default): they change rarely, every change is notified, and each expiry costs a lookup.
pub const CONNECTED_REGISTRATION_TTL_FACTOR: u32 = 10;

/// Settings for [`ChangeListener::spawn`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The cache's TTL while notifications arrive (default 30 s).
    pub connected_ttl: Duration,
    /// The cache's TTL while the connection is down (default 1 s).
    pub disconnected_ttl: Duration,
    /// How often the notification path is probed — a notification this listener sends itself
    /// and must receive, with a check that the trigger is still there and enabled — and how
    /// long the probe may take (default 2 s). One late probe returns the cache to the short TTL
    /// (the session is kept: nothing queued on it is lost); five in a row end the session.
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

/// Whether the `workspaces` table the connection's `search_path` finds has the V4 trigger,
/// enabled.
const TRIGGER_ENABLED: &str = "EXISTS (SELECT 1 FROM pg_trigger
    WHERE tgname = 'tower_budget_notify_change' AND tgrelid = to_regclass('workspaces')
      AND tgenabled IN ('O', 'A'))";

static TRIGGER_AND_PID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {TRIGGER_ENABLED}, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
});

/// Ends the session this listener had before, if the server still has it (a half-open socket
/// keeps it, and a listening session that nobody reads holds back the notification queue). By
/// pid *and* start time and name, so a reused pid is never someone else's session.
const TERMINATE_PREVIOUS: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE pid = $1 AND backend_start = $2 AND application_name = 'tower-budget-listen'
      AND pid <> pg_backend_pid()";

/// A probe: the trigger is still there, and a notification of our own goes out (`$1`).
static PROBE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {TRIGGER_ENABLED}, pg_notify('{CHANNEL}', $1) IS NULL")
});

/// A TLS connector the listener can use from its own task (for instance
/// `postgres-native-tls`' or `tokio-postgres-rustls`' connector; [`NoTls`] without TLS).
pub trait ListenTls:
    MakeTlsConnect<Socket, Stream: Send, TlsConnect: Send + TlsConnect<Socket, Future: Send>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> ListenTls for T where
    T: MakeTlsConnect<Socket, Stream: Send, TlsConnect: Send + TlsConnect<Socket, Future: Send>>
        + Clone
        + Send
        + Sync
        + 'static
{
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
/// Metrics: `tower_budget_listener_connected` (gauge, 1 or 0; one per process: run one listener)
/// and `tower_budget_notifications_total` (counter).
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
    /// Starts listening on a connection of its own made from `config`, without TLS (outside any
    /// pool; its `application_name` is [`LISTEN_APPLICATION_NAME`]). The cache runs on the short
    /// TTL until the first `LISTEN` succeeds. Must be called within a Tokio runtime.
    #[must_use = "dropping the listener stops it"]
    pub fn spawn<S>(
        config: tokio_postgres::Config,
        cache: &Arc<CachingStore<S>>,
        options: ListenOptions,
    ) -> Self
    where
        S: ?Sized + Send + Sync + 'static,
    {
        Self::spawn_with_tls(config, NoTls, cache, options)
    }

    /// Like [`spawn`](Self::spawn), connecting through `tls` (for instance a
    /// `postgres-native-tls` or `tokio-postgres-rustls` connector).
    #[must_use = "dropping the listener stops it"]
    pub fn spawn_with_tls<S, T>(
        mut config: tokio_postgres::Config,
        tls: T,
        cache: &Arc<CachingStore<S>>,
        mut options: ListenOptions,
    ) -> Self
    where
        S: ?Sized + Send + Sync + 'static,
        T: ListenTls,
    {
        // Zero would spin: every wait is at least 10 ms.
        const LEAST: Duration = Duration::from_millis(10);
        options.ping_every = options.ping_every.max(LEAST);
        options.max_backoff = options.max_backoff.max(LEAST);
        options.connect_timeout = options.connect_timeout.max(LEAST);
        config.application_name(LISTEN_APPLICATION_NAME);
        config.connect_timeout(options.connect_timeout);
        // The server, too, notices a client that vanished: a listening session that nobody
        // reads holds back the notification queue for everyone.
        let mut server_options = config.get_options().unwrap_or_default().to_owned();
        for setting in [
            "-c tcp_keepalives_idle=30",
            "-c tcp_keepalives_interval=10",
            "-c tcp_keepalives_count=3",
        ] {
            if !server_options.contains(&setting[3..setting.find('=').unwrap_or(3)]) {
                if !server_options.is_empty() {
                    server_options.push(' ');
                }
                server_options.push_str(setting);
            }
        }
        config.options(&server_options);
        let state = ListenerState(Arc::new(AtomicBool::new(false)));
        disconnected(cache, &options, &state);
        let task = tokio::spawn(run(
            config,
            tls,
            Arc::downgrade(cache),
            options.clone(),
            state.clone(),
        ));
        let weak = Arc::downgrade(cache);
        let on_stop = Box::new(move || {
            if let Some(cache) = weak.upgrade() {
                cache.set_token_caching(false);
                cache.set_ttl(options.disconnected_ttl);
                cache.set_registration_ttl(None);
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
    /// Connected, but the database has no (enabled) change trigger: nothing would arrive.
    NoTrigger,
}

/// Returns the cache to the short TTL however the task ends — aborted while it was switching to
/// the long one, or panicking.
struct Disconnect<'a, S: ?Sized> {
    cache: &'a Weak<CachingStore<S>>,
    options: &'a ListenOptions,
    state: &'a ListenerState,
}

impl<S: ?Sized> Drop for Disconnect<'_, S> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            disconnected(&cache, self.options, self.state);
        }
    }
}

async fn run<S, T>(
    config: tokio_postgres::Config,
    tls: T,
    cache: Weak<CachingStore<S>>,
    options: ListenOptions,
    state: ListenerState,
) where
    S: ?Sized + Send + Sync + 'static,
    T: ListenTls,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let _guard = Disconnect {
        cache: &cache,
        options: &options,
        state: &state,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u64;
    let mut said_no_trigger = false;
    let mut previous: Option<(i32, DateTime<Utc>)> = None;
    loop {
        let started = tokio::time::Instant::now();
        // Whether the session got as far as connected: then its end is news, not a retry.
        let mut was_connected = false;
        match session(
            &config,
            tls.clone(),
            &cache,
            &options,
            &state,
            &mut previous,
            &mut was_connected,
        )
        .await
        {
            Ended::CacheGone => return,
            ended => {
                let Some(strong) = cache.upgrade() else {
                    return;
                };
                if was_connected {
                    said_no_trigger = false;
                }
                disconnected(&strong, &options, &state);
                drop(strong);
                match ended {
                    Ended::NoTrigger if !said_no_trigger => {
                        said_no_trigger = true;
                        tracing::error!("change listener: the database has no enabled change-notification trigger (migration V4, `tower_budget_notify_change` on `workspaces`): decisions stay on the short TTL until it is there");
                    }
                    Ended::NoTrigger => {}
                    Ended::Lost(error) if was_connected => {
                        tracing::warn!(%error, ttl = ?options.disconnected_ttl, "change listener lost its connection; reconnecting (decisions cached for the short TTL meanwhile)");
                    }
                    Ended::Lost(error) => {
                        if failures % 20 == 0 {
                            tracing::warn!(%error, attempts = failures + 1, "change listener cannot connect; retrying");
                        }
                    }
                    Ended::CacheGone => return,
                }
            }
        }
        // A session that stayed connected a while starts the backoff (and the count) over; one
        // that drops right after connecting does not, or every replica would reconnect (and
        // drop its cache) in a tight loop.
        let lived = started.elapsed() > (options.max_backoff * 2).max(Duration::from_secs(10));
        if was_connected && lived {
            backoff = FIRST_BACKOFF;
            failures = 0;
        } else {
            failures += 1;
        }
        tokio::time::sleep(jittered(backoff, failures)).await;
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
    // The short TTL first: nothing reads "not connected" while the long one still applies.
    cache.set_token_caching(false);
    cache.set_ttl(options.disconnected_ttl);
    cache.set_registration_ttl(None);
    state.0.store(false, Ordering::Release);
    metrics::gauge!("tower_budget_listener_connected").set(0.0);
}

fn connected<S: ?Sized>(cache: &CachingStore<S>, options: &ListenOptions, state: &ListenerState) {
    cache.set_ttl(options.connected_ttl);
    cache.set_registration_ttl(Some(
        options
            .connected_ttl
            .saturating_mul(CONNECTED_REGISTRATION_TTL_FACTOR),
    ));
    cache.set_token_caching(true);
    state.0.store(true, Ordering::Release);
    metrics::gauge!("tower_budget_listener_connected").set(1.0);
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes in a row that may fail before the session is given up.
const PROBES_BEFORE_RECONNECT: u32 = 5;

/// One connection's life: connect, `LISTEN`, check the trigger, drop the cache, then apply
/// notifications and probe the path they take until the connection fails.
async fn session<S, T>(
    config: &tokio_postgres::Config,
    tls: T,
    cache: &Weak<CachingStore<S>>,
    options: &ListenOptions,
    state: &ListenerState,
    previous: &mut Option<(i32, DateTime<Utc>)>,
    was_connected: &mut bool,
) -> Ended
where
    S: ?Sized + Send + Sync + 'static,
    T: ListenTls,
{
    let timeout = options.connect_timeout;
    let (client, mut connection) = match tokio::time::timeout(timeout, config.connect(tls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Ended::Lost(describe(&e)),
        Err(_) => return Ended::Lost(format!("no connection within {timeout:?}")),
    };
    // Probes carry a token of this session: the driver reports the last one it received.
    let token = {
        use std::hash::BuildHasher;
        foldhash::fast::RandomState::default().hash_one(std::time::SystemTime::now())
    };
    let probe_prefix = format!("probe:{token:x}:");
    let (probe_seen, mut probes) = watch::channel(0u64);
    // The connection is driven by a task of its own, which also applies the notifications.
    let weak = cache.clone();
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let notifications = metrics::counter!("tower_budget_notifications_total");
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let payload = n.payload();
                    if let Some(n) = payload.strip_prefix(&probe_prefix) {
                        if let Ok(n) = n.parse() {
                            let _ = probe_seen.send(n);
                        }
                        continue;
                    }
                    // Other processes' probes name no workspace.
                    if payload.starts_with("probe:") {
                        continue;
                    }
                    let Some(cache) = weak.upgrade() else {
                        return Ok(());
                    };
                    notifications.increment(1);
                    apply(&cache, payload);
                }
                Ok(_) => {}
                Err(e) => return Err(describe(&e)),
            }
        }
        Err("the database closed the connection".to_owned())
    }));
    let statement = format!("LISTEN {CHANNEL}");
    match tokio::time::timeout(timeout, client.batch_execute(&statement)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::Lost(describe(&e)),
        Err(_) => return Ended::Lost(format!("LISTEN took over {timeout:?}")),
    }
    // Notifications come from the V4 trigger: on a database without it (not migrated, or the
    // trigger disabled) nothing would ever arrive, and the long TTL would be a lie.
    match tokio::time::timeout(timeout, client.query_one(TRIGGER_AND_PID.as_str(), &[])).await {
        Ok(Ok(row)) if row.get::<_, bool>(0) => {
            // `backend_start` is hidden (NULL) when the session may not see its own row.
            let this = row
                .get::<_, Option<DateTime<Utc>>>(2)
                .map(|started| (row.get::<_, i32>(1), started));
            // The session this one replaces may linger on the server. Best effort.
            if let Some((pid, started)) = std::mem::replace(previous, this) {
                let _ = tokio::time::timeout(
                    timeout,
                    client.execute(TERMINATE_PREVIOUS, &[&pid, &started]),
                )
                .await;
            }
        }
        Ok(Ok(_)) => return Ended::NoTrigger,
        Ok(Err(e)) => return Ended::Lost(describe(&e)),
        Err(_) => return Ended::Lost(format!("no answer within {timeout:?}")),
    }
    // A first probe must come back before anything is claimed: a path that accepts LISTEN but
    // delivers nothing (a transaction-mode pooler) never gets the long TTL.
    let mut sent = 1u64;
    let first = probe(&client, &mut probes, &token, sent);
    match tokio::time::timeout(options.ping_every.max(timeout), first).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Ended::NoTrigger,
        Ok(Err(e)) => return Ended::Lost(e),
        Err(_) => return Ended::Lost(
            "a first probe did not come back: notifications are not delivered on this connection"
                .to_owned(),
        ),
    }
    // From here every commit is notified; what came before may have been missed.
    {
        let Some(cache) = cache.upgrade() else {
            return Ended::CacheGone;
        };
        cache.clear();
        connected(&cache, options, state);
    }
    *was_connected = true;
    tracing::info!(ttl = ?options.connected_ttl, "change listener connected: cache in step with every replica");
    let mut ping = tokio::time::interval(options.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut late = 0u32;
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
                let Some(strong) = cache.upgrade() else { return Ended::CacheGone };
                sent += 1;
                let pending = probe(&client, &mut probes, &token, sent);
                match tokio::time::timeout(options.ping_every, pending).await {
                    Ok(Ok(true)) => {
                        if late > 0 {
                            late = 0;
                            connected(&strong, options, state);
                            tracing::info!("change listener: notifications arrive again");
                        }
                    }
                    Ok(Ok(false)) => return Ended::NoTrigger,
                    Ok(Err(e)) => return Ended::Lost(e),
                    Err(_) => {
                        late += 1;
                        if late == 1 {
                            // Slow, not lost: what is queued on this session still arrives.
                            disconnected(&strong, options, state);
                            tracing::warn!(wait = ?options.ping_every, "change listener: a probe did not come back in time; decisions cached for the short TTL until one does");
                        }
                        if late >= PROBES_BEFORE_RECONNECT {
                            return Ended::Lost(format!("{late} probes in a row did not come back"));
                        }
                    }
                }
            }
        }
    }
}

/// Sends probe number `n` (with the trigger check) and waits for it to come back; `false` when
/// the trigger is missing or disabled.
async fn probe(
    client: &tokio_postgres::Client,
    seen: &mut watch::Receiver<u64>,
    token: &u64,
    n: u64,
) -> Result<bool, String> {
    let payload = format!("probe:{token:x}:{n}");
    let row = client
        .query_one(PROBE.as_str(), &[&payload])
        .await
        .map_err(|e| describe(&e))?;
    if !row.get::<_, bool>(0) {
        return Ok(false);
    }
    // Delivered in order: once it is back, so is everything committed before it.
    seen.wait_for(|seen| *seen >= n)
        .await
        .map_err(|_| "the connection closed".to_owned())?;
    Ok(true)
}

/// The error with its cause (tokio-postgres says only "db error" at the top).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// One notification: `budget:<id>` drops the workspace's budget answers, `all:` everything
/// (a TRUNCATE, an id too long to name), `agent:<id>` and any kind this version does not know
/// everything cached for that workspace.
fn apply<S: ?Sized>(cache: &CachingStore<S>, payload: &str) {
    let (kind, id) = payload.split_once(':').unwrap_or(("", payload));
    if kind == "all" {
        cache.clear();
        return;
    }
    // An id the gateway would refuse is never cached.
    let Ok(workspace) = WorkspaceId::new(id) else {
        return;
    };
    match kind {
        "budget" => cache.invalidate_budget(&workspace),
        _ => cache.invalidate(&workspace),
    }
}

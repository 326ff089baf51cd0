//! A standalone A2A gateway built only on tower-budget's public API.
//!
//! ```text
//! cargo run --release --example gateway                 # in-process store, 127.0.0.1:8080
//! cargo run --release --example gateway -- --help       # every flag and its environment variable
//! DATABASE_URL=postgres://… cargo run --release --example gateway
//! ```

mod agents;
mod alerts;
mod allocator;
mod app;
mod card;
mod coarse_timer;
mod config;
mod http1;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower_budget::api::{generate_token, BudgetApi, TokenAuth};
use tower_budget::layer::{BudgetLayer, FailMode, ResponseBody};

use tower_budget::store::{spawn_pruner, BudgetStore};

use config::Config;
use proxy::Proxy;

/// How long in-flight requests (streams included) may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often old ledger entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn main() {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // One line: what was wrong, not the whole usage.
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("invalid arguments").trim()
            );
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Single-threaded runtimes, one per core: this one, which also runs the background tasks,
    // and one per other serving thread (`app::serve_on_threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(config));
    // What still runs after `run` gave up waiting (connections past the grace, a blocking
    // lookup) does not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    if config
        .alert_secret
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err("--alert-secret must not be empty".into());
    }
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let backend = app::store(
        config.database_url.as_deref(),
        config.cache_ttl(),
        usize::try_from(config.cache_capacity).unwrap_or(usize::MAX),
    )
    .await?;
    let admin_token = match &config.admin_token {
        Some(t) if !t.trim().is_empty() => t.clone(),
        Some(_) => return Err("--admin-token must not be empty".into()),
        None => {
            let token = generate_token("tba_");
            println!("admin token: {token}");
            token
        }
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));

    // One caching store for the layer, the API and the proxy: decisions see writes at once.
    let cached = backend.store.clone();
    // `--cache-ttl-ms 0`: the layer asks the database on every request (writes still go through
    // the caching store, which then serves no answers).
    let checked: Arc<dyn BudgetStore> = if config.cache_ttl().is_some_and(|t| t.is_zero()) {
        cached.inner().clone()
    } else {
        cached.clone()
    };
    let layer = BudgetLayer::from_arc(checked)
        .with_check_timeout(config.check_timeout())?
        .with_fail_mode(if config.fail_closed {
            FailMode::Closed
        } else {
            FailMode::Open
        })
        .with_budget_headers(true)
        .with_exempt(|p| proxy::is_card_request(&p.method, p.uri.path()));
    let api = BudgetApi::new(cached.clone(), TokenAuth::new(&admin_token, cached.clone()));
    let health = backend.health();
    let (upstream_timeout, lookup_timeout) = (config.upstream_timeout(), config.check_timeout());
    let proxy_url = public_url.clone();
    // One router per serving thread, each with its own proxy (its own pool of connections to
    // the agents); the stores, caches and metrics are shared.
    let make_router = std::sync::Arc::new(move || {
        let proxy = Proxy::new(
            cached.clone(),
            proxy_url.clone(),
            upstream_timeout,
            lookup_timeout,
        );
        // Every proxied request goes through the layer: no flag, variable or feature takes it
        // out.
        let proxied = tower::ServiceBuilder::new()
            // Hand axum the proxy's own body type, so it does not box the layer's body around it.
            .map_response(|r: http::Response<ResponseBody<Body>>| r.map(ResponseBody::into_body))
            .layer(layer.clone())
            .service(proxy);
        app::router(proxied, api.clone(), metrics.clone(), health.clone())
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut signals = Signals::register()?;
    let pruner = spawn_pruner(backend.store.clone(), PRUNE_EVERY);
    // Events are recorded whether or not this process has a webhook; the sweep that decides
    // recoveries and the expiry run in every process.
    let alert_sender = alerts::spawn(
        backend.store.clone(),
        config.alert_webhooks.clone(),
        config.alert_secret.clone(),
    );
    println!("listening on http://{local} (public URL {public_url})");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut stop = stop_rx;
        app::serve_on_threads(listener, make_router, threads, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    });
    signals.next().await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    tokio::select! {
        result = tokio::time::timeout(SHUTDOWN_GRACE, server) => match result {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests still running after the grace period; exiting")
            }
        },
        () = signals.next() => {
            tracing::warn!("second signal: exiting without waiting for in-flight requests");
        }
    }
    pruner.abort();
    alert_sender.abort();
    Ok(())
}

/// SIGINT and SIGTERM, registered when made: a signal that arrives before anyone waits for it
/// is not lost (the process would otherwise die of it with the default disposition).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

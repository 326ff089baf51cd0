//! A standalone A2A gateway built only on tower-budget's public API.
//!
//! ```text
//! cargo run --release --example gateway                 # in-process store, 127.0.0.1:8080
//! cargo run --release --example gateway -- --help       # every flag and its environment variable
//! DATABASE_URL=postgres://… cargo run --release --example gateway
//! ```

mod card;
mod config;
mod proxy;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_budget::api::{generate_token, BudgetApi, TokenAuth, BUDGET_PAGE};
use tower_budget::layer::{BudgetLayer, FailMode};
use tower_budget::store::postgres::{migrate, PgStore, PoolOptions};
use tower_budget::store::{spawn_pruner, BudgetStore, MemoryStore};

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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let store: Arc<dyn BudgetStore> = match &config.database_url {
        Some(url) => {
            let pool = PoolOptions::default().build(url)?;
            migrate(&pool).await.map_err(|e| format!("database: {e}"))?;
            tracing::info!("PostgreSQL store, migrations applied");
            Arc::new(PgStore::new(pool))
        }
        None => {
            tracing::info!("in-process store: budgets and spend live in memory and are lost on exit (use --database-url to keep them)");
            Arc::new(MemoryStore::new())
        }
    };
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

    let layer = BudgetLayer::from_arc(store.clone())
        .with_check_timeout(config.check_timeout())?
        .with_cache_ttl(config.cache_ttl())
        .with_fail_mode(if config.fail_closed {
            FailMode::Closed
        } else {
            FailMode::Open
        })
        .with_budget_headers(true)
        .with_exempt(|p| proxy::is_card_request(&p.method, p.uri.path()));
    let writes = layer.store();
    let api = BudgetApi::new(writes.clone(), TokenAuth::new(&admin_token, writes.clone()));
    let app = app(
        layer,
        writes,
        api,
        public_url.clone(),
        config.upstream_timeout(),
        metrics,
    );

    let pruner = spawn_pruner(store, PRUNE_EVERY);
    println!("listening on http://{local} (public URL {public_url})");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut stop = stop_rx;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result??,
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests still running after the grace period; exiting")
        }
    }
    pruner.abort();
    Ok(())
}

fn app(
    layer: BudgetLayer,
    store: Arc<dyn BudgetStore>,
    api: BudgetApi,
    public_url: String,
    upstream_timeout: Duration,
    metrics: PrometheusHandle,
) -> Router {
    let proxy = Proxy::new(store, public_url, upstream_timeout);
    #[cfg(not(feature = "bench-bypass-budget"))]
    let proxied = {
        use tower_budget::layer::ResponseBody;
        tower::ServiceBuilder::new()
            // Hand axum the proxy's own body type, so it does not box the layer's body around it.
            .map_response(|r: http::Response<ResponseBody<Body>>| r.map(ResponseBody::into_body))
            .layer(layer)
            .service(proxy)
    };
    #[cfg(feature = "bench-bypass-budget")]
    let proxied = {
        drop(layer);
        tracing::warn!("built with bench-bypass-budget: NO BUDGET IS ENFORCED");
        proxy
    };
    Router::new()
        .route_service("/workspaces/{id}/a2a", proxied.clone())
        .route_service("/workspaces/{id}/a2a/", proxied.clone())
        .route_service("/workspaces/{id}/a2a/{*rest}", proxied)
        .route(
            "/healthz",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"ok"}"#,
                )
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/ui", get(|| async { Html(BUDGET_PAGE) }))
        .fallback_service(api)
        .layer(middleware::from_fn(track))
}

/// Request counters and latency (to response headers) per route class.
async fn track(request: Request<Body>, next: Next) -> Response {
    let path = request.uri().path();
    let route = if proxy::split_path(path).is_some() {
        Route::Proxy
    } else if matches!(path, "/healthz" | "/metrics" | "/ui") {
        Route::Ops
    } else {
        Route::Api
    };
    let started = Instant::now();
    let response = next.run(request).await.into_response();
    let metrics = RouteMetrics::get(route);
    metrics.requests(response.status()).increment(1);
    metrics.duration.record(started.elapsed().as_secs_f64());
    response
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

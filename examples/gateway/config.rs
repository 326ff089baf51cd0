//! Flags, each also an environment variable. Bad values stop the start with a one-line error.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A standalone A2A gateway with per-workspace LLM spend budgets (tower-budget).
///
/// Proxies /workspaces/{id}/a2a[/…] to each registered agent through the budget check, serves
/// the budget API, /healthz, /metrics (Prometheus) and /ui (the budget page).
#[derive(Parser, Debug, Clone)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The URL clients reach this gateway at; agent cards advertise it. Default: http://{listen}.
    #[arg(long, env = "GATEWAY_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// Admin bearer token. Default: a random one, printed once at start.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// PostgreSQL URL (postgres://user:pass@host:port/db). Applies migrations at start.
    /// Default: the in-process store (state is lost on exit).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// How long a budget decision is served from memory, in ms; 0 turns the cache off.
    /// Default: with PostgreSQL 30000 while the change listener is connected (every replica's
    /// writes reach this cache at once) and 1000 while it is not; in-process 1000.
    #[arg(long, env = "GATEWAY_CACHE_TTL_MS")]
    pub cache_ttl_ms: Option<u64>,

    /// How many workspaces the decision and registration caches hold (about 1 KiB each, so the
    /// default bounds them near 250 MiB); when full, expired entries go first, then arbitrary
    /// ones, whose next calls ask the store again. Size it above the number of workspaces active
    /// within the registration TTL (300 s with PostgreSQL).
    #[arg(long, env = "GATEWAY_CACHE_CAPACITY", default_value_t = crate::app::DEFAULT_CACHE_CAPACITY as u64, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub cache_capacity: u64,

    /// Longest budget check before the request is let through (or refused with --fail-closed), in ms.
    #[arg(long, env = "GATEWAY_CHECK_TIMEOUT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub check_timeout_ms: u64,

    /// Refuse requests with 503 when the budget store cannot answer (default: let them through).
    #[arg(long, env = "GATEWAY_FAIL_CLOSED")]
    pub fail_closed: bool,

    /// Longest wait for an agent's response headers, in ms (504 after it).
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout_ms: u64,

    /// Webhook that receives a JSON POST per alert event (threshold crossed, recovered);
    /// repeatable (the environment variable takes a comma-separated list). Plain http:// only:
    /// put a relay in front of an https receiver (README, "Alerts").
    #[arg(long = "alert-webhook", env = "GATEWAY_ALERT_WEBHOOK", value_delimiter = ',', value_parser = parse_webhook)]
    pub alert_webhooks: Vec<String>,

    /// Secret that signs every alert POST (the Budget-Signature header, HMAC-SHA256).
    #[arg(long, env = "GATEWAY_ALERT_SECRET", hide_env_values = true)]
    pub alert_secret: Option<String>,
}

impl Config {
    pub fn cache_ttl(&self) -> Option<Duration> {
        self.cache_ttl_ms.map(Duration::from_millis)
    }

    pub fn check_timeout(&self) -> Duration {
        Duration::from_millis(self.check_timeout_ms)
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }
}

/// An absolute http(s) URL; stored without a trailing slash.
fn parse_public_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none()
        || uri.query().is_some()
    {
        return Err("must be an absolute http:// or https:// URL without a query".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// An absolute http:// URL (the gateway's client speaks no TLS).
fn parse_webhook(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(s.to_owned()),
        Some("https") => Err(
            "https webhooks need a TLS client, which this gateway does not include; \
             point it at an http:// relay (see the README)"
                .into(),
        ),
        _ => Err("must be an absolute http:// URL".into()),
    }
}

//! Delivers alert events (SPEC §12) from the store's outbox to webhooks: at least once, in order
//! per workspace, with exponential backoff, and signed when a secret is set.
//!
//! The sender never runs on the request path: the stores decide events where the spend is
//! recorded and leave them in the outbox ([`AlertOutbox`]); this task claims them, POSTs each
//! one's JSON to every webhook, and acknowledges it once every webhook answered 2xx. A failed
//! attempt is retried after 1 s, 2 s, 4 s … capped at [`MAX_BACKOFF`] (with up to 10 % jitter),
//! for [`ALERT_MAX_AGE`] after the event was decided; then it is dropped and counted. A webhook
//! that already answered 2xx is not sent the event again; the others are. Receivers de-duplicate
//! by the event's `id`, which is the same on every attempt (a claimer that dies mid-delivery
//! leaves the event to be claimed again when its lease runs out).
//!
//! The same task also runs the recovery sweep ([`AlertOutbox::sweep_recovered`]) and the
//! expiry, whether or not this process has a webhook: events are recorded for whichever process
//! delivers them.
//!
//! HTTP is the caller's: [`PostWebhook`] sends one request (the example gateway implements it
//! on its hyper client), so the crate carries no HTTP client.
//!
//! # Metrics
//! - `tower_budget_alert_events_total{type}`: events this process delivered, by type;
//! - `tower_budget_alert_delivery_failures_total`: failed POSTs (no answer in time, not 2xx);
//! - `tower_budget_alert_events_dropped_total`: events dropped after [`ALERT_MAX_AGE`], or
//!   because their stored row does not read as this crate writes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::Sha256;

use crate::store::{AlertOutbox, PendingAlert, ALERT_MAX_AGE};

/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("budget-signature");
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Any error a [`PostWebhook`] reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends one POST with a JSON body and answers its status.
pub trait PostWebhook: Send + Sync + 'static {
    /// POSTs `body` to `url` with `headers` (content type and, with a secret, the signature).
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> BoxFuture<'static, Result<StatusCode, BoxError>>;
}

/// The `Budget-Signature` value for `body` sent at `unix_seconds`.
pub fn signature(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    format!("t={unix_seconds},v1={hex}")
}

/// The wait before attempt `attempts + 1`: 1 s doubled per attempt, capped at [`MAX_BACKOFF`],
/// less up to 10 % by `jitter` (in `0.0..1.0`) so that events failed together do not return
/// together.
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let doubled = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(20));
    doubled
        .min(MAX_BACKOFF)
        .mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
}

/// Settings of an [`AlertSender`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SenderOptions {
    /// How often the outbox is asked for due events when the last round found none (1 s).
    pub poll: Duration,
    /// How often the recovery sweep and the expiry run (5 s).
    pub maintenance: Duration,
    /// Longest wait for one webhook's answer (10 s).
    pub attempt_timeout: Duration,
    /// How long a claimed event is this process's alone (60 s). A round claims no more events
    /// than it can attempt within the lease (see [`batch`](Self::batch)).
    pub lease: Duration,
    /// Most events claimed per round (64), and never more than four deliveries at a time can
    /// start within the lease at the attempt timeout (16 with the defaults), so that no claimed
    /// event waits out its lease unsent while another replica claims it again.
    pub batch: usize,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            poll: Duration::from_secs(1),
            maintenance: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            batch: 64,
        }
    }
}

/// Delivers the outbox's events to webhooks; see the [module docs](self).
pub struct AlertSender {
    outbox: Arc<dyn AlertOutbox>,
    webhooks: Vec<String>,
    secret: Option<Vec<u8>>,
    post: Arc<dyn PostWebhook>,
    options: SenderOptions,
    /// One rate limit per kind of warning, so that frequent ones do not hide rare ones.
    warn: Warnings,
}

#[derive(Debug, Default)]
struct Warnings {
    delivery: WarnEvery,
    claim: WarnEvery,
    record: WarnEvery,
    maintenance: WarnEvery,
}

impl std::fmt::Debug for AlertSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let webhooks: Vec<String> = self.webhooks.iter().map(|w| redacted(w)).collect();
        f.debug_struct("AlertSender")
            .field("webhooks", &webhooks)
            .field("signed", &self.secret.is_some())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AlertSender {
    /// A sender of `outbox`'s events to `webhooks` (none: only the sweep and the expiry run)
    /// through `post`.
    pub fn new(
        outbox: Arc<dyn AlertOutbox>,
        webhooks: Vec<String>,
        post: Arc<dyn PostWebhook>,
    ) -> Self {
        AlertSender {
            outbox,
            webhooks,
            secret: None,
            post,
            options: SenderOptions::default(),
            warn: Warnings::default(),
        }
    }

    /// Signs every POST with `secret` (the `Budget-Signature` header).
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_options(mut self, options: SenderOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs until the handle is aborted (or the runtime ends). Maintenance (the recovery sweep
    /// and the expiry) and delivery are two tasks, so neither can hold the other up: a sweep
    /// over many workspaces does not stop deliveries, and a hanging receiver does not stop the
    /// sweep.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let sender = Arc::new(self);
        tokio::spawn(async move {
            let deliveries = async {
                if sender.webhooks.is_empty() {
                    return std::future::pending().await;
                }
                let mut tick = tokio::time::interval(sender.options.poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    // A round that delivered something is followed at once by the next (a
                    // workspace's next event becomes claimable only after the one before it).
                    while sender.round().await > 0 {}
                }
            };
            tokio::pin!(deliveries);
            loop {
                // Maintenance is a task of its own, aborted with this one (the guard), and
                // started again should it ever end.
                let maintenance = Abort(Some(tokio::spawn(maintain_every(sender.clone()))));
                tokio::select! {
                    () = &mut deliveries => return,
                    ended = maintenance.wait() => {
                        tracing::error!(?ended, "alert maintenance task ended; starting it again");
                    }
                }
            }
        })
    }

    async fn maintain(&self) {
        if let Err(e) = self.outbox.sweep_recovered().await {
            self.warn
                .maintenance
                .warn(format_args!("alert recovery sweep failed: {e}"));
        }
        match self.outbox.expire_alerts(ALERT_MAX_AGE).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("tower_budget_alert_events_dropped_total").increment(n);
                if self.webhooks.is_empty() {
                    // Expected where no process delivers: not an alarm.
                    tracing::debug!(dropped = n, "undelivered alert events expired");
                } else {
                    tracing::warn!(
                        dropped = n,
                        "alert events not delivered within 24 hours were dropped"
                    );
                }
            }
            Err(e) => self
                .warn
                .maintenance
                .warn(format_args!("alert expiry failed: {e}")),
        }
    }

    /// One claim and its deliveries; how many events were claimed.
    async fn round(&self) -> usize {
        let claimed = match self
            .outbox
            .claim_alerts(self.claim_size(), self.options.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                self.warn
                    .claim
                    .warn(format_args!("cannot claim alert events: {e}"));
                return 0;
            }
        };
        let n = claimed.len();
        // At most a few at once: each acknowledgement takes a pooled connection that budget
        // checks also need.
        let deliveries: Vec<BoxFuture<'_, ()>> = claimed
            .iter()
            .map(|alert| Box::pin(self.deliver(alert)) as BoxFuture<'_, ()>)
            .collect();
        futures_util::stream::iter(deliveries)
            .buffer_unordered(CONCURRENT_DELIVERIES)
            .collect::<Vec<()>>()
            .await;
        n
    }

    /// Events per claim: the batch, or fewer if their attempts could outlast the lease (each
    /// attempt is given the attempt timeout plus 5 s to acknowledge).
    fn claim_size(&self) -> usize {
        let per_slot = self.options.attempt_timeout + Duration::from_secs(5);
        let waves = (self.options.lease.as_secs_f64() / per_slot.as_secs_f64()).floor() as usize;
        self.options.batch.min(CONCURRENT_DELIVERIES * waves.max(1))
    }

    async fn deliver(&self, alert: &PendingAlert) {
        let body = Bytes::from(alert.event.to_json().to_string());
        let pending: Vec<&String> = self
            .webhooks
            .iter()
            .filter(|url| !alert.delivered_to.contains(url))
            .collect();
        let answers = join_all(pending.iter().map(|url| self.attempt(url, body.clone()))).await;
        let mut delivered = alert.delivered_to.clone();
        for (url, ok) in pending.into_iter().zip(answers) {
            if ok {
                delivered.push(url.clone());
            }
        }
        let done = self.webhooks.iter().all(|url| delivered.contains(url));
        let outcome = if done {
            let acknowledged = self.outbox.alert_delivered(alert).await;
            if acknowledged.is_ok() {
                metrics::counter!("tower_budget_alert_events_total", "type" => alert.event.kind.name())
                    .increment(1);
            }
            acknowledged
        } else {
            let retry_in = backoff(alert.attempts, jitter(&alert.event.id, alert.attempts));
            self.outbox.alert_failed(alert, &delivered, retry_in).await
        };
        if let Err(e) = outcome {
            // The lease runs out and the event is claimed again: delivered at least once.
            self.warn.record.warn(format_args!(
                "cannot record the delivery of alert {}: {e}",
                alert.event.id
            ));
        }
    }

    /// One POST; true on a 2xx answer within the attempt timeout.
    async fn attempt(&self, url: &str, body: Bytes) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secret) = &self.secret {
            let signed = signature(secret, chrono::Utc::now().timestamp(), &body);
            if let Ok(value) = HeaderValue::from_str(&signed) {
                headers.insert(SIGNATURE_HEADER, value);
            }
        }
        let answer = tokio::time::timeout(
            self.options.attempt_timeout,
            self.post.post(url, headers, body),
        )
        .await;
        let failure = match answer {
            Ok(Ok(status)) if status.is_success() => return true,
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.options.attempt_timeout),
        };
        metrics::counter!("tower_budget_alert_delivery_failures_total").increment(1);
        self.warn.delivery.warn(format_args!(
            "alert delivery to {} failed ({failure}); will retry",
            redacted(url)
        ));
        false
    }
}

/// Runs the recovery sweep and the expiry every `maintenance` interval.
async fn maintain_every(sender: Arc<AlertSender>) {
    let mut tick = tokio::time::interval(sender.options.maintenance);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        sender.maintain().await;
    }
}

/// A task aborted when this guard is dropped.
struct Abort(Option<tokio::task::JoinHandle<()>>);

impl Abort {
    /// Waits for the task to end; the guard then has nothing left to abort.
    async fn wait(mut self) -> Result<(), tokio::task::JoinError> {
        match self.0.take() {
            Some(handle) => handle.await,
            None => Ok(()),
        }
    }
}

impl Drop for Abort {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Most deliveries (POSTs and their acknowledgement) of one round at once.
const CONCURRENT_DELIVERIES: usize = 4;

/// A webhook URL as logged: scheme, host and port only — user info, path and query may carry
/// credentials (Slack's and Teams' incoming webhooks keep theirs in the path).
fn redacted(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}/…",
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?"),
            uri.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<webhook>".to_owned(),
    }
}

/// Warnings at most once per 10 s, with how many were held back meanwhile: a receiver or
/// database that is down for hours does not flood the log.
#[derive(Debug, Default)]
struct WarnEvery {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl WarnEvery {
    const EVERY: Duration = Duration::from_secs(10);

    fn warn(&self, message: std::fmt::Arguments<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Self::EVERY => state.1 += 1,
            _ => {
                tracing::warn!(held_back = state.1, "{message}");
                *state = (Some(now), 0);
            }
        }
    }
}

/// A fraction in `0.0..1.0` from the event and attempt: spreads retries without a random source.
fn jitter(id: &str, attempts: u32) -> f64 {
    use std::hash::BuildHasher;
    let hash = foldhash::fast::FixedState::with_seed(0x6a69_7474).hash_one((id, attempts));
    (hash % 1_000) as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: Python's
        // hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest().
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|a| backoff(a, 0.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF);
        assert!(backoff(3, 0.99) < backoff(3, 0.0));
        assert!(backoff(3, 0.99) > Duration::from_secs(3));
        assert!((0.0..1.0).contains(&jitter("evt", 3)));
    }

    #[test]
    fn a_round_claims_no_more_than_it_can_attempt_within_the_lease() {
        struct Never;
        impl PostWebhook for Never {
            fn post(
                &self,
                _: &str,
                _: HeaderMap,
                _: Bytes,
            ) -> BoxFuture<'static, Result<StatusCode, BoxError>> {
                Box::pin(std::future::pending())
            }
        }
        let outbox: Arc<dyn AlertOutbox> = Arc::new(crate::store::MemoryStore::new());
        let sender = AlertSender::new(outbox, vec!["http://a/".into()], Arc::new(Never));
        // 60 s lease, 10 s attempts (+5 s to acknowledge), four at a time: 16 of the 64.
        assert_eq!(sender.claim_size(), 16);
        let short = sender.with_options(SenderOptions {
            lease: Duration::from_secs(5),
            ..SenderOptions::default()
        });
        assert_eq!(
            short.claim_size(),
            CONCURRENT_DELIVERIES,
            "at least one wave"
        );
    }

    #[test]
    fn logged_urls_carry_no_credentials() {
        assert_eq!(
            redacted("http://user:pw@relay.internal:9911/hook?token=abc"),
            "http://relay.internal:9911/…"
        );
        assert_eq!(redacted("not a url at all"), "<webhook>");
    }
}

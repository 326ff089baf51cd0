//! The alert outbox: events decided by the stores wait here until a sender delivers them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::alerts::AlertEvent;

/// How long an event is retried before it is dropped (and counted), so the outbox stays bounded.
pub const ALERT_MAX_AGE: Duration = Duration::from_secs(24 * 3_600);

/// An event claimed for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAlert {
    /// The event as delivered.
    pub event: AlertEvent,
    /// Webhooks that already answered 2xx on an earlier attempt; they are not sent it again.
    pub delivered_to: Vec<String>,
    /// Delivery attempts so far, this one included (1 on the first).
    pub attempts: u32,
    /// The store's key for the event (its position in the workspace's order).
    pub key: i64,
}

/// Storage of alert events (SPEC §12), in the same store as the spend that decides them.
///
/// Events of one workspace are delivered in the order they were decided: only a workspace's
/// oldest undelivered event can be claimed, and only by one claimer at a time until its lease
/// runs out. Every method is safe to call from any number of processes at once.
#[async_trait]
pub trait AlertOutbox: Send + Sync + 'static {
    /// Claims up to `max` events that are due — each the oldest undelivered event of its
    /// workspace, not claimed by anyone else within its lease — for `lease`. A claimer that
    /// dies leaves the event to be claimed again when the lease runs out (at least once).
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError>;

    /// The event reached every webhook: it leaves the outbox.
    async fn alert_delivered(&self, alert: &PendingAlert) -> Result<(), StoreError>;

    /// Delivery failed: the event is due again in `retry_in`, remembering the webhooks in
    /// `delivered_to` that already have it. Ignored when another claimer holds the event now.
    async fn alert_failed(
        &self,
        alert: &PendingAlert,
        delivered_to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError>;

    /// Drops the events decided more than `max_age` ago and not delivered (none under a live
    /// lease); how many went.
    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError>;

    /// Decides `budget.recovered` for the periods remembered as exceeded whose spend has since
    /// aged out below the limit (nothing else would notice: no write happens); how many events
    /// were decided.
    async fn sweep_recovered(&self) -> Result<u64, StoreError>;
}

#[async_trait]
impl<S: AlertOutbox + ?Sized> AlertOutbox for Arc<S> {
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        (**self).claim_alerts(max, lease).await
    }
    async fn alert_delivered(&self, alert: &PendingAlert) -> Result<(), StoreError> {
        (**self).alert_delivered(alert).await
    }
    async fn alert_failed(
        &self,
        alert: &PendingAlert,
        delivered_to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError> {
        (**self).alert_failed(alert, delivered_to, retry_in).await
    }
    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError> {
        (**self).expire_alerts(max_age).await
    }
    async fn sweep_recovered(&self) -> Result<u64, StoreError> {
        (**self).sweep_recovered().await
    }
}

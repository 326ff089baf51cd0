//! An in-process store with faults on demand, for the layer's failure paths: it counts the
//! calls that reach it and can fail, hang, or hold calls at a gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tower_budget::period::{Limits, PerPeriod};
use tower_budget::store::{
    AlertOutbox, BudgetPatch, BudgetReport, BudgetStatus, BudgetStore, Heartbeat, HeartbeatOutcome,
    MemoryStore, PendingAlert, Registration, Registry, StoreError, TokenHash,
};
use tower_budget::WorkspaceId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    Failing,
    Hanging,
}

/// Wraps a `MemoryStore`; `status` and `retry_after` obey the mode and the gate.
#[derive(Clone)]
pub struct FaultyStore {
    pub inner: Arc<MemoryStore>,
    mode: Arc<Mutex<Mode>>,
    status_calls: Arc<AtomicUsize>,
    /// When set, status calls wait for a permit.
    gate: Arc<Mutex<Option<Arc<Semaphore>>>>,
}

impl FaultyStore {
    pub fn new(inner: MemoryStore) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            mode: Arc::new(Mutex::new(Mode::Healthy)),
            status_calls: Arc::default(),
            gate: Arc::default(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn status_calls(&self) -> usize {
        self.status_calls.load(Ordering::SeqCst)
    }

    /// Holds every status call (and every registration answer, after it was read) until the
    /// returned semaphore gets permits.
    pub fn close_gate(&self) -> Arc<Semaphore> {
        let s = Arc::new(Semaphore::new(0));
        *self.gate.lock().unwrap() = Some(s.clone());
        s
    }

    async fn fault(&self) -> Result<(), StoreError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Healthy => Ok(()),
            Mode::Failing => Err(StoreError::unavailable(std::io::Error::other(
                "injected failure",
            ))),
            Mode::Hanging => {
                // Far longer than any check timeout; the caller's timeout ends it.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(StoreError::unavailable(std::io::Error::other("hung")))
            }
        }
    }
}

#[async_trait]
impl BudgetStore for FaultyStore {
    async fn register(&self, w: &WorkspaceId) -> Result<(), StoreError> {
        self.inner.register(w).await
    }
    async fn remove(&self, w: &WorkspaceId) -> Result<(), StoreError> {
        self.inner.remove(w).await
    }
    async fn limits(&self, w: &WorkspaceId) -> Result<Limits, StoreError> {
        self.inner.limits(w).await
    }
    async fn patch_budget(
        &self,
        w: &WorkspaceId,
        p: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError> {
        self.inner.patch_budget(w, p).await
    }
    async fn report(&self, w: &WorkspaceId) -> Result<BudgetReport, StoreError> {
        self.fault().await?;
        self.inner.report(w).await
    }
    async fn status(&self, w: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        self.status_calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        self.fault().await?;
        self.inner.status(w).await
    }
    async fn retry_after(
        &self,
        w: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        self.fault().await?;
        self.inner.retry_after(w, over).await
    }
    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatOutcome, StoreError> {
        self.inner.record_heartbeat(hb).await
    }
    async fn spend_history(
        &self,
        w: &WorkspaceId,
        step: Duration,
        from: chrono::DateTime<chrono::Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError> {
        self.fault().await?;
        self.inner.spend_history(w, step, from, buckets).await
    }
    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        self.inner.list_workspaces(after, limit).await
    }
    async fn prune(&self) -> Result<u64, StoreError> {
        self.inner.prune().await
    }
}

#[async_trait]
impl Registry for FaultyStore {
    async fn register_agent(&self, w: &WorkspaceId, r: &Registration) -> Result<(), StoreError> {
        self.inner.register_agent(w, r).await
    }

    async fn registration(&self, w: &WorkspaceId) -> Result<Registration, StoreError> {
        self.fault().await?;
        let answer = self.inner.registration(w).await;
        // Held after the answer is read, so a test can deliver it late.
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        answer
    }

    async fn workspace_for_token(&self, h: &TokenHash) -> Result<Option<WorkspaceId>, StoreError> {
        self.inner.workspace_for_token(h).await
    }
}

#[async_trait]
impl AlertOutbox for FaultyStore {
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        self.fault().await?;
        self.inner.claim_alerts(max, lease).await
    }
    async fn alert_delivered(&self, a: &PendingAlert) -> Result<(), StoreError> {
        self.inner.alert_delivered(a).await
    }
    async fn alert_failed(
        &self,
        a: &PendingAlert,
        to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError> {
        self.inner.alert_failed(a, to, retry_in).await
    }
    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError> {
        self.inner.expire_alerts(max_age).await
    }
    async fn sweep_recovered(&self) -> Result<u64, StoreError> {
        self.inner.sweep_recovered().await
    }
}

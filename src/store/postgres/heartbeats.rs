//! Heartbeats written in groups: concurrent reports share one transaction.
//!
//! Every transaction that records spend also notifies the other replicas (the V4 trigger), and
//! PostgreSQL serialises the commits of notifying transactions: it holds a database-wide lock
//! from the notification until the commit record is on disk. One heartbeat per transaction then
//! costs one disk flush each, in turn — about a third of the throughput without notifications
//! (BENCHMARKS.md). So reports that arrive while earlier ones are being written wait in a queue
//! and go together, in one statement (`tower_budget_record_heartbeats`, which applies them in
//! order, each exactly as the single-report function does): one flush and one notification
//! lock per group. When the store is idle a report goes alone, at once.
//!
//! Groups in flight at the same time lock their workspaces' rows in workspace-id order (reports
//! of one workspace keep their arrival order), so they cannot deadlock each other. A caller that
//! stops waiting does not take its report back: it is written with its group, as a single
//! report used to be written by a task of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{db, run_on, sql};
use crate::store::{Heartbeat, HeartbeatOutcome, StoreError};

/// Most reports in one group.
const MAX_GROUP: usize = 512;
/// Groups written at the same time (each holds a pooled connection while it runs).
const GROUPS_IN_FLIGHT: usize = 4;
/// Reports waiting for a group; beyond it callers wait to enqueue.
const QUEUE: usize = 8_192;

struct Report {
    heartbeat: Heartbeat,
    /// The injected clock's time, or `None` for the database's.
    at: Option<DateTime<Utc>>,
    answer: oneshot::Sender<Result<HeartbeatOutcome, StoreError>>,
}

/// The queue in front of the group writer, started on first use (a store is made outside any
/// runtime) and again if the runtime it ran on has gone.
pub(super) struct Heartbeats {
    sender: Mutex<Option<mpsc::Sender<Report>>>,
    pool: Pool,
    query_timeout: Duration,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats").finish_non_exhaustive()
    }
}

impl Heartbeats {
    pub(super) fn new(pool: Pool, query_timeout: Duration) -> Self {
        Heartbeats {
            sender: Mutex::new(None),
            pool,
            query_timeout,
        }
    }

    /// Records `heartbeat` with its group.
    pub(super) async fn record(
        &self,
        heartbeat: &Heartbeat,
        at: Option<DateTime<Utc>>,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let (answer, answered) = oneshot::channel();
        let mut report = Report {
            heartbeat: heartbeat.clone(),
            at,
            answer,
        };
        // At most twice: the second time with a writer started afresh.
        for _ in 0..2 {
            let sender = self.sender();
            match sender.send(report).await {
                Ok(()) => {
                    return answered
                        .await
                        .unwrap_or_else(|_| Err(StoreError::unavailable(GroupLost)))
                }
                Err(mpsc::error::SendError(back)) => {
                    report = back;
                    self.forget(&sender);
                }
            }
        }
        Err(StoreError::unavailable(GroupLost))
    }

    fn sender(&self) -> mpsc::Sender<Report> {
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(write_groups(rx, self.pool.clone(), self.query_timeout));
                tx
            })
            .clone()
    }

    /// Drops a sender whose writer is gone (its runtime shut down), unless already replaced.
    fn forget(&self, dead: &mpsc::Sender<Report>) {
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if sender.as_ref().is_some_and(|s| s.same_channel(dead)) {
            *sender = None;
        }
    }
}

/// The report's group was not written and no answer came back (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the heartbeat's group was not written")]
struct GroupLost;

/// Takes what is queued, up to a group, whenever a group may start; ends with the queue.
async fn write_groups(mut queue: mpsc::Receiver<Report>, pool: Pool, query_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Whatever arrived while the previous groups were being written goes now.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(report) => group.push(report),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(group, pool, query_timeout).await;
            drop(permit);
        });
    }
}

/// One group in one statement; every report gets its own answer (or the group's error).
async fn write(mut group: Vec<Report>, pool: Pool, query_timeout: Duration) {
    // Lock order: by workspace; a stable sort keeps each workspace's reports in arrival order.
    group.sort_by(|a, b| a.heartbeat.workspace.cmp(&b.heartbeat.workspace));
    let ids: Vec<String> = group
        .iter()
        .map(|r| r.heartbeat.workspace.to_string())
        .collect();
    let reported: Vec<i64> = group.iter().map(|r| r.heartbeat.reported_cents()).collect();
    let seqs: Vec<Option<String>> = group
        .iter()
        .map(|r| r.heartbeat.seq.map(|s| s.to_string()))
        .collect();
    let ats: Vec<Option<DateTime<Utc>>> = group.iter().map(|r| r.at).collect();
    let n = group.len();
    let rows = run_on(pool, query_timeout, move |client| {
        Box::pin(async move {
            let stmt = client
                .prepare_cached(sql::RECORD_HEARTBEATS)
                .await
                .map_err(db)?;
            client
                .query(&stmt, &[&ids, &reported, &seqs, &ats])
                .await
                .map_err(db)
        })
    })
    .await;
    match rows {
        Ok(rows) if rows.len() == n => {
            for (report, row) in group.into_iter().zip(rows) {
                let outcome = if row.get::<_, bool>(0) {
                    Ok(HeartbeatOutcome {
                        recorded_delta_cents: row.get(1),
                        stale: row.get(2),
                    })
                } else {
                    Err(StoreError::NotFound)
                };
                let _ = report.answer.send(outcome);
            }
        }
        Ok(rows) => {
            let message = format!(
                "the heartbeat function returned {} rows for {n}",
                rows.len()
            );
            for report in group {
                let _ = report
                    .answer
                    .send(Err(StoreError::Refused(message.clone())));
            }
        }
        Err(e) => {
            // One error for the whole group: nothing of it was written (short of an
            // ambiguous commit, as for a single report).
            let e = Arc::new(e);
            for report in group {
                let _ = report
                    .answer
                    .send(Err(StoreError::unavailable(SharedError(e.clone()))));
            }
        }
    }
}

/// A group's error, handed to each of its reports.
#[derive(Debug)]
struct SharedError(Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

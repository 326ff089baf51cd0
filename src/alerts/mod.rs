//! Warnings before the cut-off (SPEC §12): per-workspace alert thresholds, the events they
//! produce, and the burn-rate forecast.
//!
//! Everything here is pure: the stores decide events with [`decide`] (the in-process store) or
//! with the same rule in SQL (the Postgres store, `migrations/V5__alerts.sql`), inside the step
//! that records the spend or changes the limit, and keep them in an outbox
//! ([`AlertOutbox`](crate::store::AlertOutbox)) that a sender ([`crate::webhook`]) delivers.
//!
//! # The rule
//! For each period with a limit `L`, a threshold `t` (a percentage) is *reached* when
//! `spend × 100 ≥ t × L`. A change of the workspace's budget — a heartbeat that records spend, a
//! limit set, lowered or raised — compares the state before it with the state after it:
//! - every threshold reached after and not before is a `budget.threshold_crossed` event (so one
//!   heartbeat that crosses 50 and 80 gives two; a threshold can fire again only after spend fell
//!   back below it, since "before" is read at the moment of the change);
//! - a period the store remembers as exceeded (`spend ≥ L`) that is no longer exceeded — its
//!   spend aged out, or its limit was raised or removed — is a `budget.recovered` event (with
//!   threshold 100). Spend that ages out changes nothing by itself, so the stores also sweep the
//!   remembered periods now and then ([`AlertOutbox::sweep_recovered`](crate::store::AlertOutbox::sweep_recovered)).
//!
//! Changing the threshold list fires nothing: both sides of a change are compared with the new
//! list. A workspace whose list is empty gets no events.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::period::{PerPeriod, Period};
use crate::WorkspaceId;

mod forecast;

pub use forecast::exhausted_in_seconds;
pub(crate) use forecast::{forecast, ForecastInput};

/// The thresholds a workspace has until it sets its own: 80 % and 100 % of each limit.
pub const DEFAULT_THRESHOLDS: [u16; 2] = [80, 100];
/// The largest threshold, in percent of the limit.
pub const MAX_THRESHOLD: u16 = 1_000;
/// The most thresholds one PATCH may send.
pub const MAX_THRESHOLDS: usize = 10;

/// A workspace's alert thresholds: percentages of each period's limit, sorted, without
/// duplicates, each in `1..=1000`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AlertThresholds(Vec<u16>);

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds(DEFAULT_THRESHOLDS.to_vec())
    }
}

impl AlertThresholds {
    /// The thresholds, ascending.
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }

    /// Validates a list as sent: at most [`MAX_THRESHOLDS`] entries, each in
    /// `1..=`[`MAX_THRESHOLD`]; sorted and de-duplicated.
    ///
    /// # Errors
    /// [`ThresholdsError`] naming the first problem.
    pub fn new(values: &[i64]) -> Result<Self, ThresholdsError> {
        if values.len() > MAX_THRESHOLDS {
            return Err(ThresholdsError::TooMany);
        }
        let mut list = values
            .iter()
            .map(|&v| {
                u16::try_from(v)
                    .ok()
                    .filter(|v| (1..=MAX_THRESHOLD).contains(v))
                    .ok_or(ThresholdsError::OutOfRange)
            })
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_unstable();
        list.dedup();
        Ok(AlertThresholds(list))
    }

    /// Reads the stored list tolerantly: values outside `1..=1000` are left out, `None` is the
    /// default. Never fails.
    pub fn from_stored(stored: Option<&[i16]>) -> Self {
        match stored {
            None => AlertThresholds::default(),
            Some(values) => {
                let mut list: Vec<u16> = values
                    .iter()
                    .filter_map(|&v| u16::try_from(v).ok())
                    .filter(|v| (1..=MAX_THRESHOLD).contains(v))
                    .collect();
                list.sort_unstable();
                list.dedup();
                AlertThresholds(list)
            }
        }
    }

    /// The `alert_thresholds` value of a PATCH body: `null` restores the default (`Ok(None)`),
    /// an array of integers sets the list.
    ///
    /// # Errors
    /// [`ThresholdsError`] for anything else.
    pub fn from_json(value: &Value) -> Result<Option<Self>, ThresholdsError> {
        match value {
            Value::Null => Ok(None),
            Value::Array(items) => {
                if items.len() > MAX_THRESHOLDS {
                    return Err(ThresholdsError::TooMany);
                }
                let values = items
                    .iter()
                    .map(|v| v.as_i64().ok_or(ThresholdsError::NotAnInteger))
                    .collect::<Result<Vec<_>, _>>()?;
                AlertThresholds::new(&values).map(Some)
            }
            _ => Err(ThresholdsError::NotAnArray),
        }
    }

    /// True when `spend` has reached `threshold` percent of `limit`.
    pub fn reached(threshold: u16, limit: i64, spend: i64) -> bool {
        i128::from(spend) * 100 >= i128::from(threshold) * i128::from(limit)
    }
}

/// Why an `alert_thresholds` value was refused. The messages are meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdsError {
    /// Not an array (nor `null`).
    #[error("alert_thresholds must be an array of integer percentages (1-1000) or null")]
    NotAnArray,
    /// An entry that is not a JSON integer.
    #[error("alert_thresholds entries must be integers (percent of each limit)")]
    NotAnInteger,
    /// An entry outside `1..=1000`.
    #[error("alert_thresholds entries must be between 1 and 1000 (percent of each limit)")]
    OutOfRange,
    /// More than ten entries.
    #[error("alert_thresholds may have at most 10 entries")]
    TooMany,
}

/// The two kinds of alert events.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AlertKind {
    /// Spend reached a threshold of a period's limit.
    ThresholdCrossed,
    /// A period that was exceeded is allowed again.
    Recovered,
}

impl AlertKind {
    /// `budget.threshold_crossed` or `budget.recovered`: the event's `type`.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::ThresholdCrossed => "budget.threshold_crossed",
            AlertKind::Recovered => "budget.recovered",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [AlertKind::ThresholdCrossed, AlertKind::Recovered]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// One decided event, as delivered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AlertEvent {
    /// Unique, and the same on every delivery attempt.
    pub id: String,
    /// What happened.
    pub kind: AlertKind,
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The period's name (text, since a newer replica may know periods this one does not).
    pub period: String,
    /// The threshold in percent (100 for `budget.recovered`).
    pub threshold: u16,
    /// The period's limit when the event was decided (`None` after a limit was removed).
    pub limit: Option<i64>,
    /// The period's spend when the event was decided.
    pub spend: i64,
    /// When the event was decided.
    pub at: DateTime<Utc>,
}

impl AlertEvent {
    /// The webhook body (SPEC §12).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.kind.name(),
            "workspace_id": self.workspace,
            "period": self.period,
            "threshold": self.threshold,
            "limit": self.limit,
            "spend": self.spend,
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
    }
}

/// An event decided by [`decide`], before the store gives it an id and a time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Decided {
    /// What happened.
    pub kind: AlertKind,
    /// The period.
    pub period: Period,
    /// The threshold (100 for a recovery).
    pub threshold: u16,
    /// The limit when decided.
    pub limit: Option<i64>,
    /// The spend when decided.
    pub spend: i64,
}

/// One side of a change: the limits and the spend per period.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// The limit per period.
    pub limits: &'a crate::period::Limits,
    /// The spend per period.
    pub spend: &'a PerPeriod<i64>,
}

/// Decides the events of one change (see the [module docs](self)): `exceeded` holds the periods
/// remembered as exceeded and is updated. Events come in table order, recoveries of a period
/// before its crossings.
pub fn decide(
    thresholds: &AlertThresholds,
    before: Side<'_>,
    after: Side<'_>,
    exceeded: &mut PerPeriod<bool>,
) -> Vec<Decided> {
    let mut events = Vec::new();
    let quiet = thresholds.as_slice().is_empty();
    for p in Period::all() {
        let (old, new) = (before.limits.get(p), after.limits.get(p));
        let (spend_before, spend_after) = (before.spend[p], after.spend[p]);
        let mut event = |kind, threshold, limit, spend| {
            if !quiet {
                events.push(Decided {
                    kind,
                    period: p,
                    threshold,
                    limit,
                    spend,
                });
            }
        };
        // Remembered as exceeded but not so just before this change: its spend aged out.
        if exceeded[p] && old.is_none_or(|l| spend_before < l) {
            event(AlertKind::Recovered, 100, old, spend_before);
            exceeded[p] = false;
        }
        if let Some(limit) = new {
            for &t in thresholds.as_slice() {
                let was = old.is_some_and(|l| AlertThresholds::reached(t, l, spend_before));
                if !was && AlertThresholds::reached(t, limit, spend_after) {
                    event(AlertKind::ThresholdCrossed, t, new, spend_after);
                }
            }
        }
        let now_exceeded = new.is_some_and(|l| spend_after >= l);
        if exceeded[p] && !now_exceeded {
            event(AlertKind::Recovered, 100, new, spend_after);
        }
        exceeded[p] = now_exceeded;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::Limits;

    fn spend(hourly: i64) -> PerPeriod<i64> {
        PerPeriod::from_fn(|p| if p == Period::HOURLY { hourly } else { 0 })
    }

    fn hourly(limit: Option<i64>) -> Limits {
        Limits::none().with(Period::HOURLY, limit)
    }

    fn kinds(events: &[Decided]) -> Vec<(AlertKind, u16)> {
        events.iter().map(|e| (e.kind, e.threshold)).collect()
    }

    #[test]
    fn thresholds_validate_sort_and_dedup() {
        assert_eq!(
            AlertThresholds::from_json(&json!([100, 50, 80, 50]))
                .unwrap()
                .unwrap()
                .as_slice(),
            [50, 80, 100]
        );
        assert_eq!(AlertThresholds::from_json(&Value::Null).unwrap(), None);
        assert_eq!(AlertThresholds::default().as_slice(), [80, 100]);
        for (bad, want) in [
            (json!(80), ThresholdsError::NotAnArray),
            (json!({"a": 1}), ThresholdsError::NotAnArray),
            (json!([0]), ThresholdsError::OutOfRange),
            (json!([1001]), ThresholdsError::OutOfRange),
            (json!([-5]), ThresholdsError::OutOfRange),
            (json!([80.5]), ThresholdsError::NotAnInteger),
            (json!([80.0]), ThresholdsError::NotAnInteger),
            (json!(["80"]), ThresholdsError::NotAnInteger),
            (json!([1e30]), ThresholdsError::NotAnInteger),
            (json!(vec![1; 11]), ThresholdsError::TooMany),
        ] {
            assert_eq!(AlertThresholds::from_json(&bad), Err(want), "{bad}");
        }
        assert_eq!(
            AlertThresholds::from_stored(Some(&[100, -1, 0, 2000, 5, 5])).as_slice(),
            [5, 100]
        );
    }

    #[test]
    fn one_change_can_cross_two_thresholds() {
        let t = AlertThresholds::new(&[50, 80, 100]).unwrap();
        let l = hourly(Some(1_000));
        let mut ex = PerPeriod::default();
        let e = decide(
            &t,
            Side {
                limits: &l,
                spend: &spend(400),
            },
            Side {
                limits: &l,
                spend: &spend(850),
            },
            &mut ex,
        );
        assert_eq!(
            kinds(&e),
            [
                (AlertKind::ThresholdCrossed, 50),
                (AlertKind::ThresholdCrossed, 80)
            ]
        );
        assert!(!ex[Period::HOURLY]);
        // Reaching the limit remembers the period as exceeded; raising the limit recovers it.
        let e = decide(
            &t,
            Side {
                limits: &l,
                spend: &spend(850),
            },
            Side {
                limits: &l,
                spend: &spend(1_000),
            },
            &mut ex,
        );
        assert_eq!(kinds(&e), [(AlertKind::ThresholdCrossed, 100)]);
        assert!(ex[Period::HOURLY]);
        let raised = hourly(Some(5_000));
        let e = decide(
            &t,
            Side {
                limits: &l,
                spend: &spend(1_000),
            },
            Side {
                limits: &raised,
                spend: &spend(1_000),
            },
            &mut ex,
        );
        assert_eq!(kinds(&e), [(AlertKind::Recovered, 100)]);
        assert_eq!(e[0].limit, Some(5_000));
        assert!(!ex[Period::HOURLY]);
    }

    #[test]
    fn lowering_a_limit_is_a_crossing_and_aging_out_is_a_recovery() {
        let t = AlertThresholds::default();
        let mut ex = PerPeriod::default();
        let s = spend(600);
        let e = decide(
            &t,
            Side {
                limits: &hourly(None),
                spend: &s,
            },
            Side {
                limits: &hourly(Some(500)),
                spend: &s,
            },
            &mut ex,
        );
        assert_eq!(
            kinds(&e),
            [
                (AlertKind::ThresholdCrossed, 80),
                (AlertKind::ThresholdCrossed, 100)
            ]
        );
        // The spend aged out to 100 before the next heartbeat, which adds 450: recovered,
        // then 100 % is crossed again.
        let l = hourly(Some(500));
        let e = decide(
            &t,
            Side {
                limits: &l,
                spend: &spend(100),
            },
            Side {
                limits: &l,
                spend: &spend(550),
            },
            &mut ex,
        );
        assert_eq!(
            kinds(&e),
            [
                (AlertKind::Recovered, 100),
                (AlertKind::ThresholdCrossed, 80),
                (AlertKind::ThresholdCrossed, 100)
            ]
        );
        // Removing the limit of an exceeded period allows it again.
        let e = decide(
            &t,
            Side {
                limits: &l,
                spend: &spend(550),
            },
            Side {
                limits: &hourly(None),
                spend: &spend(550),
            },
            &mut ex,
        );
        assert_eq!(kinds(&e), [(AlertKind::Recovered, 100)]);
        assert_eq!(e[0].limit, None);
    }

    #[test]
    fn an_empty_list_is_quiet_and_a_limit_of_zero_is_reached_at_once() {
        let (l0, none, zero) = (hourly(Some(0)), hourly(None), spend(0));
        let side = |limits| Side {
            limits,
            spend: &zero,
        };
        let mut ex = PerPeriod::default();
        let quiet = AlertThresholds::new(&[]).unwrap();
        assert!(decide(&quiet, side(&none), side(&l0), &mut ex).is_empty());
        assert!(ex[Period::HOURLY], "the state is kept even when quiet");
        let mut ex = PerPeriod::default();
        let e = decide(&AlertThresholds::default(), side(&none), side(&l0), &mut ex);
        assert_eq!(e.len(), 2);
        assert!(!AlertThresholds::reached(1000, i64::MAX, i64::MAX));
        assert!(AlertThresholds::reached(100, i64::MAX, i64::MAX));
    }

    #[test]
    fn event_json() {
        let e = AlertEvent {
            id: "evt-1".into(),
            kind: AlertKind::ThresholdCrossed,
            workspace: WorkspaceId::new("ws-1").unwrap(),
            period: "hourly".into(),
            threshold: 80,
            limit: Some(1000),
            spend: 850,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        assert_eq!(
            e.to_json(),
            json!({"id": "evt-1", "type": "budget.threshold_crossed", "workspace_id": "ws-1",
                   "period": "hourly", "threshold": 80, "limit": 1000, "spend": 850,
                   "at": "2023-11-14T22:13:20.000000Z"})
        );
        assert_eq!(
            AlertKind::from_name("budget.recovered"),
            Some(AlertKind::Recovered)
        );
    }
}

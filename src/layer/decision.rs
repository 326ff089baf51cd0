//! What the layer decided for one request, and the responses and headers that follow from it.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::per_thread::Slots;
use crate::period::{PerPeriod, Period};
use crate::store::BudgetStatus;
use crate::WorkspaceId;

/// The layer's decision for a checked request. A request that reaches the inner service carries
/// it in its extensions (an axum handler takes it with `Extension<BudgetDecision>`); a response
/// the layer makes itself (402, 503) carries it in the response's extensions.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BudgetDecision {
    /// Under every limit (or no limits): the request went to the inner service.
    Allowed {
        /// The workspace.
        workspace: WorkspaceId,
        /// Its limits and spend at check time.
        status: BudgetStatus,
    },
    /// The store does not know the workspace: never blocked.
    Unregistered {
        /// The workspace.
        workspace: WorkspaceId,
    },
    /// Over one or more limits: refused with `402 Payment Required`.
    Blocked(Blocked),
    /// The store could not answer; the request was let through (fail-open) or refused with
    /// `503` (fail-closed).
    Unavailable {
        /// The workspace.
        workspace: WorkspaceId,
        /// Why there was no answer.
        cause: UnavailableCause,
        /// True when the request was let through.
        failed_open: bool,
    },
}

impl BudgetDecision {
    /// The workspace the decision is about.
    pub fn workspace(&self) -> &WorkspaceId {
        match self {
            BudgetDecision::Allowed { workspace, .. }
            | BudgetDecision::Unregistered { workspace }
            | BudgetDecision::Unavailable { workspace, .. } => workspace,
            BudgetDecision::Blocked(b) => &b.workspace,
        }
    }

    /// True when the request reaches the inner service.
    pub fn is_allowed(&self) -> bool {
        match self {
            BudgetDecision::Allowed { .. } | BudgetDecision::Unregistered { .. } => true,
            BudgetDecision::Blocked(_) => false,
            BudgetDecision::Unavailable { failed_open, .. } => *failed_open,
        }
    }

    /// The metric label: `allowed`, `unregistered`, `blocked`, `failed_open`, `failed_closed`.
    pub fn label(&self) -> &'static str {
        match self {
            BudgetDecision::Allowed { .. } => "allowed",
            BudgetDecision::Unregistered { .. } => "unregistered",
            BudgetDecision::Blocked(_) => "blocked",
            BudgetDecision::Unavailable {
                failed_open: true, ..
            } => "failed_open",
            BudgetDecision::Unavailable {
                failed_open: false, ..
            } => "failed_closed",
        }
    }
}

/// Why the store gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableCause {
    /// The check took longer than the configured timeout.
    Timeout,
    /// The store returned an error.
    StoreError,
    /// The breaker is open after repeated failures: the store was not asked.
    BreakerOpen,
}

impl UnavailableCause {
    /// Every cause, in the order of [`index`](Self::index).
    pub(crate) const ALL: [UnavailableCause; 3] = [
        UnavailableCause::Timeout,
        UnavailableCause::StoreError,
        UnavailableCause::BreakerOpen,
    ];

    /// Position in [`ALL`](Self::ALL), for per-cause arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            UnavailableCause::Timeout => 0,
            UnavailableCause::StoreError => 1,
            UnavailableCause::BreakerOpen => 2,
        }
    }

    /// The metric and log label: `timeout`, `store_error`, `breaker_open`.
    pub fn label(self) -> &'static str {
        match self {
            UnavailableCause::Timeout => "timeout",
            UnavailableCause::StoreError => "store_error",
            UnavailableCause::BreakerOpen => "breaker_open",
        }
    }
}

/// A refusal: which periods are over, by how much, and when waiting helps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Its limits and spend at check time.
    pub status: BudgetStatus,
    /// Every exceeded period, in table order.
    pub exceeded: Vec<Period>,
    /// Per exceeded period, whole seconds (rounded up, at least 1) until enough spend has left
    /// the window for spend to be under the limit if nothing new is spent; `None` for a limit of
    /// 0 (no wait helps) or when the ledger could not be asked in time.
    pub retry_after_seconds: PerPeriod<Option<u64>>,
}

impl Blocked {
    pub(crate) fn new(
        workspace: WorkspaceId,
        status: BudgetStatus,
        waits: Option<PerPeriod<Option<Duration>>>,
    ) -> Self {
        let exceeded = status.exceeded_periods();
        let retry_after_seconds = PerPeriod::from_fn(|p| {
            let wait = waits.as_ref()?[p]?;
            exceeded
                .contains(&p)
                .then(|| Period::whole_seconds_up(wait))
        });
        Blocked {
            workspace,
            status,
            exceeded,
            retry_after_seconds,
        }
    }

    /// The `Retry-After` value: the longest wait among the exceeded periods; `None` when any of
    /// them has no wait that helps.
    pub fn retry_after(&self) -> Option<u64> {
        self.exceeded
            .iter()
            .map(|p| self.retry_after_seconds[*p])
            .try_fold(0, |max, s| s.map(|s| max.max(s)))
    }

    /// The 402 body: `error`, `exceeded_periods` in table order, and for each exceeded period
    /// its `limit`, `spend`, `remaining`, `retry_after_seconds` and `exhausted_in_seconds`
    /// (always 0: it is exhausted) (see the [module docs](super)).
    pub fn body(&self) -> Value {
        let periods: Map<String, Value> = self
            .exceeded
            .iter()
            .map(|&p| {
                let mut detail = self.status.period(p).to_json();
                detail.insert(
                    "retry_after_seconds".into(),
                    json!(self.retry_after_seconds[p]),
                );
                // An exceeded period is exhausted now (SPEC §12).
                detail.insert("exhausted_in_seconds".into(), json!(0));
                (p.name().to_owned(), Value::Object(detail))
            })
            .collect();
        json!({
            "error": "workspace budget limit exceeded",
            "exceeded_periods": self.exceeded,
            "periods": periods,
        })
    }
}

/// The 402 response for `blocked`.
pub(crate) fn payment_required(blocked: &Blocked) -> Response<Bytes> {
    let mut res = crate::response::json(StatusCode::PAYMENT_REQUIRED, &blocked.body());
    if let Some(secs) = blocked.retry_after() {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// `RateLimit-Policy` (every limited period: quota in cents, window in seconds).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (remaining cents of the tightest period).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Budget headers after the IETF RateLimit header fields draft, with USD cents as the quota
/// unit. For limits `{"hourly": 1000, "monthly": 20000}` and spend 250 in both windows:
///
/// ```text
/// RateLimit-Policy: "hourly";q=1000;w=3600, "monthly";q=20000;w=2592000
/// RateLimit: "hourly";r=750
/// ```
///
/// `RateLimit` names the period with the least remaining. Nothing is added without limits.
pub(crate) fn insert_budget_headers(values: HeaderValues, headers: &mut HeaderMap) {
    if let Some((policy, current)) = values {
        headers.insert(RATELIMIT_POLICY.clone(), policy);
        headers.insert(RATELIMIT.clone(), current);
    }
}

/// Budget header values (`RateLimit-Policy`, `RateLimit`), `None` without limits.
pub(crate) type HeaderValues = Option<(HeaderValue, HeaderValue)>;

/// The budget header values for `status`, memoized per worker thread. Rendering costs two
/// allocations and ~1,600 instructions a proxied request (callgrind, BENCHMARKS.md); a memo hit
/// costs a hash of the status and a comparison. The memo maps a status to what it renders to,
/// so it is never stale: a new limit or new spend is a new key. A collision only costs a render.
pub(crate) fn budget_headers(status: &BudgetStatus) -> HeaderValues {
    thread_local! {
        /// 256 slots (~45 KiB a thread): statuses served in turn beyond that re-render.
        static MEMO: RefCell<Slots<(BudgetStatus, HeaderValues)>> =
            const { RefCell::new(Slots::new(256, 0x6865_6164)) };
    }
    MEMO.try_with(|memo| {
        let mut memo = memo.borrow_mut();
        let slot = memo.slot(status);
        match slot {
            Some((memoized, values)) if memoized == status => values.clone(),
            _ => {
                let values = render_budget_headers(status);
                *slot = Some((*status, values.clone()));
                values
            }
        }
    })
    // Thread teardown: no memo.
    .unwrap_or_else(|_| render_budget_headers(status))
}

fn render_budget_headers(status: &BudgetStatus) -> HeaderValues {
    let mut numbers = itoa::Buffer::new();
    let mut policy = String::with_capacity(96);
    let mut tightest: Option<(Period, i64)> = None;
    for line in status.periods() {
        let Some(limit) = line.limit else { continue };
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        policy.push('"');
        policy.push_str(line.period.name());
        policy.push_str("\";q=");
        policy.push_str(numbers.format(limit));
        policy.push_str(";w=");
        policy.push_str(numbers.format(line.period.window().as_secs()));
        let remaining = line.remaining.unwrap_or(limit).max(0);
        if tightest.is_none_or(|(_, r)| remaining < r) {
            tightest = Some((line.period, remaining));
        }
    }
    let (period, remaining) = tightest?;
    let mut current = String::with_capacity(32);
    current.push('"');
    current.push_str(period.name());
    current.push_str("\";r=");
    current.push_str(numbers.format(remaining));
    // Period names and digits are always valid header text.
    Some((
        HeaderValue::from_str(&policy).ok()?,
        HeaderValue::from_str(&current).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{Limits, Spend};

    fn status(limits: &[(Period, i64)], spend: i64) -> BudgetStatus {
        let limits = limits
            .iter()
            .fold(Limits::none(), |l, &(p, c)| l.with(p, Some(c)));
        BudgetStatus {
            limits,
            spend: Spend::from_fn(|_| spend),
        }
    }

    fn waits(secs: &[(Period, f64)]) -> PerPeriod<Option<Duration>> {
        let mut w = PerPeriod::default();
        for &(p, s) in secs {
            w[p] = Some(Duration::from_secs_f64(s));
        }
        w
    }

    #[test]
    fn body_and_retry_after() {
        let ws = WorkspaceId::new("ws-1").unwrap();
        let s = status(
            &[
                (Period::HOURLY, 1000),
                (Period::DAILY, 5000),
                (Period::WEEKLY, 1200),
            ],
            1250,
        );
        let b = Blocked::new(
            ws.clone(),
            s,
            Some(waits(&[(Period::HOURLY, 1799.2), (Period::WEEKLY, 0.3)])),
        );
        assert_eq!(b.exceeded, [Period::HOURLY, Period::WEEKLY]);
        assert_eq!(
            b.retry_after_seconds[Period::HOURLY],
            Some(1800),
            "rounded up"
        );
        assert_eq!(b.retry_after_seconds[Period::WEEKLY], Some(1), "at least 1");
        assert_eq!(b.retry_after(), Some(1800), "the longest");
        assert_eq!(
            serde_json::to_string(&b.body()).unwrap(),
            r#"{"error":"workspace budget limit exceeded","exceeded_periods":["hourly","weekly"],"periods":{"hourly":{"limit":1000,"spend":1250,"remaining":-250,"retry_after_seconds":1800,"exhausted_in_seconds":0},"weekly":{"limit":1200,"spend":1250,"remaining":-50,"retry_after_seconds":1,"exhausted_in_seconds":0}}}"#
        );

        let zero = status(&[(Period::HOURLY, 1000), (Period::MONTHLY, 0)], 1250);
        let b = Blocked::new(ws.clone(), zero, Some(waits(&[(Period::HOURLY, 10.0)])));
        assert_eq!(b.retry_after(), None, "a limit of 0: no wait helps");
        assert_eq!(
            b.body()["periods"]["monthly"]["retry_after_seconds"],
            Value::Null
        );

        let unknown = Blocked::new(ws, status(&[(Period::HOURLY, 1)], 5), None);
        assert_eq!(unknown.retry_after(), None);
    }

    #[test]
    fn budget_header_values() {
        // Through the memo, asked twice: a miss, then a hit that must say the same.
        let headers = |s: BudgetStatus| {
            let mut h = HeaderMap::new();
            insert_budget_headers(budget_headers(&s), &mut h);
            assert_eq!(budget_headers(&s), render_budget_headers(&s));
            h
        };
        let h = headers(status(
            &[(Period::HOURLY, 1000), (Period::MONTHLY, 20000)],
            250,
        ));
        assert_eq!(
            h[&RATELIMIT_POLICY],
            r#""hourly";q=1000;w=3600, "monthly";q=20000;w=2592000"#
        );
        assert_eq!(h[&RATELIMIT], r#""hourly";r=750"#);

        let h = headers(status(&[(Period::DAILY, 100)], 250));
        assert_eq!(h[&RATELIMIT], r#""daily";r=0"#, "never negative");

        assert!(headers(status(&[], 250)).is_empty());

        // New spend under the same limits is a new key: never the memoized old values.
        for spend in [0, 1, 999, 1000, 1, 0] {
            let h = headers(status(&[(Period::HOURLY, 1000)], spend));
            let left = 1000 - spend;
            assert_eq!(h[&RATELIMIT], format!(r#""hourly";r={left}"#).as_str());
        }
    }
}

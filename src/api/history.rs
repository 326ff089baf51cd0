//! `GET /workspaces/{id}/spend` (SPEC §13): spend per UTC hour or day, exact from the ledger.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Response, StatusCode};
use serde_json::json;

use super::{require_acting_for, ApiError, Principal};
use crate::response::json;
use crate::store::BudgetStore;
use crate::WorkspaceId;

/// Most points one request may ask for.
pub(crate) const MAX_POINTS: i64 = 1_000;

/// A bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Hour,
    Day,
}

impl Step {
    fn parse(raw: &str) -> Result<Step, ApiError> {
        match raw {
            "hour" => Ok(Step::Hour),
            "day" => Ok(Step::Day),
            _ => Err(ApiError::bad("step must be hour or day")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }

    fn seconds(self) -> i64 {
        match self {
            Step::Hour => 3_600,
            Step::Day => 86_400,
        }
    }

    /// How far back `since` defaults to: 7 days by hour, 30 by day.
    fn default_span(self) -> chrono::Duration {
        match self {
            Step::Hour => chrono::Duration::days(7),
            Step::Day => chrono::Duration::days(30),
        }
    }

    /// The start of the UTC-aligned bucket holding `t`.
    fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let secs = t.timestamp().div_euclid(self.seconds()) * self.seconds();
        DateTime::from_timestamp(secs, 0).unwrap_or(t)
    }
}

/// The request's range: the first bucket's start, and how many buckets.
#[derive(Debug, PartialEq, Eq)]
struct Range {
    step: Step,
    first: DateTime<Utc>,
    buckets: usize,
}

/// `step=hour|day` (default hour), `since`, `until` as RFC 3339 with any offset. Buckets are
/// those starting in `[since rounded down, until)`; without `until`, up to now with the current
/// bucket included; without `since`, `until` minus 7 days by hour or 30 by day.
fn parse_range(query: Option<&str>, now: DateTime<Utc>) -> Result<Range, ApiError> {
    let (mut step, mut since, mut until) = (None, None, None);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "step" => step = Some(Step::parse(&value)?),
            "since" => since = Some(time(&value, "since")?),
            "until" => until = Some(time(&value, "until")?),
            _ => {}
        }
    }
    let step = step.unwrap_or(Step::Hour);
    // The last bucket: the one before `until`, or the current one.
    let last = match until {
        Some(until) => step.floor(until - chrono::Duration::microseconds(1)),
        None => step.floor(now),
    };
    let since = since.unwrap_or_else(|| until.unwrap_or(now) - step.default_span());
    let first = step.floor(since);
    if until.is_some_and(|until| first >= until) {
        return Err(ApiError::bad("since must be before until"));
    }
    let buckets = (last - first).num_seconds().div_euclid(step.seconds()) + 1;
    if buckets > MAX_POINTS {
        return Err(ApiError::bad(format!(
            "at most {MAX_POINTS} points per request; asked for {buckets}"
        )));
    }
    Ok(Range {
        step,
        first,
        buckets: usize::try_from(buckets)
            .map_err(|_| ApiError::bad("since must be before until"))?,
    })
}

fn time(raw: &str, what: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad(format!(
                "{what} must be an RFC 3339 time, such as 2026-11-29T10:00:00Z"
            ))
        })
}

/// `%XX` decoded; a `+` stays a `+` (an RFC 3339 offset sent unencoded).
fn percent_decode(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad("malformed percent-encoding in the query"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad("the query is not UTF-8"))
}

pub(super) async fn get(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
    query: Option<&str>,
) -> Result<Response<Bytes>, ApiError> {
    let range = parse_range(query, Utc::now())?;
    require_acting_for(principal, &workspace)?;
    let step = Duration::from_secs(range.step.seconds().unsigned_abs());
    let spend = store
        .spend_history(&workspace, step, range.first, range.buckets)
        .await?;
    let points: Vec<_> = spend
        .iter()
        .enumerate()
        .map(|(i, cents)| {
            let at = range.first + chrono::Duration::seconds(range.step.seconds() * i as i64);
            json!({
                "at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "spend": cents,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "step": range.step.name(), "points": points }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ranges() {
        let now = at("2026-11-29T10:30:00Z");
        // Defaults: hourly, 7 days back, the current hour included.
        let r = parse_range(None, now).unwrap();
        assert_eq!(
            (r.step, r.first, r.buckets),
            (Step::Hour, at("2026-11-22T10:00:00Z"), 169)
        );
        let r = parse_range(Some("step=day"), now).unwrap();
        assert_eq!((r.first, r.buckets), (at("2026-10-30T00:00:00Z"), 31));
        // since rounded down; buckets starting before until; any offset.
        let r = parse_range(
            Some("since=2026-11-29T01:59:59%2B02:00&until=2026-11-29T03:00:00Z"),
            now,
        )
        .unwrap();
        assert_eq!((r.first, r.buckets), (at("2026-11-28T23:00:00Z"), 4));
        let r = parse_range(
            Some("since=2026-11-29T01:00:00+01:00&until=2026-11-29T00:00:01Z"),
            now,
        )
        .unwrap();
        assert_eq!((r.first, r.buckets), (at("2026-11-29T00:00:00Z"), 1));
        // Exactly 1,000 points is fine; one more is not.
        let ok = format!(
            "since={}",
            (now - chrono::Duration::hours(999)).to_rfc3339()
        );
        assert_eq!(parse_range(Some(&ok), now).unwrap().buckets, 1_000);
        for bad in [
            "step=week",
            "step=",
            "since=yesterday",
            "until=2026-11-29",
            "since=2026-11-29T10:00:00Z&until=2026-11-29T10:00:00Z",
            "since=2026-11-29T11:00:00Z&until=2026-11-29T10:00:00Z",
            "since=2026-01-01T00:00:00Z",
            "step=day&since=2020-01-01T00:00:00Z",
            "since=%zz",
        ] {
            assert!(
                matches!(parse_range(Some(bad), now), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}

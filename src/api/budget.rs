//! Budget config (GET/PATCH), workspace listing and removal.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{require_acting_for, require_admin, workspace_in_path, ApiError, Principal};
use crate::alerts::AlertThresholds;

use crate::period::{LimitsPatch, Period};
use crate::response::json;
use crate::store::{BudgetPatch, BudgetReport, BudgetStore};
use crate::WorkspaceId;

/// Default page size of `GET /workspaces`.
const DEFAULT_PAGE: usize = 100;
/// Largest page size of `GET /workspaces`; larger requests are cut to it.
const MAX_PAGE: usize = 1_000;
/// Largest page size of `GET /workspaces?include=status`: each entry reads its windows and its
/// forecast, whose cost grows with the workspace's ledger entries in its limited windows.
const MAX_STATUS_PAGE: usize = 100;

/// The `GET /workspaces/{id}/budget` body for `report`: every period in table order with its
/// limit, spend, remaining, window and `exhausted_in_seconds`, for an exceeded period its
/// `retry_after_seconds` (as in the 402 body), the legacy monthly fields, and the alert
/// thresholds.
pub(crate) fn budget_json(report: &BudgetReport) -> Value {
    let status = &report.status;
    let periods: Map<String, Value> = status
        .periods()
        .map(|line| {
            let mut detail = line.to_json();
            detail.insert(
                "window_seconds".into(),
                json!(line.period.window().as_secs()),
            );
            detail.insert(
                "exhausted_in_seconds".into(),
                json!(report.exhausted_in_seconds[line.period]),
            );
            if status.exceeded_periods().contains(&line.period) {
                detail.insert(
                    "retry_after_seconds".into(),
                    json!(report.retry_after[line.period].map(Period::whole_seconds_up)),
                );
            }
            (line.period.name().to_owned(), Value::Object(detail))
        })
        .collect();
    let monthly = status.period(Period::MONTHLY);
    json!({
        "periods": periods,
        "budget_limit": monthly.limit,
        "monthly_spend": monthly.spend,
        "budget_remaining": monthly.remaining,
        "alert_thresholds": report.alert_thresholds.as_slice(),
    })
}

pub(super) async fn get(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
) -> Result<Response<Bytes>, ApiError> {
    require_acting_for(principal, &workspace)?;
    let report = store.report(&workspace).await?;
    Ok(json(StatusCode::OK, &budget_json(&report)))
}

/// The PATCH body: `budget_limits` (merge patch over periods) or the legacy `budget_limit`
/// (monthly only), not both, and/or `alert_thresholds`; at least one of them. Other top-level
/// keys are ignored. Everything is validated before anything is written.
fn parse_patch(body: &Value) -> Result<BudgetPatch, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad("body must be a JSON object"));
    };
    let thresholds = map
        .get("alert_thresholds")
        .map(|t| AlertThresholds::from_json(t).map_err(ApiError::bad))
        .transpose()?;
    let limits = match (map.get("budget_limits"), map.get("budget_limit")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "send either budget_limits or budget_limit, not both",
            ))
        }
        (None, None) if thresholds.is_none() => {
            return Err(ApiError::bad(format!(
                "body must have budget_limits (an object of {}), budget_limit or alert_thresholds",
                Period::names_list()
            )))
        }
        (None, None) => LimitsPatch::new(),
        (Some(limits), None) => LimitsPatch::from_json(limits).map_err(ApiError::bad)?,
        (None, Some(legacy)) => {
            // The legacy field is the monthly limit: validate it as one.
            let as_monthly = json!({ Period::MONTHLY.name(): legacy });
            LimitsPatch::from_json(&as_monthly)
                .map_err(|e| ApiError::bad(format!("budget_limit: {e}")))?
        }
    };
    Ok(BudgetPatch {
        limits,
        alert_thresholds: thresholds,
    })
}

pub(super) async fn patch(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
    body: &Value,
) -> Result<Response<Bytes>, ApiError> {
    let patch = parse_patch(body)?;
    require_admin(principal)?;
    // The report comes from the same atomic step: a failure means nothing was changed.
    let report = store.patch_budget(&workspace, &patch).await?;
    Ok(json(StatusCode::OK, &budget_json(&report)))
}

pub(super) async fn remove(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
) -> Result<Response<Bytes>, ApiError> {
    require_admin(principal)?;
    store.remove(&workspace).await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "workspace_id": workspace, "removed": true }),
    ))
}

pub(super) async fn list(
    store: &dyn BudgetStore,
    principal: &Principal,
    query: Option<&str>,
) -> Result<Response<Bytes>, ApiError> {
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    let mut with_status = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => after = Some(workspace_in_path(value)?),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::bad("limit must be a positive integer"))?
                    .min(MAX_PAGE);
            }
            "include" => match value {
                "status" => with_status = true,
                "" => {}
                _ => return Err(ApiError::bad("include must be status")),
            },
            _ => {}
        }
    }
    require_admin(principal)?;
    let (more, workspaces, last) = if with_status {
        let limit = limit.min(MAX_STATUS_PAGE);
        let page = store.list_reports(after.as_ref(), limit).await?;
        let last = page.last().map(|(id, _)| id.clone());
        // Whether another page follows, from the ids alone (a report is far dearer than an id,
        // and an id left out of the page — removed meanwhile — must not end the paging).
        let more = match &last {
            Some(last) => !store.list_workspaces(Some(last), 1).await?.is_empty(),
            None => false,
        };
        let listed = page
            .iter()
            .map(|(id, report)| {
                let mut entry = budget_json(report);
                entry["workspace_id"] = json!(id);
                entry["exceeded_periods"] = json!(report
                    .status
                    .exceeded_periods()
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>());
                entry
            })
            .collect::<Vec<_>>();
        (more, listed, last)
    } else {
        // One more than asked tells whether another page follows.
        let mut ids = store.list_workspaces(after.as_ref(), limit + 1).await?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        let listed = ids.iter().map(|id| json!({ "workspace_id": id })).collect();
        (more, listed, ids.pop())
    };
    let mut body = json!({ "workspaces": workspaces });
    if more {
        body["next_after"] = json!(last);
    }
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{Limits, PerPeriod, Spend};
    use crate::store::BudgetStatus;

    #[test]
    fn get_shape() {
        let status = BudgetStatus {
            limits: Limits::none()
                .with(Period::HOURLY, Some(100))
                .with(Period::MONTHLY, Some(2000)),
            spend: Spend::from_fn(|_| 40),
        };
        let report = BudgetReport {
            status,
            alert_thresholds: AlertThresholds::default(),
            exhausted_in_seconds: PerPeriod::from_fn(|p| (p == Period::HOURLY).then_some(5_400)),
            retry_after: PerPeriod::default(),
        };
        assert_eq!(
            budget_json(&report),
            json!({"periods": {
                "hourly": {"limit": 100, "spend": 40, "remaining": 60, "window_seconds": 3600,
                           "exhausted_in_seconds": 5400},
                "daily": {"limit": null, "spend": 40, "remaining": null, "window_seconds": 86400,
                          "exhausted_in_seconds": null},
                "weekly": {"limit": null, "spend": 40, "remaining": null, "window_seconds": 604800,
                           "exhausted_in_seconds": null},
                "monthly": {"limit": 2000, "spend": 40, "remaining": 1960, "window_seconds": 2592000,
                            "exhausted_in_seconds": null}},
             "budget_limit": 2000, "monthly_spend": 40, "budget_remaining": 1960,
             "alert_thresholds": [80, 100]})
        );
        let keys: Vec<_> = budget_json(&report)["periods"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            ["hourly", "daily", "weekly", "monthly"],
            "table order"
        );
    }

    #[test]
    fn patch_bodies() {
        let ok = |v: Value| parse_patch(&v).unwrap();
        assert_eq!(
            ok(json!({"budget_limits": {"hourly": 100}}))
                .limits
                .get(Period::HOURLY),
            Some(Some(100))
        );
        assert_eq!(
            ok(json!({"budget_limit": 2000}))
                .limits
                .get(Period::MONTHLY),
            Some(Some(2000))
        );
        assert_eq!(
            ok(json!({"budget_limit": null}))
                .limits
                .get(Period::MONTHLY),
            Some(None)
        );
        assert_eq!(
            ok(json!({"budget_limits": {}, "note": "ignored"})),
            BudgetPatch::default()
        );
        let both = ok(json!({"budget_limits": {"daily": 5}, "alert_thresholds": [100, 50]}));
        assert_eq!(both.limits.get(Period::DAILY), Some(Some(5)));
        assert_eq!(
            both.alert_thresholds,
            Some(Some(AlertThresholds::new(&[50, 100]).unwrap()))
        );
        assert_eq!(
            ok(json!({"alert_thresholds": null})).alert_thresholds,
            Some(None)
        );
        for (body, want) in [
            (json!([1]), "must be a JSON object"),
            (json!({}), "must have budget_limits"),
            (
                json!({"budget_limits": {"hourly": 1}, "alert_thresholds": [0]}),
                "between 1 and 1000",
            ),
            (
                json!({"budget_limits": {"hourly": -1}, "alert_thresholds": [50]}),
                "must be >= 0",
            ),
            (json!({"alert_thresholds": "80"}), "must be an array"),
            (json!({"alert_thresholds": vec![1; 11]}), "at most 10"),
            (json!({"budget_limits": {}, "budget_limit": 1}), "not both"),
            (json!({"budget_limits": 5}), "must be a JSON object"),
            (
                json!({"budget_limits": {"yearly": 1}}),
                "allowed periods: hourly, daily, weekly, monthly",
            ),
            (
                json!({"budget_limit": -1}),
                "budget_limit: limit for monthly must be >= 0",
            ),
            (json!({"budget_limit": "100"}), "must be an integer"),
            (json!({"budget_limit": 1.5}), "must be an integer"),
        ] {
            match parse_patch(&body) {
                Err(ApiError::BadRequest(msg)) => assert!(msg.contains(want), "{body}: {msg}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}

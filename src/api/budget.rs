//! Budget config (GET/PATCH), workspace listing and removal.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{require_acting_for, require_admin, workspace_in_path, ApiError, Principal};
use crate::period::{LimitsPatch, Period};
use crate::response::json;
use crate::store::{BudgetStatus, BudgetStore};
use crate::WorkspaceId;

/// Default page size of `GET /workspaces`.
const DEFAULT_PAGE: usize = 100;
/// Largest page size of `GET /workspaces`; larger requests are cut to it.
const MAX_PAGE: usize = 1_000;

/// The `GET /workspaces/{id}/budget` body for `status`: every period in table order with its
/// limit, spend, remaining and window, plus the legacy monthly fields.
pub(crate) fn budget_json(status: &BudgetStatus) -> Value {
    let periods: Map<String, Value> = status
        .periods()
        .map(|line| {
            let mut detail = line.to_json();
            detail.insert(
                "window_seconds".into(),
                json!(line.period.window().as_secs()),
            );
            (line.period.name().to_owned(), Value::Object(detail))
        })
        .collect();
    let monthly = status.period(Period::MONTHLY);
    json!({
        "periods": periods,
        "budget_limit": monthly.limit,
        "monthly_spend": monthly.spend,
        "budget_remaining": monthly.remaining,
    })
}

pub(super) async fn get(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
) -> Result<Response<Bytes>, ApiError> {
    require_acting_for(principal, &workspace)?;
    let status = store.status(&workspace).await?;
    Ok(json(StatusCode::OK, &budget_json(&status)))
}

/// The PATCH body: exactly one of `budget_limits` (merge patch over periods) or the legacy
/// `budget_limit` (monthly only). Other top-level keys are ignored.
fn parse_patch(body: &Value) -> Result<LimitsPatch, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad("body must be a JSON object"));
    };
    match (map.get("budget_limits"), map.get("budget_limit")) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "send either budget_limits or budget_limit, not both",
        )),
        (None, None) => Err(ApiError::bad(format!(
            "body must have budget_limits (an object of {}) or budget_limit",
            Period::names_list()
        ))),
        (Some(limits), None) => LimitsPatch::from_json(limits).map_err(ApiError::bad),
        (None, Some(legacy)) => {
            // The legacy field is the monthly limit: validate it as one.
            let as_monthly = json!({ Period::MONTHLY.name(): legacy });
            LimitsPatch::from_json(&as_monthly)
                .map_err(|e| ApiError::bad(format!("budget_limit: {e}")))
        }
    }
}

pub(super) async fn patch(
    store: &dyn BudgetStore,
    principal: &Principal,
    workspace: WorkspaceId,
    body: &Value,
) -> Result<Response<Bytes>, ApiError> {
    let patch = parse_patch(body)?;
    require_admin(principal)?;
    // The status comes from the same atomic step: a failure means nothing was changed.
    let status = store.patch_limits(&workspace, &patch).await?;
    Ok(json(StatusCode::OK, &budget_json(&status)))
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
            _ => {}
        }
    }
    require_admin(principal)?;
    // One more than asked tells whether another page follows.
    let mut ids = store.list_workspaces(after.as_ref(), limit + 1).await?;
    let more = ids.len() > limit;
    ids.truncate(limit);
    let mut body = json!({
        "workspaces": ids.iter().map(|id| json!({ "workspace_id": id })).collect::<Vec<_>>(),
    });
    if more {
        body["next_after"] = json!(ids.last());
    }
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{Limits, Spend};

    #[test]
    fn get_shape() {
        let status = BudgetStatus {
            limits: Limits::none()
                .with(Period::HOURLY, Some(100))
                .with(Period::MONTHLY, Some(2000)),
            spend: Spend::from_fn(|_| 40),
        };
        assert_eq!(
            budget_json(&status),
            json!({"periods": {
                "hourly": {"limit": 100, "spend": 40, "remaining": 60, "window_seconds": 3600},
                "daily": {"limit": null, "spend": 40, "remaining": null, "window_seconds": 86400},
                "weekly": {"limit": null, "spend": 40, "remaining": null, "window_seconds": 604800},
                "monthly": {"limit": 2000, "spend": 40, "remaining": 1960, "window_seconds": 2592000}},
             "budget_limit": 2000, "monthly_spend": 40, "budget_remaining": 1960})
        );
        let keys: Vec<_> = budget_json(&status)["periods"]
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
            ok(json!({"budget_limits": {"hourly": 100}})).get(Period::HOURLY),
            Some(Some(100))
        );
        assert_eq!(
            ok(json!({"budget_limit": 2000})).get(Period::MONTHLY),
            Some(Some(2000))
        );
        assert_eq!(
            ok(json!({"budget_limit": null})).get(Period::MONTHLY),
            Some(None)
        );
        assert_eq!(
            ok(json!({"budget_limits": {}, "note": "ignored"})),
            LimitsPatch::new()
        );
        for (body, want) in [
            (json!([1]), "must be a JSON object"),
            (json!({}), "must have budget_limits"),
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

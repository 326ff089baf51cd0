//! Heartbeat ingestion and agent registration.

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::auth::{generate_token, hash_token};
use super::{require_acting_for, require_admin, workspace_id, ApiError, Principal};
use crate::response::json;
use crate::store::{BudgetStore, Heartbeat, Registration, Registry};
use crate::WorkspaceId;

/// The fields of a heartbeat the API reads, as raw JSON so that integers of any size are seen
/// as integers (and clamped) rather than as floats. Other fields agents send are ignored.
#[derive(Deserialize)]
struct HeartbeatBody<'a> {
    #[serde(borrow, default)]
    workspace_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    monthly_spend: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
}

/// A JSON integer literal: optional minus, digits, nothing else.
fn integer_literal(raw: &str) -> Option<(bool, &str)> {
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, raw),
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some((negative, digits))
}

fn workspace_field(raw: Option<&RawValue>) -> Result<WorkspaceId, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::bad("workspace_id is required"))?;
    let id: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::bad("workspace_id must be a string"))?;
    workspace_id(&id, "workspace_id")
}

/// `monthly_spend`: absent or null → nothing to report; any JSON integer is read (saturating at
/// the ends of `i64`; `Heartbeat::new` clamps it to the reportable range); anything else is
/// refused.
fn spend_field(raw: Option<&RawValue>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim();
    let (negative, _) = integer_literal(text).ok_or_else(|| {
        ApiError::bad("monthly_spend must be an integer number of cents (cumulative) or null")
    })?;
    let beyond = if negative { i64::MIN } else { i64::MAX };
    Ok(Some(text.parse::<i64>().unwrap_or(beyond)))
}

/// `seq`: absent or null → none; else an unsigned 64-bit integer.
fn seq_field(raw: Option<&RawValue>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match integer_literal(raw.get().trim()) {
        Some((false, digits)) => digits
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad("seq must be at most 18446744073709551615")),
        _ => Err(ApiError::bad("seq must be an unsigned integer")),
    }
}

pub(super) async fn record(
    store: &dyn BudgetStore,
    principal: &Principal,
    body: &[u8],
) -> Result<Response<Bytes>, ApiError> {
    let parsed: HeartbeatBody<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "body must be a JSON object with workspace_id, monthly_spend, seq: {e}"
        ))
    })?;
    let workspace = workspace_field(parsed.workspace_id)?;
    let spend = spend_field(parsed.monthly_spend)?;
    let seq = seq_field(parsed.seq)?;
    require_acting_for(principal, &workspace)?;
    let outcome = store
        .record_heartbeat(&Heartbeat::new(workspace, spend, seq))
        .await?;
    let mut answer =
        json!({ "status": "ok", "recorded_delta_cents": outcome.recorded_delta_cents });
    if outcome.stale {
        answer["stale"] = json!(true);
    }
    Ok(json(StatusCode::OK, &answer))
}

/// An absolute `http://` or `https://` URL with a host; no query or fragment.
fn agent_url(value: Option<&Value>) -> Result<String, ApiError> {
    let text = value.and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad("url is required: the agent's base URL, http:// or https://")
    })?;
    let uri: Uri = text
        .parse()
        .map_err(|_| ApiError::bad("url is not a valid URL"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok
        || uri.host().is_none_or(str::is_empty)
        || uri.query().is_some()
        || text.contains('#')
    {
        return Err(ApiError::bad(
            "url must be an absolute http:// or https:// URL without query or fragment",
        ));
    }
    Ok(text.to_owned())
}

pub(super) async fn register(
    store: &dyn Registry,
    principal: &Principal,
    body: &Value,
) -> Result<Response<Bytes>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad(
            "body must be a JSON object with workspace_id and url",
        ));
    }
    let workspace = match body.get("workspace_id") {
        Some(Value::String(id)) => workspace_id(id, "workspace_id")?,
        Some(_) => return Err(ApiError::bad("workspace_id must be a string")),
        None => return Err(ApiError::bad("workspace_id is required")),
    };
    let url = agent_url(body.get("url"))?;
    require_admin(principal)?;
    let token = generate_token("tbw_");
    let registration = Registration {
        agent_url: Some(url),
        token_hash: Some(hash_token(&token)),
    };
    store.register_agent(&workspace, &registration).await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "workspace_id": workspace, "token": token }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_REPORTED_CENTS;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn spend_is_clamped_not_rejected() {
        let ws = WorkspaceId::new("w").unwrap();
        let spend = |s: &str| {
            let read = spend_field(Some(&raw(s)))?;
            Ok::<_, ApiError>(Heartbeat::new(ws.clone(), read, None).reported_cents())
        };
        assert_eq!(spend("1234").unwrap(), 1234);
        assert_eq!(spend("-5").unwrap(), 0);
        assert_eq!(spend("-99999999999999999999999").unwrap(), 0);
        assert_eq!(
            spend("99999999999999999999999").unwrap(),
            MAX_REPORTED_CENTS
        );
        assert_eq!(spend("1000000000001").unwrap(), MAX_REPORTED_CENTS);
        assert_eq!(spend_field(None).unwrap(), None);
        for bad in ["1.5", "1e3", "\"100\"", "true", "[1]", "{}"] {
            assert!(spend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seq_is_an_unsigned_integer() {
        let seq = |s: &str| seq_field(Some(&raw(s)));
        assert_eq!(seq("17").unwrap(), Some(17));
        assert_eq!(seq("18446744073709551615").unwrap(), Some(u64::MAX));
        for bad in ["-1", "18446744073709551616", "1.0", "\"1\"", "true"] {
            assert!(seq(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:9901",
            "https://agent.example/a2a/",
            "http://h/p",
        ] {
            assert_eq!(agent_url(Some(&json!(ok))).unwrap(), ok);
        }
        for bad in [
            json!("ftp://h"),
            json!("/relative"),
            json!("http://h/?q=1"),
            json!("http://h/#f"),
            json!(5),
            json!("not a url"),
        ] {
            assert!(agent_url(Some(&bad)).is_err(), "{bad}");
        }
        assert!(agent_url(None).is_err());
    }
}

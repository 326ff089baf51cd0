//! Agent card rewrite: every URL a card advertises for reaching the agent points at the gateway,
//! so a client that discovered the agent here keeps talking through here (and its budget check).

use serde_json::Value;

/// The paths an agent card is served at (protocol 1.0, and the older 0.3 name).
pub const CARD_PATHS: [&str; 2] = ["/.well-known/agent-card.json", "/.well-known/agent.json"];

/// Whether `suffix` (the path below `/workspaces/{id}/a2a`) is an agent card, spelled exactly.
pub fn is_card_path(suffix: &str) -> bool {
    CARD_PATHS.contains(&suffix)
}

/// The card path `suffix` names under any spelling an agent's router might accept — each segment
/// percent-decoded (twice), without `;` parameters, in any case, empty segments and a trailing
/// slash dropped — or `None`.
pub fn canonical_card_path(suffix: &str) -> Option<&'static str> {
    // Already in the one spelling, or no spelling of a card path at all: decided in one pass.
    let needs_normalizing = suffix
        .bytes()
        .any(|b| b == b'%' || b == b';' || b.is_ascii_uppercase())
        || suffix.contains("//")
        || (suffix.len() > 1 && suffix.ends_with('/'));
    if !needs_normalizing {
        return CARD_PATHS.iter().copied().find(|p| *p == suffix);
    }
    let mut normalized = String::with_capacity(suffix.len());
    for segment in suffix.split('/').filter(|s| !s.is_empty()) {
        let once = crate::proxy::percent_decode(segment.as_bytes());
        let decoded = crate::proxy::percent_decode(&once);
        let base = decoded.split(|b| *b == b';').next().unwrap_or_default();
        normalized.push('/');
        normalized.push_str(&String::from_utf8_lossy(base).to_ascii_lowercase());
    }
    CARD_PATHS.iter().copied().find(|p| *p == normalized)
}

/// Interfaces the gateway cannot carry: a client using them would bypass the budget.
fn carried(binding: Option<&Value>) -> bool {
    !binding
        .and_then(Value::as_str)
        .is_some_and(|b| b.eq_ignore_ascii_case("GRPC"))
}

/// Rewrites `card` in place.
///
/// - 1.0: `supportedInterfaces[*].url`; 0.3: `url` and `additionalInterfaces[*].url`.
/// - gRPC interfaces are removed (and a gRPC `preferredTransport` moves to a carried one).
/// - `signatures` are dropped: they no longer match.
/// - `provider.url`, `documentationUrl`, `iconUrl` and security-scheme URLs are left alone.
pub fn rewrite(card: &mut Value, agent_url: &str, gateway_root: &str) {
    let Value::Object(card) = card else { return };
    let map = |url: &mut Value| {
        if let Some(u) = url.as_str() {
            *url = Value::String(map_url(u, agent_url, gateway_root));
        }
    };
    // Before the interfaces are rewritten: a gRPC main interface gives way to a carried one.
    if !carried(card.get("preferredTransport")) {
        let replacement = card
            .get("additionalInterfaces")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|i| carried(i.get("transport"))))
            .map(|i| (i.get("url").cloned(), i.get("transport").cloned()));
        match replacement {
            Some((Some(url), Some(transport))) => {
                card.insert("url".into(), url);
                card.insert("preferredTransport".into(), transport);
            }
            _ => {
                // Nothing this gateway can carry is advertised: offer JSON-RPC at the gateway.
                card.insert("preferredTransport".into(), Value::String("JSONRPC".into()));
            }
        }
    }
    for (list, binding) in [
        ("supportedInterfaces", "protocolBinding"),
        ("additionalInterfaces", "transport"),
    ] {
        if let Some(Value::Array(interfaces)) = card.get_mut(list) {
            interfaces.retain(|i| carried(i.get(binding)));
            interfaces
                .iter_mut()
                .filter_map(|i| i.get_mut("url"))
                .for_each(map);
        }
    }
    if let Some(url) = card.get_mut("url") {
        map(url);
    }
    card.remove("signatures");
}

/// `url` under the agent's registered URL maps to the same path under the gateway root
/// (trailing slash kept); any other URL maps to the gateway root.
pub fn map_url(url: &str, agent_url: &str, gateway_root: &str) -> String {
    let base = agent_url.trim_end_matches('/');
    match url.strip_prefix(base) {
        Some("") => gateway_root.to_owned(),
        Some(rest) if rest.starts_with('/') => format!("{gateway_root}{rest}"),
        _ => gateway_root.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AGENT: &str = "http://127.0.0.1:9901/agent";
    const ROOT: &str = "https://gw.example/workspaces/ws-1/a2a";

    #[test]
    fn urls_map_below_the_registered_url() {
        assert_eq!(map_url("http://127.0.0.1:9901/agent", AGENT, ROOT), ROOT);
        assert_eq!(
            map_url("http://127.0.0.1:9901/agent/", AGENT, ROOT),
            format!("{ROOT}/")
        );
        assert_eq!(
            map_url("http://127.0.0.1:9901/agent/v1/rpc", AGENT, ROOT),
            format!("{ROOT}/v1/rpc")
        );
        assert_eq!(
            map_url("http://127.0.0.1:9901/agent2", AGENT, ROOT),
            ROOT,
            "not a path boundary"
        );
        assert_eq!(map_url("http://elsewhere:1/x", AGENT, ROOT), ROOT);
        assert_eq!(
            map_url(
                "http://127.0.0.1:9901/agent/x",
                "http://127.0.0.1:9901/agent/",
                ROOT
            ),
            format!("{ROOT}/x")
        );
    }

    #[test]
    fn protocol_1_0_card() {
        let mut card = json!({
            "name": "a",
            "supportedInterfaces": [
                {"url": "http://127.0.0.1:9901/agent/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "http://127.0.0.1:9901/agent/rest", "protocolBinding": "HTTP+JSON"},
                {"url": "grpc.example:443", "protocolBinding": "GRPC"}
            ],
            "provider": {"url": "https://vendor.example"},
            "documentationUrl": "http://127.0.0.1:9901/agent/docs",
            "iconUrl": "http://127.0.0.1:9901/agent/icon.png",
            "securitySchemes": {"oauth": {"oauth2SecurityScheme": {"flows": {"clientCredentials": {"tokenUrl": "http://127.0.0.1:9901/agent/token"}}}}},
            "signatures": [{"protected": "x", "signature": "y"}]
        });
        rewrite(&mut card, AGENT, ROOT);
        assert_eq!(
            card["supportedInterfaces"],
            json!([
                {"url": format!("{ROOT}/"), "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": format!("{ROOT}/rest"), "protocolBinding": "HTTP+JSON"}
            ])
        );
        assert_eq!(card["provider"]["url"], "https://vendor.example");
        assert_eq!(card["documentationUrl"], "http://127.0.0.1:9901/agent/docs");
        assert_eq!(card["iconUrl"], "http://127.0.0.1:9901/agent/icon.png");
        assert_eq!(
            card["securitySchemes"]["oauth"]["oauth2SecurityScheme"]["flows"]["clientCredentials"]
                ["tokenUrl"],
            "http://127.0.0.1:9901/agent/token"
        );
        assert!(card.get("signatures").is_none());
    }

    #[test]
    fn protocol_0_3_card() {
        let mut card = json!({
            "url": "http://127.0.0.1:9901/agent",
            "preferredTransport": "JSONRPC",
            "additionalInterfaces": [
                {"url": "http://127.0.0.1:9901/agent", "transport": "JSONRPC"},
                {"url": "http://other-host/x", "transport": "HTTP+JSON"},
                {"url": "grpc://127.0.0.1:9902", "transport": "GRPC"}
            ]
        });
        rewrite(&mut card, AGENT, ROOT);
        assert_eq!(card["url"], ROOT);
        assert_eq!(
            card["additionalInterfaces"],
            json!([
                {"url": ROOT, "transport": "JSONRPC"},
                {"url": ROOT, "transport": "HTTP+JSON"}
            ])
        );

        let mut grpc_first = json!({
            "url": "grpc://127.0.0.1:9902", "preferredTransport": "GRPC",
            "additionalInterfaces": [{"url": "http://127.0.0.1:9901/agent/jsonrpc", "transport": "JSONRPC"}]
        });
        rewrite(&mut grpc_first, AGENT, ROOT);
        assert_eq!(grpc_first["preferredTransport"], "JSONRPC");
        assert_eq!(grpc_first["url"], format!("{ROOT}/jsonrpc"));
    }
}

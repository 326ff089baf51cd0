//! Alert webhooks: the crate's sender, with this gateway's HTTP client doing the POSTs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_budget::store::AlertOutbox;
use tower_budget::webhook::{AlertSender, BoxError, PostWebhook};

/// Plain-HTTP POSTs on a pooled client (the sender bounds each attempt).
struct Post(Client<HttpConnector, Full<Bytes>>);

impl PostWebhook for Post {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> BoxFuture<'static, Result<StatusCode, BoxError>> {
        let mut request = http::Request::post(url).body(Full::new(body));
        if let Ok(r) = &mut request {
            r.headers_mut().extend(headers);
        }
        let client = self.0.clone();
        Box::pin(async move {
            let response = client.request(request?).await?;
            Ok(response.status())
        })
    }
}

/// Starts the sender: the recovery sweep and the expiry always, deliveries to `webhooks` when
/// there are any.
pub fn spawn(
    outbox: Arc<dyn AlertOutbox>,
    webhooks: Vec<String>,
    secret: Option<String>,
) -> tokio::task::JoinHandle<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    let mut sender = AlertSender::new(outbox, webhooks, Arc::new(Post(client)));
    if let Some(secret) = secret {
        sender = sender.with_secret(secret);
    }
    sender.spawn()
}

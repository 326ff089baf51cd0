//! Drop-in: a plain hyper server wraps its own service in `BudgetLayer`, with the workspace taken
//! from a header instead of the path.
//!
//! ```text
//! cargo run --example hyper_service -- 127.0.0.1:3001
//! curl -i -H 'x-workspace-id: ws-over' localhost:3001/    # 402: over its hourly limit
//! curl -i -H 'x-workspace-id: ws-free' localhost:3001/    # 200
//! curl -i localhost:3001/                                 # 200: no workspace, not checked
//! ```

use std::convert::Infallible;

use http::HeaderName;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_budget::layer::{BudgetLayer, Header};
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::{BudgetStore, Heartbeat, MemoryStore};
use tower_budget::WorkspaceId;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());

    // Two workspaces: one $1.50 into a $1.00 hourly limit, one without limits.
    let store = MemoryStore::new();
    let (over, free) = (WorkspaceId::new("ws-over")?, WorkspaceId::new("ws-free")?);
    store.register(&over).await?;
    store.register(&free).await?;
    store
        .patch_limits(&over, &LimitsPatch::new().with(Period::HOURLY, Some(100))?)
        .await?;
    store
        .record_heartbeat(&Heartbeat::new(over, Some(150), None))
        .await?;

    let service = ServiceBuilder::new()
        .layer(
            BudgetLayer::new(store)
                .with_resolver(Header::new(HeaderName::from_static("x-workspace-id"))),
        )
        .service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("agent answer"))))
        });

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

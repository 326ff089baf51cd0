//! A fault-injecting TCP relay on a loopback port, put between a gateway and PostgreSQL: it
//! passes bytes through, or hangs them (the database accepts but never answers), cuts every
//! connection (and refuses new ones), or delays each chunk.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass through.
    None,
    /// Connections are accepted and kept, but nothing is forwarded until the fault ends.
    Hang,
    /// Every connection is closed, and new ones are closed as soon as they are accepted.
    Cut,
    /// Each chunk is forwarded after this delay.
    Slow(Duration),
}

pub struct Relay {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay on a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, watching) = watch::channel(Fault::None);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watching.borrow() == Fault::Cut {
                    drop(client);
                    continue;
                }
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, watching.clone());
                    let down = pump(sr, cw, watching);
                    // Either direction ending ends both: the sockets close together.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Relay { addr, fault, task }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// A `postgres://` URL through this relay, made from the direct `url`.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{scheme_user}@{}/{path}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.fault.send_replace(Fault::Cut);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = fault.wait_for(|f| *f == Fault::Cut) => return,
        };
        // Hold the chunk while hanging; drop everything when cut.
        let now = *fault.borrow_and_update();
        let now = match now {
            Fault::Hang => match fault.wait_for(|f| *f != Fault::Hang).await {
                Ok(f) => *f,
                Err(_) => return,
            },
            other => other,
        };
        match now {
            Fault::Cut => return,
            Fault::Slow(d) => tokio::time::sleep(d).await,
            Fault::None | Fault::Hang => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

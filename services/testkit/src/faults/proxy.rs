//! A TCP proxy the test can cut, to take a database "down" and bring it back
//! without touching the real server (which other tests share), or stall,
//! to make it a path that silently drops everything (connections stay
//! open, no byte gets through either way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Forwards a local port to a target until cut with [`ToggleProxy::down`].
pub struct ToggleProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl ToggleProxy {
    /// Forward `127.0.0.1:<random port>` to `target` (host:port).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let (up2, links2, stalled2) = (up.clone(), links.clone(), stalled.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let stalled = stalled2.clone();
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, stalled.clone()),
                            pump(out_read, in_write, stalled),
                        );
                    }
                });
                if let Ok(mut l) = links2.lock() {
                    l.retain(|h| !h.is_finished());
                    l.push(link);
                }
            }
        });
        Ok(Self {
            port,
            up,
            stalled,
            links,
            accept,
        })
    }

    /// Stop forwarding, both ways, on every connection, old and new, and
    /// keep them all open: a call in flight gets no answer, ever.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Forward again what the stall held back.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Cut every connection and refuse new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut l) = self.links.lock() {
            for h in l.drain(..) {
                h.abort();
            }
        }
    }

    /// Accept connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copy `from` to `to` until either side closes, holding everything back
/// while `stalled`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read just as the stall began: held back too.
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for ToggleProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

//! A TCP proxy the test can cut, to take a database "down" and bring it back
//! without touching the real server (which other tests share).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// Forwards a local port to a target until cut with [`ToggleProxy::down`].
pub struct ToggleProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl ToggleProxy {
    /// Forward `127.0.0.1:<random port>` to `target` (host:port).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let (up2, links2) = (up.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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
            links,
            accept,
        })
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

impl Drop for ToggleProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

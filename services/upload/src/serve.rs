//! The HTTP server: what a connection may cost before it is a request.
//!
//! `axum::serve` sets no timeouts: a client that sends one header line a
//! second holds its connection forever, and any number of them can be held
//! without a token. This server is hyper's own (HTTP/1 and HTTP/2) with a
//! header read timeout (`ROWPIPE_HEADER_READ_TIMEOUT_SECS`: a connection
//! whose request head is not complete by then is closed) and a cap on open
//! connections (`ROWPIPE_MAX_CONNECTIONS`: past it a new connection is
//! closed at once, counted in `rowpipe_http_connections_refused_total`).
//! On shutdown it stops accepting and waits for the requests in flight, as
//! `axum::serve`'s graceful shutdown did.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rowpipe_core::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// What a connection is allowed.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time for a request's head (request line and headers) to arrive.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serve `router` on `listener` until `shutdown` is requested, then wait
/// for the connections' requests in flight to end.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: pause rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.requested() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("rowpipe_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                router.clone().call(request.map(axum::body::Body::new))
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

//! `--metrics ADDR`: a small HTTP/1.1 server answering `GET /metrics` with Prometheus's text
//! (OpenMetrics) and 404 to anything else. Its socket has `SO_REUSEPORT`, so the new master
//! of a hot upgrade binds the same address while the old one still serves it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

/// Binds `addr` and serves `render()` at `/metrics` in a task of the current runtime.
pub fn serve(
    addr: &str,
    content_type: &'static str,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    let listener = tokio::net::TcpListener::from_std(s.into())?;
    let local = listener.local_addr()?;
    let render = Arc::new(render);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let conn = match listener.accept().await {
                Ok((c, _)) => {
                    pause = Duration::from_millis(10);
                    c
                }
                Err(_) => {
                    // Out of fds: wait for some to close rather than spin.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let render = render.clone();
            let service = hyper::service::service_fn(move |req| {
                let render = render.clone();
                async move {
                    let mut resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(Full::new(Bytes::from(render())));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(content_type),
                        );
                        r
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    resp.headers_mut().insert(
                        hyper::header::CACHE_CONTROL,
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(conn);
                // A scraper that stalls is dropped after 10 s.
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                )
                .await;
            });
        }
    });
    Ok(local)
}

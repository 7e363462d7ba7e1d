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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

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

/// `brood cgi --metrics`: counted from each access line, as the server logs it, and the
/// server's [`brood::cgi::Load`] read at each scrape.
pub struct CgiMetrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    timeouts: Counter,
    running: prometheus_client::metrics::gauge::Gauge,
    queued: prometheus_client::metrics::gauge::Gauge,
    load: std::sync::OnceLock<brood::cgi::Load>,
}

type Labels = Vec<(&'static str, &'static str)>;

impl CgiMetrics {
    pub fn new() -> CgiMetrics {
        let mut registry = prometheus_client::registry::Registry::default();
        let m = CgiMetrics {
            requests: Family::default(),
            errors: Family::default(),
            // 1 ms to about 65 s, ×4 each bucket.
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 9)),
            timeouts: Counter::default(),
            running: Default::default(),
            queued: Default::default(),
            load: std::sync::OnceLock::new(),
            registry: prometheus_client::registry::Registry::default(),
        };
        // Every class's series exists from the start, at 0.
        for class in CLASSES {
            m.requests.get_or_create(&vec![("class", class)]).inc_by(0);
        }
        registry.register(
            "brood_cgi_requests",
            "Requests answered, by status class (1xx..5xx; 499: the client went away)",
            m.requests.clone(),
        );
        registry.register(
            "brood_cgi_request_seconds",
            "From the request to the script's end",
            m.duration.clone(),
        );
        registry.register(
            "brood_cgi_timeouts",
            "Scripts stopped for running past --timeout (504)",
            m.timeouts.clone(),
        );
        registry.register(
            "brood_cgi_errors",
            "5xx answers by cause (spawn: 500, bad_answer: 502, busy: 503, timeout: 504, other)",
            m.errors.clone(),
        );
        registry.register(
            "brood_cgi_scripts_running",
            "Scripts started and not yet ended",
            m.running.clone(),
        );
        registry.register(
            "brood_cgi_queue_depth",
            "Requests waiting for a --max-children slot (with --queue)",
            m.queued.clone(),
        );
        CgiMetrics { registry, ..m }
    }

    /// Reads the gauges from `load` at each scrape (HTTP and FastCGI mode).
    pub fn follow(&self, load: brood::cgi::Load) {
        let _ = self.load.set(load);
    }

    /// Counts one access line.
    pub fn observe(&self, a: &brood::cgi::Access) {
        let class = match a.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            499 => "client_gone",
            400..=498 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&vec![("class", class)]).inc();
        self.duration.observe(a.elapsed.as_secs_f64());
        if a.status == 504 {
            self.timeouts.inc();
        }
        if (500..600).contains(&a.status) {
            let cause = match a.status {
                500 => "spawn",
                502 => "bad_answer",
                503 => "busy",
                504 => "timeout",
                _ => "other",
            };
            self.errors.get_or_create(&vec![("cause", cause)]).inc();
        }
    }

    pub fn encode(&self) -> String {
        if let Some(load) = self.load.get() {
            self.running.set(load.scripts_running() as i64);
            self.queued.set(load.queued() as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "client_gone"];

/// The content type of the OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

//! A small HTTP/1.1 proxy in front of one instance that loses responses: for a random
//! fraction of requests it forwards the request, reads the server's whole response (the
//! server has committed by then), and closes the client's connection without sending it.
//!
//! One request per connection (`Connection: close` towards the server), which is all the
//! phones need. It also counts the requests in flight, so a SIGKILL can be aimed at a
//! moment when a batch is being processed.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use uuid::Uuid;

#[derive(Default)]
pub struct ProxyStats {
    pub requests: AtomicU64,
    /// Complete responses read from the server and never delivered.
    pub dropped: AtomicU64,
    /// … of which were `200` sync responses (the server had committed).
    pub dropped_ok: AtomicU64,
    /// Requests whose server connection failed (instance down or killed mid-request).
    pub upstream_failures: AtomicU64,
    pub in_flight: AtomicUsize,
    /// `client_attempt_id`s reported ACKED in a response that was dropped.
    pub dropped_acks: Mutex<Vec<Uuid>>,
}

pub struct Proxy {
    pub port: u16,
    pub stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16, drop_fraction: f64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let stats = Arc::new(ProxyStats::default());
        // The fraction of responses lost, in millionths.
        let drop_ppm = (drop_fraction * 1e6) as u64;
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        handle(client, upstream, &stats, drop_ppm).await;
                    });
                }
            })
        };
        Proxy { port, stats, task }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// (head lines, body start) of an HTTP message whose head is complete in `buf`.
fn split_head(buf: &[u8]) -> Option<(Vec<String>, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    Some((head.split("\r\n").map(str::to_owned).collect(), end + 4))
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, stats: &ProxyStats, drop_ppm: u64) {
    let _ = client.set_nodelay(true);
    // 1. The whole request from the phone.
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let (lines, body_start) = loop {
        if let Some(found) = split_head(&buf) {
            break found;
        }
        match tokio::time::timeout(Duration::from_secs(30), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let length: usize = header(&lines, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < body_start + length {
        match tokio::time::timeout(Duration::from_secs(30), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    // One request per connection; no compression, so a dropped body can be read.
    let mut head = String::new();
    head.push_str(&lines[0]);
    head.push_str("\r\n");
    for line in &lines[1..] {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["connection", "keep-alive", "accept-encoding"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");

    // 2. Forward it, read the whole response.
    stats.in_flight.fetch_add(1, Ordering::SeqCst);
    let in_flight = InFlight(&stats.in_flight);
    let response = async {
        let mut server = TcpStream::connect(upstream).await.ok()?;
        let _ = server.set_nodelay(true);
        server.write_all(head.as_bytes()).await.ok()?;
        server
            .write_all(&buf[body_start..body_start + length])
            .await
            .ok()?;
        let mut response = Vec::new();
        server.read_to_end(&mut response).await.ok()?;
        complete(&response).then_some(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(90), response)
        .await
        .ok()
        .flatten();
    drop(in_flight);
    let Some(response) = response else {
        stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        return; // the phone sees its connection closed
    };

    // 3. Deliver it, or lose it.
    let lose = drop_ppm > 0 && rand::rng().random_range(0..1_000_000) < drop_ppm;
    if lose {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(acked) = acked_ids(&response) {
            stats.dropped_ok.fetch_add(1, Ordering::Relaxed);
            stats
                .dropped_acks
                .lock()
                .expect("dropped acks")
                .extend(acked);
        }
        return;
    }
    let _ = client.write_all(&response).await;
    let _ = client.shutdown().await;
}

/// True when `response` holds a whole HTTP response (head plus the body its headers announce).
fn complete(response: &[u8]) -> bool {
    let Some((lines, start)) = split_head(response) else {
        return false;
    };
    if let Some(length) = header(&lines, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return response.len() >= start + length;
    }
    if header(&lines, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(&response[start..]).is_some();
    }
    true // read to EOF
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The `client_attempt_id`s a `200` sync response (REST or GraphQL) reported ACKED;
/// `None` for any other response.
fn acked_ids(response: &[u8]) -> Option<Vec<Uuid>> {
    let (lines, start) = split_head(response)?;
    if lines[0].split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let body =
        if header(&lines, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(&response[start..])?
        } else {
            response[start..].to_vec()
        };
    let json: Value = serde_json::from_slice(&body).ok()?;
    let results = json["results"]
        .as_array()
        .or_else(|| json["data"]["syncAttempts"]["results"].as_array())?;
    Some(
        results
            .iter()
            .filter(|r| {
                r["status"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("acked"))
            })
            .filter_map(|r| {
                r["client_attempt_id"]
                    .as_str()
                    .or_else(|| r["clientAttemptId"].as_str())
                    .and_then(|s| Uuid::parse_str(s).ok())
            })
            .collect(),
    )
}

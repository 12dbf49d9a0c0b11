//! A TCP relay for PostgreSQL connections: what a load balancer or a DNS name is to a
//! deployment. The instances connect to it, and a failover re-points it at the promoted
//! standby ([`TcpRelay::repoint`]). Between a primary and its standby it is the link that
//! lags ([`TcpRelay::set_latency`]) or stalls ([`TcpRelay::hold`]); cutting it
//! ([`TcpRelay::cut`]) drops whatever it still carries, as a machine that dies loses what
//! it had not yet sent.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

struct Link {
    upstream: AtomicU16,
    latency_ms: AtomicU64,
    held: AtomicBool,
    /// Bumped by `cut`: every open connection ends, its buffered bytes dropped.
    generation: watch::Sender<u64>,
}

pub struct TcpRelay {
    pub port: u16,
    link: Arc<Link>,
    task: JoinHandle<()>,
}

impl TcpRelay {
    pub async fn start(upstream_port: u16) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let link = Arc::new(Link {
            upstream: AtomicU16::new(upstream_port),
            latency_ms: AtomicU64::new(0),
            held: AtomicBool::new(false),
            generation: watch::channel(0).0,
        });
        let task = {
            let link = link.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let link = link.clone();
                    tokio::spawn(async move { relay(client, &link).await });
                }
            })
        };
        TcpRelay { port, link, task }
    }

    /// New connections go to `port`; open ones are cut.
    pub fn repoint(&self, port: u16) {
        self.link.upstream.store(port, Ordering::SeqCst);
        self.cut();
    }

    /// Ends every open connection, dropping the bytes still in the relay.
    pub fn cut(&self) {
        self.link.generation.send_modify(|g| *g += 1);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.link
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// While held, bytes are read and kept, not delivered (a stalled link).
    pub fn hold(&self, held: bool) {
        self.link.held.store(held, Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn relay(client: TcpStream, link: &Link) {
    let mut cut = link.generation.subscribe();
    let upstream = link.upstream.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pipe(client_read, server_write, link) => {}
        _ = pipe(server_read, client_write, link) => {}
        _ = cut.changed() => {}
    }
}

/// Copies one direction, each chunk delivered `latency` after it was read.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now()
                        + Duration::from_millis(link.latency_ms.load(Ordering::SeqCst));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            while link.held.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the connection (the other direction is dropped with it).
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

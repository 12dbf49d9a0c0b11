//! `REDIS_URL` naming a Redis Cluster: a three-node cluster the test starts itself on free
//! ports. Sync (and its replays from the cache), the rate limit and persisted queries work.
use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{Backend, spawn_app_with};
use crate::sync::{Surface, ago, attempt, bank, sync};

/// A port that is free, and whose cluster-bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn start_cluster() -> Option<Cluster> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        if crate::helpers::services_required() {
            panic!("redis-server is required for the cluster test");
        }
        examsync_test_support::report_skip("redis-server missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = free_port_pair();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--dir",
                dir.path().to_str().unwrap(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.push(child);
        ports.push(port);
    }
    let cluster = Cluster {
        nodes,
        ports,
        _dir: dir,
    };
    for port in &cluster.ports {
        wait_for(|| redis_cli(*port, &["ping"]).contains("PONG"));
    }
    let addresses: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addresses.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = Command::new("redis-cli").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for port in &cluster.ports {
        wait_for(|| redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok"));
    }
    Some(cluster)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(mut ready: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis cluster did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_against_a_redis_cluster() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let url = format!(
        "redis+cluster://{}",
        cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.redis_url = Some(url.clone());
        c.redis_prefix = "cluster-test:".into();
        c.rate_limit_per_minute = 5;
    })
    .await;
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "pass", "{ready}");
    let q = bank(&app).await;
    let (user, token) = app.student();
    let batch: Vec<Value> = (0..20)
        .map(|i| attempt(q[i % 3], 0, &ago(30 - i as i64), Some(Uuid::new_v4())))
        .collect();
    let (status, first, _) = sync(&app, Surface::Rest, &token, &batch, None).await;
    assert_eq!(status, 200);
    assert!(first.iter().all(|r| r["status"] == "acked"));
    // The idempotency records live in the cluster, under the user's hash tag.
    let namespace = app.state.cache.namespace().to_owned();
    let tag = format!("{namespace}t*:{{{user}}}:idem:*");
    let stored: usize = cluster
        .ports
        .iter()
        .map(|p| {
            redis_cli(*p, &["--scan", "--pattern", &tag])
                .lines()
                .count()
        })
        .sum();
    assert_eq!(stored, 20, "one cached record per key");
    // A replay is answered from the cluster: no failed cache calls, same ids.
    let (_, again, _) = sync(&app, Surface::Graphql, &token, &batch, None).await;
    assert!(again.iter().zip(&first).all(
        |(a, b)| a["status"] == "duplicate" && a["server_attempt_id"] == b["server_attempt_id"]
    ));
    // The rate limit is counted in the cluster: 5 per minute, 2 used by the syncs.
    for _ in 0..3 {
        let (s, _) = app
            .graphql(Some(&token), "{ syncStatus { ackedCount } }", Value::Null)
            .await;
        assert_eq!(s, 200);
    }
    let counted = redis_cli_any(&cluster, &format!("{namespace}{{{user}}}:rl:minute"));
    assert_eq!(
        counted.trim(),
        "5",
        "the window counter lives in the cluster"
    );
    let (s, body) = app
        .graphql(Some(&token), "{ syncStatus { ackedCount } }", Value::Null)
        .await;
    assert_eq!(
        (s, body["errors"][0]["extensions"]["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );
}

/// GETs a key from whichever node holds it (`-c` follows MOVED redirects).
fn redis_cli_any(cluster: &Cluster, key: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &cluster.ports[0].to_string(), "GET", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

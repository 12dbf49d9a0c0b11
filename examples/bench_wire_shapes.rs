//! Is the typed REST path no slower than the `json!` path it replaced? (docs/benchmarks.md,
//! "Wire shapes".)
//!
//! ```text
//! cargo run --release --example bench_wire_shapes
//! ```
//!
//! The package list body was built as a `serde_json::Value` with `json!` and then written out;
//! it is now the typed `PackageList` (`PackageListItem::from(&PackageSummary)`), which serde writes
//! directly. Both start from the same `PackageSummary` rows, as the handler does, and must give
//! the same JSON. Each variant runs for
//! `BENCH_ROUNDS` (7) rounds of `BENCH_ITERATIONS` (2,000) bodies, alternating; the median
//! round's time per body is printed with the typed path's time as a share of the old one.
use std::time::{Duration, Instant};

use chrono::Utc;
use examsync::http::packages::wire::{PackageList, PackageListItem};
use examsync::packages::{PackageScope, PackageSummary};
use serde_json::{Value, json};
use uuid::Uuid;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 200 published packages, as a phone's list of every version would show them.
fn summaries() -> Vec<PackageSummary> {
    (0..200)
        .map(|n| PackageSummary {
            id: Uuid::new_v4().into(),
            name: format!("Block {n} — cardiology and respiratory review"),
            description: (n % 2 == 0).then(|| "Weekly update of the block's questions".to_owned()),
            scope: PackageScope::Block,
            scope_data: json!({"block_id": n}),
            scope_key: format!("block:{n}"),
            year_id: Some(n / 10),
            block_id: Some(n),
            theme_id: None,
            version: n % 7 + 1,
            version_hash: hex_hash(n).parse().expect("64 hex digits"),
            question_count: 100 + n,
            media_count: 0,
            media_bytes: 0,
            is_published: true,
            published_at: Some(Utc::now()),
            created_by: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            withdrawn_at: None,
            withdrawn_reason: None,
        })
        .collect()
}

fn hex_hash(n: i32) -> String {
    format!("{n:064x}")
}

/// The replaced path: one `Value` per item, written out.
fn old_list_body(rows: &[PackageSummary]) -> Vec<u8> {
    let items: Vec<Value> = rows
        .iter()
        .map(|p| {
            json!({
                "package_id": p.id,
                "name": p.name,
                "description": p.description,
                "scope": p.scope,
                "scope_data": {"year_id": p.year_id, "block_id": p.block_id, "theme_id": p.theme_id},
                "version": p.version,
                "version_hash": p.version_hash,
                "question_count": p.question_count,
                "published_at": p.published_at,
                "updated_at": p.updated_at,
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap_or_default()
}

/// Today's path.
fn typed_list_body(rows: &[PackageSummary]) -> Vec<u8> {
    let body = PackageList {
        items: rows.iter().map(PackageListItem::from).collect(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn time(
    iterations: usize,
    rows: &[PackageSummary],
    f: fn(&[PackageSummary]) -> Vec<u8>,
) -> Duration {
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..iterations {
        bytes += std::hint::black_box(f(std::hint::black_box(rows))).len();
    }
    std::hint::black_box(bytes);
    start.elapsed() / iterations as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 7);
    let iterations = env_or("BENCH_ITERATIONS", 2_000);
    let rows = summaries();
    let old: Value = serde_json::from_slice(&old_list_body(&rows)).unwrap_or_default();
    let typed: Value = serde_json::from_slice(&typed_list_body(&rows)).unwrap_or_default();
    assert_eq!(old, typed, "the typed list body must equal the old one");

    let (mut old_times, mut typed_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        old_times.push(time(iterations, &rows, old_list_body));
        typed_times.push(time(iterations, &rows, typed_list_body));
    }
    let (old, typed) = (median(old_times), median(typed_times));
    println!("| body (200 packages) | json! Value | typed | typed ÷ json! |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| package list | {:.1} µs | {:.1} µs | {:.0}% |",
        old.as_secs_f64() * 1e6,
        typed.as_secs_f64() * 1e6,
        100.0 * typed.as_secs_f64() / old.as_secs_f64()
    );
}

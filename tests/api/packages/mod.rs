//! Test packages end to end (docs/api.md sections 4–6), over real HTTP, on SQLite and on
//! PostgreSQL + Redis: building each scope, versioning, `version_hash` recomputed here
//! independently of the server's code, database-enforced immutability, conditional
//! requests, HEAD, encodings, visibility, filters, the CLI and an RFC 9111 caching client;
//! deltas, ranges and dictionary transport. This module holds the helpers the tests share;
//! each submodule holds the tests of one theme.
#![allow(clippy::unwrap_used)]
use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    sync::{Arc, Mutex},
    time::Duration,
};

use examsync::packages::PackageStore;
use reqwest::{Client, Method, StatusCode, header::HeaderMap};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, binary, count_rows, question, spawn_app};

mod build;
mod burst;
mod dcz;
mod delta;
mod download;
mod list;

const BUILD: &str = "mutation($input: BuildPackageInput!) { buildPackage(input: $input) { \
    id name description scope scopeData version versionHash questionCount isPublished \
    publishedAt updatedAt downloadPath } }";

const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
const VARY: &str = "Authorization, Accept-Encoding, Available-Dictionary";

// ---------------------------------------------------------------------------------------
// Helpers

/// RFC 8785 canonical JSON written for these tests (keys sorted explicitly by UTF-16 code
/// units; strings escaped as ECMAScript does, which serde_json's escaping matches; the
/// numbers here are integers). Independent of the server's canonicalizer.
fn jcs(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            assert!(n.is_i64() || n.is_u64(), "only integers expected: {n}");
            n.to_string()
        }
        Value::String(s) => serde_json::to_string(s).unwrap(),
        Value::Array(items) => format!("[{}]", items.iter().map(jcs).collect::<Vec<_>>().join(",")),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let members: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", serde_json::to_string(k).unwrap(), jcs(&map[k])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

/// `version_hash` of snapshot objects, as docs/api.md section 4 defines it.
fn version_hash_of(questions: &[Value]) -> (String, String) {
    let mut sorted = questions.to_vec();
    sorted.sort_by_key(|q| q["question_id"].as_str().unwrap().to_ascii_lowercase());
    let canonical = jcs(&Value::Array(sorted));
    let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    (canonical, hash)
}

/// A client that neither asks for nor decodes compressed bodies (so tests see the wire).
fn raw_client() -> Client {
    Client::builder()
        .no_gzip()
        .no_brotli()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Builds a package through GraphQL as an admin; returns the whole response body.
async fn build(app: &TestApp, input: Value) -> Value {
    let (status, body) = app
        .graphql(Some(&app.admin_token()), BUILD, json!({ "input": input }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Builds a package and expects success; returns `buildPackage`.
async fn build_ok(app: &TestApp, input: Value) -> Value {
    let body = build(app, input).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["buildPackage"].clone()
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

struct Download {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Download {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn fetch(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Download {
    let mut request = raw_client().request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    Download {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

async fn get_package(app: &TestApp, id: &str, token: &str, headers: &[(&str, &str)]) -> Download {
    fetch(
        app,
        Method::GET,
        &format!("/api/v1/tests/packages/{id}"),
        Some(token),
        headers,
    )
    .await
}

async fn list(app: &TestApp, token: &str, query: &str) -> (StatusCode, Value) {
    let response = app
        .get(&format!("/api/v1/tests/packages{query}"), token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn ids_of(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["package_id"].as_str().unwrap().to_owned())
        .collect()
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

/// Headers as a comparable map, without the ones that differ per response.
fn comparable(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name == "date" || name == "x-request-id" {
            continue;
        }
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_str().unwrap().to_owned());
    }
    map
}

/// Total of `examsync_package_downloads_total` over the series with label `name="value"`.
async fn downloads_metric(app: &TestApp, (name, value): (&str, &str)) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("{name}=\"{value}\"");
    text.lines()
        .filter(|l| l.starts_with("examsync_package_downloads_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A published package of a few questions of year `year`; returns (package, question ids).
async fn published_year(app: &TestApp, year: i32) -> (Value, Vec<Uuid>) {
    let ids = app
        .import_questions(json!([
            question(
                "Which nerve supplies the diaphragm?",
                &["Vagus", "Phrenic"],
                1,
                year,
                Some(year * 10 + 1),
                None
            ),
            question(
                "First-line drug?",
                &["A", "B", "C", "D", "E"],
                4,
                year,
                None,
                None
            ),
            question(
                "Ünïcödé — “quotes” ✓ and \"escapes\"\n",
                &["x", "y", "z"],
                2,
                year,
                Some(year * 10 + 2),
                Some(year * 100 + 21)
            ),
        ]))
        .await;
    let package = build_ok(
        app,
        json!({"name": format!("Year {year}"), "scope": "YEAR", "yearId": year, "publish": true}),
    )
    .await;
    (package, ids)
}

/// The repository's own test vectors (`vectors/`).
fn vectors_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Two published versions of the YEAR `year` line: v1 of four questions, then v2 with one
/// stem edited, one option list edited, one question retired and one added.
/// Returns (v1, v2, the four first ids followed by the added one).
async fn two_versions(app: &TestApp, year: i32) -> (Value, Value, Vec<Uuid>) {
    let ids = app
        .import_questions(json!([
            question("Alpha?", &["a", "b"], 0, year, Some(1), None),
            question("Beta?", &["a", "b", "c"], 2, year, None, None),
            question("Gamma — “γ”?", &["x", "y"], 1, year, None, Some(3)),
            question("Delta?", &["p", "q", "r", "s"], 3, year, None, None),
        ]))
        .await;
    let v1 = build_ok(
        app,
        json!({"name": "v1", "scope": "YEAR", "yearId": year, "publish": true}),
    )
    .await;
    let mut edited = question("Alpha (edited)?", &["a", "b"], 0, year, Some(1), None);
    edited["id"] = json!(ids[0]);
    let mut options = question("Beta?", &["a", "b", "c", "d"], 2, year, None, None);
    options["id"] = json!(ids[1]);
    let mut retired = question("Gamma — “γ”?", &["x", "y"], 1, year, None, Some(3));
    retired["id"] = json!(ids[2]);
    retired["status"] = json!("DRAFT");
    let second = app
        .import_questions(json!([
            edited,
            options,
            retired,
            question("Epsilon?", &["e", "f"], 1, year, None, None)
        ]))
        .await;
    let mut ids = ids;
    ids.push(second[3]);
    let v2 = build_ok(
        app,
        json!({"name": "v2", "scope": "YEAR", "yearId": year, "publish": true}),
    )
    .await;
    assert_eq!(v2["version"], 2, "{v2}");
    (v1, v2, ids)
}

/// Applies a delta body to held snapshots as the mobile recipes do.
fn apply_delta(held: &[Value], delta: &Value) -> Vec<Value> {
    let removed: HashSet<&str> = delta["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut by_id: BTreeMap<String, Value> = held
        .iter()
        .filter(|q| !removed.contains(q["question_id"].as_str().unwrap()))
        .map(|q| {
            (
                q["question_id"].as_str().unwrap().to_ascii_lowercase(),
                q.clone(),
            )
        })
        .collect();
    for q in delta["upserted"].as_array().unwrap() {
        by_id.insert(
            q["question_id"].as_str().unwrap().to_ascii_lowercase(),
            q.clone(),
        );
    }
    by_id.into_values().collect()
}

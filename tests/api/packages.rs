//! Test packages end to end (docs/api.md sections 4–6), over real HTTP, on SQLite and on
//! PostgreSQL + Redis: building each scope, versioning, `version_hash` recomputed here
//! independently of the server's code, database-enforced immutability, conditional
//! requests, HEAD, encodings, visibility, filters, the CLI and an RFC 9111 caching client.
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

// ---------------------------------------------------------------------------------------

backend_tests!(
    builds_each_scope,
    versions_follow_the_question_set,
    version_hash_matches_the_vector_and_recomputes,
    published_packages_are_immutable_in_the_database,
    if_none_match_forms,
    head_is_get_without_body,
    encodings_keep_the_etag,
    unpublished_packages_are_invisible_to_students,
    ids_and_authentication,
    list_filters,
    graphql_package_types,
    concurrent_builds_make_one_version,
    caching_client_revalidates_with_304,
    scoring_keys_for_sync,
    deltas_turn_the_held_version_into_the_new_one,
    delta_errors,
    graphql_package_delta,
    ranges_resume_against_another_instance,
    dcz_with_a_published_download_as_dictionary,
    a_burst_of_cold_requests_builds_once,
);

async fn builds_each_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut draft = question("draft", &["a", "b"], 0, 1, Some(11), Some(111));
    draft["status"] = json!("DRAFT");
    let mut review = question("review", &["a", "b"], 0, 1, Some(11), Some(111));
    review["status"] = json!("IN_REVIEW");
    let ids = app
        .import_questions(json!([
            question("q1", &["a", "b"], 0, 1, Some(11), Some(111)),
            question("q2", &["a", "b", "c"], 1, 1, Some(11), Some(112)),
            question("q3", &["a", "b", "c", "d"], 2, 1, Some(12), Some(121)),
            question("q4", &["a", "b", "c", "d", "e"], 3, 2, Some(21), Some(211)),
            draft,
            review,
        ]))
        .await;
    let (_, student) = app.student();
    let cases = [
        (json!({"scope": "PROGRAM"}), json!({}), vec![0, 1, 2, 3]),
        (
            json!({"scope": "YEAR", "yearId": 1}),
            json!({"year_id": 1}),
            vec![0, 1, 2],
        ),
        (
            json!({"scope": "BLOCK", "blockId": 11}),
            json!({"block_id": 11}),
            vec![0, 1],
        ),
        (
            json!({"scope": "BLOCK", "blockId": 11, "yearId": 1}),
            json!({"block_id": 11, "year_id": 1}),
            vec![0, 1],
        ),
        (
            json!({"scope": "BLOCK", "blockId": 11, "yearId": 2}),
            Value::Null,
            vec![],
        ),
        (
            json!({"scope": "THEME", "themeId": 111}),
            json!({"theme_id": 111}),
            vec![0],
        ),
        (
            json!({"scope": "THEME", "themeId": 121, "blockId": 12, "yearId": 1}),
            json!({"theme_id": 121, "block_id": 12, "year_id": 1}),
            vec![2],
        ),
    ];
    for (mut input, scope_data, members) in cases {
        input["name"] = json!("Scope test");
        input["description"] = json!("desc");
        input["publish"] = json!(true);
        if members.is_empty() {
            // No published question in that scope: refused, nothing stored.
            let body = build(&app, input.clone()).await;
            assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
            assert!(
                body["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no published questions"),
                "{body}"
            );
            continue;
        }
        let package = build_ok(&app, input.clone()).await;
        assert_eq!(package["scope"], input["scope"], "{package}");
        assert_eq!(package["scopeData"], scope_data, "{package}");
        assert_eq!(package["version"], 1);
        assert_eq!(package["isPublished"], true);
        assert!(package["publishedAt"].is_string());
        assert_eq!(package["questionCount"], members.len());
        let id = package["id"].as_str().unwrap();
        assert_eq!(
            package["downloadPath"],
            format!("/api/v1/tests/packages/{id}")
        );

        let download = get_package(&app, id, &student, &[]).await;
        assert_eq!(download.status, 200);
        let body = download.json();
        let got: HashSet<String> = body["questions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["question_id"].as_str().unwrap().to_owned())
            .collect();
        let want: HashSet<String> = members.iter().map(|&i| ids[i].to_string()).collect();
        assert_eq!(got, want, "{input}");
        assert_eq!(body["version_hash"], package["versionHash"]);
        assert_eq!(body["scope"], input["scope"]);
        assert_eq!(body["name"], "Scope test");
        assert_eq!(body["description"], "desc");
        let mut rest_scope = json!({"year_id": null, "block_id": null, "theme_id": null});
        for (k, v) in scope_data.as_object().unwrap() {
            rest_scope[k] = v.clone();
        }
        assert_eq!(body["scope_data"], rest_scope);
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want_keys = vec![
            "package_id",
            "name",
            "description",
            "scope",
            "scope_data",
            "version",
            "version_hash",
            "questions",
            "created_at",
            "updated_at",
            "published_at",
        ];
        want_keys.sort();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        assert_eq!(keys_sorted, want_keys);
        for snapshot in body["questions"].as_array().unwrap() {
            let mut keys: Vec<&str> = snapshot
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "block_id",
                    "cognitive_level",
                    "correct_index",
                    "difficulty",
                    "explanation_md",
                    "option_a",
                    "option_b",
                    "option_c",
                    "option_d",
                    "option_e",
                    "question_id",
                    "stem",
                    "theme_id",
                    "year_id"
                ]
            );
        }
    }

    // q1 has two options: C, D and E are null; q4 has all five.
    let program = build_ok(&app, json!({"name": "P", "scope": "PROGRAM"})).await;
    let body = get_package(&app, program["id"].as_str().unwrap(), &student, &[])
        .await
        .json();
    let q1 = body["questions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["question_id"] == ids[0].to_string())
        .unwrap();
    assert_eq!(q1["option_a"], "a");
    assert_eq!(q1["option_c"], Value::Null);
    assert_eq!(q1["option_e"], Value::Null);
    assert_eq!(q1["block_id"], 11);
    assert_eq!(q1["explanation_md"], Value::Null);

    // Input validation.
    for (input, needle) in [
        (json!({"name": "x", "scope": "YEAR"}), "yearId"),
        (
            json!({"name": "x", "scope": "BLOCK", "yearId": 1}),
            "blockId",
        ),
        (
            json!({"name": "x", "scope": "THEME", "blockId": 11}),
            "themeId",
        ),
        (
            json!({"name": "x", "scope": "PROGRAM", "yearId": 1}),
            "yearId",
        ),
        (
            json!({"name": "x", "scope": "YEAR", "yearId": 1, "themeId": 3}),
            "themeId",
        ),
        (json!({"name": "  ", "scope": "PROGRAM"}), "name"),
    ] {
        let body = build(&app, input.clone()).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{input}: {body}"
        );
    }
    // Only admins build.
    let (_, body) = app
        .graphql(
            Some(&student),
            BUILD,
            json!({"input": {"name": "x", "scope": "PROGRAM"}}),
        )
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
    let (_, body) = app
        .graphql(
            None,
            BUILD,
            json!({"input": {"name": "x", "scope": "PROGRAM"}}),
        )
        .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
}

async fn versions_follow_the_question_set(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    let (v1, ids) = published_year(&app, 3).await;
    let input = json!({"name": "Year 3 again", "scope": "YEAR", "yearId": 3, "publish": true});
    let v1_id = v1["id"].as_str().unwrap().to_owned();
    let v1_bytes = get_package(&app, &v1_id, &student, &[]).await.body;

    // Unchanged: the same version, whatever the name and publish flag say.
    for publish in [true, false] {
        let mut again = input.clone();
        again["publish"] = json!(publish);
        let same = build_ok(&app, again).await;
        assert_eq!(same["id"], v1["id"]);
        assert_eq!(same["version"], 1);
        assert_eq!(same["name"], "Year 3");
        assert_eq!(same["isPublished"], true);
        assert_eq!(same["publishedAt"], v1["publishedAt"]);
    }

    // A question changes: version 2, a new hash; version 1 stays byte for byte.
    let mut changed = question(
        "Which nerve supplies the diaphragm? (edited)",
        &["Vagus", "Phrenic"],
        1,
        3,
        Some(31),
        None,
    );
    changed["id"] = json!(ids[0]);
    app.import_questions(json!([changed])).await;
    let v2 = build_ok(&app, input.clone()).await;
    assert_eq!(v2["version"], 2);
    assert_ne!(v2["id"], v1["id"]);
    assert_ne!(v2["versionHash"], v1["versionHash"]);
    assert_eq!(
        get_package(&app, &v1_id, &student, &[]).await.body,
        v1_bytes
    );

    // A new question joins the scope (unpublished build): version 3; unchanged builds return
    // it, and `publish` publishes that same version.
    app.import_questions(json!([question("New", &["a", "b"], 0, 3, None, None)]))
        .await;
    let mut unpublished = input.clone();
    unpublished["publish"] = json!(false);
    let v3 = build_ok(&app, unpublished.clone()).await;
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["isPublished"], false);
    assert_eq!(v3["publishedAt"], Value::Null);
    let v3_again = build_ok(&app, unpublished).await;
    assert_eq!(v3_again["id"], v3["id"]);
    assert_eq!(v3_again["isPublished"], false);
    let v3_published = build_ok(&app, input.clone()).await;
    assert_eq!(v3_published["id"], v3["id"]);
    assert_eq!(v3_published["version"], 3);
    assert_eq!(v3_published["isPublished"], true);
    assert!(v3_published["publishedAt"].is_string());

    // publishPackage is idempotent.
    let publish =
        "mutation($id: UUID!) { publishPackage(id: $id) { id isPublished publishedAt version } }";
    let (_, again) = app
        .graphql(Some(&app.admin_token()), publish, json!({"id": v3["id"]}))
        .await;
    assert_eq!(
        again["data"]["publishPackage"]["publishedAt"], v3_published["publishedAt"],
        "{again}"
    );

    // Back to version 1's exact question set: still a new version (N+1), with v1's hash.
    let mut reverted = question(
        "Which nerve supplies the diaphragm?",
        &["Vagus", "Phrenic"],
        1,
        3,
        Some(31),
        None,
    );
    reverted["id"] = json!(ids[0]);
    let mut drop_new = question("New", &["a", "b"], 0, 3, None, None);
    drop_new["status"] = json!("DRAFT");
    // The "New" question is found by stem: unpublish it by re-importing with its id.
    let new_id: String = {
        let body = get_package(&app, v3["id"].as_str().unwrap(), &student, &[])
            .await
            .json();
        body["questions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["stem"] == "New")
            .unwrap()["question_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    drop_new["id"] = json!(new_id);
    app.import_questions(json!([reverted, drop_new])).await;
    let v4 = build_ok(&app, input).await;
    assert_eq!(v4["version"], 4);
    assert_eq!(v4["versionHash"], v1["versionHash"]);

    // Every version is still there, unchanged, and listed.
    assert_eq!(
        get_package(&app, &v1_id, &student, &[]).await.body,
        v1_bytes
    );
    assert_eq!(
        count_rows(&app.db, "test_packages", "scope = 'YEAR'").await,
        4
    );
    let (_, all) = list(&app, &student, "?scope=YEAR&year_id=3").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 4, "{all}");
    let (_, latest) = list(&app, &student, "?scope=YEAR&year_id=3&latest=true").await;
    assert_eq!(ids_of(&latest), [v4["id"].as_str().unwrap()]);
}

async fn version_hash_matches_the_vector_and_recomputes(backend: Backend) {
    let path = vectors_dir().join("version_hash.json");
    let vector: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let questions = vector["questions"].as_array().unwrap();
    // The test's own canonicalizer reproduces the vector.
    let (canonical, hash) = version_hash_of(questions);
    assert_eq!(canonical, vector["canonical"].as_str().unwrap());
    assert_eq!(hash, vector["version_hash"].as_str().unwrap());

    // The same questions imported into an empty bank: a PROGRAM package has that hash.
    let app = spawn_app(backend).await;
    let inputs: Vec<Value> = questions
        .iter()
        .map(|q| {
            let options: Vec<Value> = ["option_a", "option_b", "option_c", "option_d", "option_e"]
                .iter()
                .map(|k| q[*k].clone())
                .filter(|v| !v.is_null())
                .collect();
            json!({
                "id": q["question_id"], "stem": q["stem"], "options": options,
                "correctIndex": q["correct_index"], "explanationMd": q["explanation_md"],
                "yearId": q["year_id"], "blockId": q["block_id"], "themeId": q["theme_id"],
                "cognitiveLevel": q["cognitive_level"], "difficulty": q["difficulty"],
            })
        })
        .collect();
    app.import_questions(Value::Array(inputs)).await;
    let package = build_ok(
        &app,
        json!({"name": "Vector", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    assert_eq!(package["versionHash"], vector["version_hash"]);
    let (_, student) = app.student();
    let download = get_package(&app, package["id"].as_str().unwrap(), &student, &[]).await;
    // The canonical bytes are served verbatim inside the body.
    let text = String::from_utf8(download.body.clone()).unwrap();
    assert!(
        text.contains(&format!(
            "\"questions\":{}",
            vector["canonical"].as_str().unwrap()
        )),
        "{text}"
    );
    let body = download.json();
    let (_, recomputed) = version_hash_of(body["questions"].as_array().unwrap());
    assert_eq!(recomputed, body["version_hash"].as_str().unwrap());
    assert_eq!(
        download.header("etag").unwrap(),
        format!("W/\"{recomputed}\"")
    );

    // A bigger, varied package recomputes too.
    let (package, _) = published_year(&app, 4).await;
    let body = get_package(&app, package["id"].as_str().unwrap(), &student, &[])
        .await
        .json();
    let (_, recomputed) = version_hash_of(body["questions"].as_array().unwrap());
    assert_eq!(recomputed, package["versionHash"].as_str().unwrap());
    let ids: Vec<&str> = body["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "snapshots are served in question_id order");
}

async fn published_packages_are_immutable_in_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 5).await;
    app.import_questions(json!([question("other", &["a", "b"], 0, 6, None, None)]))
        .await;
    let draft = build_ok(&app, json!({"name": "Draft", "scope": "YEAR", "yearId": 6})).await;
    let hash = package["versionHash"].as_str().unwrap();
    let draft_hash = draft["versionHash"].as_str().unwrap();

    // The test's own connection, not the server's pool.
    let db = Database::connect(app.database.url.clone()).await.unwrap();
    let backend_kind = db.get_database_backend();
    for sql in [
        format!("UPDATE test_packages SET name = 'tampered' WHERE version_hash = '{hash}'"),
        format!("UPDATE test_packages SET questions_json = '[]' WHERE version_hash = '{hash}'"),
        format!("UPDATE test_packages SET is_published = false WHERE version_hash = '{hash}'"),
        format!("DELETE FROM test_packages WHERE version_hash = '{hash}'"),
    ] {
        let result = db
            .execute_raw(Statement::from_string(backend_kind, sql.clone()))
            .await;
        let err = result.expect_err(&format!("the database must refuse: {sql}"));
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
    // An unpublished row may still change (so the refusals above are the trigger's).
    let done = db
        .execute_raw(Statement::from_string(
            backend_kind,
            format!("UPDATE test_packages SET description = 'edited' WHERE version_hash = '{draft_hash}'"),
        ))
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    db.close().await.unwrap();

    let (_, student) = app.student();
    let body = get_package(&app, package["id"].as_str().unwrap(), &student, &[])
        .await
        .json();
    assert_eq!(body["name"], "Year 5");
    assert_eq!(body["questions"].as_array().unwrap().len(), 3);
}

async fn if_none_match_forms(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 1).await;
    let id = package["id"].as_str().unwrap();
    let hash = package["versionHash"].as_str().unwrap();
    let (_, student) = app.student();

    let full = get_package(&app, id, &student, &[]).await;
    assert_eq!(full.status, 200);
    let etag = format!("W/\"{hash}\"");
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert_eq!(full.header("cache-control"), Some(CACHE_CONTROL));
    assert_eq!(full.header("vary"), Some(VARY));
    assert_eq!(full.header("content-type"), Some("application/json"));
    assert_eq!(full.header("content-encoding"), None);
    assert_eq!(
        full.header("content-length").unwrap(),
        full.body.len().to_string()
    );

    let before_304 = downloads_metric(&app, ("status", "304")).await;
    let matching = [
        etag.clone(),
        format!("\"{hash}\""),
        format!("\"nope\", {etag}"),
        format!("  W/\"a\" ,  W/\"b\",W/\"{hash}\"  "),
        format!("W/\"other\",\"{hash}\""),
        "*".to_owned(),
    ];
    for value in &matching {
        for method in [Method::GET, Method::HEAD] {
            let r = fetch(
                &app,
                method.clone(),
                &format!("/api/v1/tests/packages/{id}"),
                Some(&student),
                &[("if-none-match", value)],
            )
            .await;
            assert_eq!(r.status, 304, "{method} If-None-Match: {value}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), Some(etag.as_str()));
            assert_eq!(r.header("cache-control"), Some(CACHE_CONTROL));
            assert_eq!(r.header("vary"), Some(VARY));
            assert_eq!(r.header("content-encoding"), None);
        }
    }
    // With compression asked for, a 304 is still a 304 with the same ETag.
    let r = get_package(
        &app,
        id,
        &student,
        &[("if-none-match", &etag), ("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(downloads_metric(&app, ("status", "304")).await >= before_304 + 13.0);

    // Two header lines are one list.
    let r = raw_client()
        .get(app.url(&format!("/api/v1/tests/packages/{id}")))
        .bearer_auth(&student)
        .header("if-none-match", "\"stale\"")
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    for value in [
        "W/\"0000\"".to_owned(),
        format!("\"{}\"", &hash[..63]),
        format!("W/\"{hash}-gzip\""),
        format!("\"a,{hash}\""),
        "W/\"".to_owned(),
        "\"".to_owned(),
        ",,,".to_owned(),
        "garbage ✓".to_owned(),
        format!("\"x\"\"{hash}\""),
    ] {
        let r = get_package(&app, id, &student, &[("if-none-match", &value)]).await;
        assert_eq!(r.status, 200, "If-None-Match: {value}");
        assert_eq!(r.body, full.body);
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
}

async fn head_is_get_without_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 2).await;
    let path = format!("/api/v1/tests/packages/{}", package["id"].as_str().unwrap());
    let (_, student) = app.student();
    for accept in [None, Some("gzip"), Some("br")] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let get = fetch(&app, Method::GET, &path, Some(&student), &headers).await;
        let head = fetch(&app, Method::HEAD, &path, Some(&student), &headers).await;
        assert_eq!(get.status, 200);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(
            comparable(&get.headers),
            comparable(&head.headers),
            "{accept:?}"
        );
        assert_eq!(
            head.header("content-length").unwrap(),
            get.body.len().to_string()
        );
    }
    // Errors too: HEAD of an unknown package is the GET's 404 without a body.
    let unknown = format!("/api/v1/tests/packages/{}", Uuid::new_v4());
    let get = fetch(&app, Method::GET, &unknown, Some(&student), &[]).await;
    let head = fetch(&app, Method::HEAD, &unknown, Some(&student), &[]).await;
    assert_eq!(
        (get.status, head.status),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert!(head.body.is_empty());
}

async fn encodings_keep_the_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 3).await;
    let id = package["id"].as_str().unwrap();
    let etag = format!("W/\"{}\"", package["versionHash"].as_str().unwrap());
    let (_, student) = app.student();
    let identity = get_package(&app, id, &student, &[]).await;
    let identity_json = identity.json();
    let before = downloads_metric(&app, ("status", "200")).await;

    for (accept, expected) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("gzip, deflate, br", Some("br")),
        ("br;q=0, gzip", Some("gzip")),
        ("gzip;q=1.0, br;q=0.5", Some("gzip")),
        ("gzip;q=0", None),
        ("identity", None),
        ("*", Some("br")),
        ("*;q=0", None),
        ("deflate", None),
    ] {
        let r = get_package(&app, id, &student, &[("accept-encoding", accept)]).await;
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), expected, "{accept}");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{accept}");
        assert_eq!(r.header("vary"), Some(VARY));
        assert_eq!(r.header("cache-control"), Some(CACHE_CONTROL));
        assert_eq!(
            r.header("content-length").unwrap(),
            r.body.len().to_string(),
            "{accept}"
        );
        let decoded = decode(expected, &r.body);
        assert_eq!(decoded, identity.body, "{accept}");
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            identity_json
        );
        if expected.is_some() {
            assert!(r.body.len() < identity.body.len(), "{accept} compresses");
        }
    }
    assert!(downloads_metric(&app, ("status", "200")).await >= before + 10.0);

    // A decoding client (reqwest with gzip/br) sees the same JSON.
    let decoded: Value = app
        .get(&format!("/api/v1/tests/packages/{id}"), &student)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(decoded, identity_json);
}

async fn unpublished_packages_are_invisible_to_students(backend: Backend) {
    let app = spawn_app(backend).await;
    app.import_questions(json!([question("hidden", &["a", "b"], 0, 8, None, None)]))
        .await;
    let draft = build_ok(
        &app,
        json!({"name": "Hidden", "scope": "YEAR", "yearId": 8}),
    )
    .await;
    assert_eq!(draft["isPublished"], false);
    let id = draft["id"].as_str().unwrap();
    let path = format!("/api/v1/tests/packages/{id}");
    let (_, student) = app.student();
    let admin = app.admin_token();

    // REST: 404 for everyone, by every route and header.
    for token in [&student, &admin] {
        let own_etag = format!("W/\"{}\"", draft["versionHash"].as_str().unwrap());
        for (method, headers) in [
            (Method::GET, vec![]),
            (Method::HEAD, vec![]),
            (Method::GET, vec![("if-none-match", "*".to_owned())]),
            (Method::GET, vec![("if-none-match", own_etag)]),
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_ref())).collect();
            let r = fetch(&app, method.clone(), &path, Some(token), &headers).await;
            assert_eq!(r.status, 404, "{method} {headers:?}");
            if method == Method::GET {
                assert_eq!(r.json()["error_code"], "NOT_FOUND");
            }
        }
        let (_, items) = list(&app, token, "").await;
        assert!(!ids_of(&items).contains(&id.to_owned()));
    }

    // GraphQL: null for students, visible to admins; never in `packages`.
    let query = "query($id: UUID!) { package(id: $id) { id isPublished questionCount questions { questionId } } \
                 packages { id } }";
    let (_, body) = app.graphql(Some(&student), query, json!({"id": id})).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["package"], Value::Null);
    assert!(!body["data"]["packages"].to_string().contains(id));
    let (_, body) = app.graphql(Some(&admin), query, json!({"id": id})).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["package"]["isPublished"], false);
    assert_eq!(
        body["data"]["package"]["questions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!body["data"]["packages"].to_string().contains(id));

    // Published: visible (nothing stale was cached by the 404s).
    let (_, body) = app
        .graphql(
            Some(&admin),
            "mutation($id: UUID!) { publishPackage(id: $id) { isPublished } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        body["data"]["publishPackage"]["isPublished"], true,
        "{body}"
    );
    assert_eq!(get_package(&app, id, &student, &[]).await.status, 200);
    let r = get_package(&app, id, &student, &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 304);
    let (_, body) = app.graphql(Some(&student), query, json!({"id": id})).await;
    assert_eq!(body["data"]["package"]["id"], id, "{body}");
    let (_, items) = list(&app, &student, "").await;
    assert!(ids_of(&items).contains(&id.to_owned()));
}

async fn ids_and_authentication(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 1).await;
    let id = package["id"].as_str().unwrap();
    let (_, student) = app.student();

    for bad in [
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
        "%E2%9C%93",
        "' OR 1=1 --",
    ] {
        let r = fetch(
            &app,
            Method::GET,
            &format!("/api/v1/tests/packages/{bad}"),
            Some(&student),
            &[],
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
        let body = r.json();
        assert_eq!(body["error_code"], "VALIDATION_ERROR", "{bad}: {body}");
        assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
    }
    let r = get_package(&app, &Uuid::new_v4().to_string(), &student, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error_code"], "NOT_FOUND");

    // No token, a bad token: 401 with WWW-Authenticate on every package route.
    for token in [None, Some("not.a.token")] {
        for (method, path) in [
            (Method::GET, "/api/v1/tests/packages".to_owned()),
            (Method::GET, format!("/api/v1/tests/packages/{id}")),
            (Method::HEAD, format!("/api/v1/tests/packages/{id}")),
            (Method::GET, "/api/v1/tests/packages/not-a-uuid".to_owned()),
        ] {
            let r = fetch(
                &app,
                method.clone(),
                &path,
                token,
                &[("if-none-match", "*")],
            )
            .await;
            assert_eq!(r.status, 401, "{method} {path} {token:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
}

async fn list_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    app.import_questions(json!([
        question("y0", &["a", "b"], 0, 0, Some(0), Some(0)),
        question("y1", &["a", "b"], 0, 1, Some(11), Some(111)),
        question("y1b", &["a", "b"], 1, 1, Some(12), None),
    ]))
    .await;
    let mut built = BTreeMap::new();
    for (key, input) in [
        ("program", json!({"scope": "PROGRAM"})),
        ("year0", json!({"scope": "YEAR", "yearId": 0})),
        ("year1", json!({"scope": "YEAR", "yearId": 1})),
        (
            "block11",
            json!({"scope": "BLOCK", "blockId": 11, "yearId": 1}),
        ),
        ("theme111", json!({"scope": "THEME", "themeId": 111})),
        ("theme0", json!({"scope": "THEME", "themeId": 0})),
    ] {
        let mut input = input;
        input["name"] = json!(key);
        input["publish"] = json!(true);
        let package = build_ok(&app, input).await;
        built.insert(key, package["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // An unpublished one never shows.
    app.import_questions(json!([question("y9", &["a", "b"], 0, 9, None, None)]))
        .await;
    build_ok(&app, json!({"name": "draft", "scope": "YEAR", "yearId": 9})).await;
    // Year 1 gets a second version.
    app.import_questions(json!([question("y1c", &["a", "b"], 0, 1, None, None)]))
        .await;
    let year1_v2 = build_ok(
        &app,
        json!({"name": "year1 v2", "scope": "YEAR", "yearId": 1, "publish": true}),
    )
    .await;
    let year1_v2 = year1_v2["id"].as_str().unwrap().to_owned();

    let (_, student) = app.student();
    let (status, all) = list(&app, &student, "").await;
    assert_eq!(status, 200);
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "{all}");
    // Newest published first.
    let published: Vec<&str> = items
        .iter()
        .map(|i| i["published_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        published.iter().map(|p| p.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{published:?}");
    assert_eq!(items[0]["package_id"], year1_v2.as_str());
    // Item shape.
    for item in items {
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "description",
                "media_bytes",
                "media_count",
                "name",
                "package_id",
                "published_at",
                "question_count",
                "scope",
                "scope_data",
                "updated_at",
                "version",
                "version_hash"
            ]
        );
        let mut scope_keys: Vec<&str> = item["scope_data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        scope_keys.sort();
        assert_eq!(scope_keys, ["block_id", "theme_id", "year_id"]);
    }
    let block = items
        .iter()
        .find(|i| i["package_id"] == built["block11"].as_str())
        .unwrap();
    assert_eq!(
        block["scope_data"],
        json!({"year_id": 1, "block_id": 11, "theme_id": null})
    );
    assert_eq!(block["scope"], "BLOCK");
    assert_eq!(block["version"], 1);
    assert_eq!(block["question_count"], 1);

    let set = |v: &Value| ids_of(v).into_iter().collect::<HashSet<_>>();
    let expect = |keys: &[&str]| {
        keys.iter()
            .map(|k| built[k].clone())
            .collect::<HashSet<_>>()
    };
    // A filter value of 0 is a filter.
    let (_, r) = list(&app, &student, "?year_id=0").await;
    assert_eq!(set(&r), expect(&["year0"]));
    let (_, r) = list(&app, &student, "?theme_id=0").await;
    assert_eq!(set(&r), expect(&["theme0"]));
    let (_, r) = list(&app, &student, "?scope=THEME&theme_id=111").await;
    assert_eq!(set(&r), expect(&["theme111"]));
    let (_, r) = list(&app, &student, "?block_id=11").await;
    assert_eq!(set(&r), expect(&["block11"]));
    let (_, r) = list(&app, &student, "?scope=year").await;
    let mut want = expect(&["year0", "year1"]);
    want.insert(year1_v2.clone());
    assert_eq!(set(&r), want);
    let (_, r) = list(&app, &student, "?scope=YEAR&latest=true").await;
    assert_eq!(set(&r), {
        let mut w = expect(&["year0"]);
        w.insert(year1_v2.clone());
        w
    });
    let (_, r) = list(&app, &student, "?latest=true").await;
    assert_eq!(r["items"].as_array().unwrap().len(), 6);
    let (_, r) = list(&app, &student, "?latest=false&year_id=1&scope=YEAR").await;
    assert_eq!(r["items"].as_array().unwrap().len(), 2);
    let (_, r) = list(&app, &student, "?year_id=1").await;
    assert_eq!(
        r["items"].as_array().unwrap().len(),
        3,
        "two YEAR versions and the BLOCK"
    );
    let (_, r) = list(&app, &student, "?year_id=42").await;
    assert_eq!(r, json!({"items": []}));

    // Bad filters: 400 naming the problem.
    let (status, body) = list(&app, &student, "?scope=COURSE").await;
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "VALIDATION_ERROR");
    let message = body["message"].as_str().unwrap();
    for name in ["PROGRAM", "YEAR", "BLOCK", "THEME"] {
        assert!(message.contains(name), "{message}");
    }
    for query in [
        "?year_id=abc",
        "?block_id=1.5",
        "?theme_id=99999999999",
        "?latest=sometimes",
    ] {
        let (status, body) = list(&app, &student, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error_code"], "VALIDATION_ERROR");
    }

    // GraphQL: the same filters.
    let query = "query($f: PackageFilter) { packages(filter: $f) { id version scope } }";
    let gql = |filter: Value| {
        let app = &app;
        let student = student.clone();
        async move {
            let (_, body) = app
                .graphql(Some(&student), query, json!({"f": filter}))
                .await;
            assert!(body.get("errors").is_none(), "{body}");
            body["data"]["packages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect::<HashSet<_>>()
        }
    };
    assert_eq!(gql(json!({"yearId": 0})).await, expect(&["year0"]));
    assert_eq!(gql(json!({"scope": "YEAR", "latest": true})).await, {
        let mut w = expect(&["year0"]);
        w.insert(year1_v2.clone());
        w
    });
    assert_eq!(gql(Value::Null).await.len(), 7);
}

async fn graphql_package_types(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, ids) = published_year(&app, 2).await;
    let id = package["id"].as_str().unwrap();
    let (_, student) = app.student();
    let query = "query($id: UUID!) { package(id: $id) { id name scope scopeData version versionHash \
        questionCount isPublished publishedAt updatedAt downloadPath questions { id questionId stem \
        options correctIndex explanationMd yearId blockId themeId cognitiveLevel difficulty } } }";
    let (_, body) = app.graphql(Some(&student), query, json!({"id": id})).await;
    assert!(body.get("errors").is_none(), "{body}");
    let p = &body["data"]["package"];
    assert_eq!(p["scope"], "YEAR");
    assert_eq!(p["scopeData"], json!({"year_id": 2}));
    assert_eq!(p["downloadPath"], format!("/api/v1/tests/packages/{id}"));
    assert_eq!(p["questionCount"], 3);
    let questions = p["questions"].as_array().unwrap();
    assert_eq!(questions.len(), 3);
    for q in questions {
        let qid = q["questionId"].as_str().unwrap();
        assert!(ids.iter().any(|i| i.to_string() == qid));
        assert_eq!(q["id"], format!("{id}:{qid}"));
    }
    let five = questions
        .iter()
        .find(|q| q["stem"] == "First-line drug?")
        .unwrap();
    assert_eq!(five["options"], json!(["A", "B", "C", "D", "E"]));
    assert_eq!(five["correctIndex"], 4);
    assert_eq!(five["blockId"], Value::Null);
    let two = questions
        .iter()
        .find(|q| q["options"].as_array().unwrap().len() == 2)
        .unwrap();
    assert_eq!(two["options"], json!(["Vagus", "Phrenic"]));
    assert_eq!(two["yearId"], 2);

    // REST and GraphQL agree on the snapshots.
    let rest = get_package(&app, id, &student, &[]).await.json();
    for (r, g) in rest["questions"].as_array().unwrap().iter().zip(questions) {
        assert_eq!(r["question_id"], g["questionId"]);
        assert_eq!(r["stem"], g["stem"]);
        assert_eq!(r["correct_index"], g["correctIndex"]);
    }

    // Unknown id: null; publishing an unknown id: NOT_FOUND; students cannot publish.
    let (_, body) = app
        .graphql(Some(&student), query, json!({"id": Uuid::new_v4()}))
        .await;
    assert_eq!(body["data"]["package"], Value::Null, "{body}");
    let publish = "mutation($id: UUID!) { publishPackage(id: $id) { id } }";
    let (_, body) = app
        .graphql(
            Some(&app.admin_token()),
            publish,
            json!({"id": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = app
        .graphql(Some(&student), publish, json!({"id": id}))
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
    let (_, body) = app.graphql(None, query, json!({"id": id})).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");

    // Lists with questions batch through the loader and still answer per package.
    let (package2, _) = published_year(&app, 7).await;
    let (_, body) = app
        .graphql(
            Some(&student),
            "{ packages { id questionCount questions { id } } }",
            Value::Null,
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let packages = body["data"]["packages"].as_array().unwrap();
    assert_eq!(packages.len(), 2);
    for p in packages {
        assert_eq!(
            p["questions"].as_array().unwrap().len(),
            p["questionCount"].as_u64().unwrap() as usize
        );
        let pid = p["id"].as_str().unwrap();
        assert!(pid == id || pid == package2["id"].as_str().unwrap());
        assert!(p["questions"][0]["id"].as_str().unwrap().starts_with(pid));
    }
}

async fn concurrent_builds_make_one_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let ids = app
        .import_questions(json!([
            question("c1", &["a", "b"], 0, 4, Some(41), None),
            question("c2", &["a", "b"], 1, 4, Some(41), None),
        ]))
        .await;
    let input = json!({"name": "Race", "scope": "BLOCK", "blockId": 41, "publish": true});
    for round in 1..=2 {
        let builds = (0..6).map(|_| build(&app, input.clone()));
        let results = futures::future::join_all(builds).await;
        let mut seen = HashSet::new();
        for body in &results {
            assert!(body.get("errors").is_none(), "{body}");
            let p = &body["data"]["buildPackage"];
            assert_eq!(p["version"], round, "{body}");
            seen.insert(p["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "every concurrent build returns the winner");
        assert_eq!(
            count_rows(&app.db, "test_packages", "scope = 'BLOCK'").await,
            round
        );
        // Change the set for the next round.
        let mut changed = question(
            &format!("c1 round {round}"),
            &["a", "b"],
            0,
            4,
            Some(41),
            None,
        );
        changed["id"] = json!(ids[0]);
        app.import_questions(json!([changed])).await;
    }
}

async fn caching_client_revalidates_with_304(backend: Backend) {
    use http_cache_reqwest::{
        Cache, CacheMode, CacheOptions, HttpCache, HttpCacheOptions, MokaManager,
    };

    /// `If-None-Match` sent and status received, per request on the wire.
    type WireLog = Arc<Mutex<Vec<(Option<String>, u16)>>>;

    /// Records what goes over the wire (it sits after the cache in the chain).
    struct Wire(WireLog);

    #[async_trait::async_trait]
    impl reqwest_middleware::Middleware for Wire {
        async fn handle(
            &self,
            req: reqwest::Request,
            extensions: &mut http::Extensions,
            next: reqwest_middleware::Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            let if_none_match = req
                .headers()
                .get("if-none-match")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let response = next.run(req, extensions).await?;
            self.0
                .lock()
                .unwrap()
                .push((if_none_match, response.status().as_u16()));
            Ok(response)
        }
    }

    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 6).await;
    let url = app.url(&format!(
        "/api/v1/tests/packages/{}",
        package["id"].as_str().unwrap()
    ));
    let etag = format!("W/\"{}\"", package["versionHash"].as_str().unwrap());
    let (_, student) = app.student();

    let wire = Arc::new(Mutex::new(Vec::new()));
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        "authorization",
        format!("Bearer {student}").parse().unwrap(),
    );
    let inner = Client::builder()
        .no_gzip()
        .no_brotli()
        .default_headers(auth)
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(Cache(HttpCache {
            mode: CacheMode::Default,
            manager: MokaManager::default(),
            options: HttpCacheOptions {
                // A phone's cache is private: `Cache-Control: private` responses are stored.
                cache_options: Some(CacheOptions {
                    shared: false,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }))
        .with(Wire(wire.clone()))
        .build();
    let before_304 = downloads_metric(&app, ("status", "304")).await;

    // 1. A miss: the full body over the wire.
    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();
    // 2. Fresh (max-age one year, immutable): served from the cache, nothing on the wire.
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(wire.lock().unwrap().len(), 1);
    // 3. The user asks to revalidate (`no-cache`): a conditional request, a 304 on the wire,
    //    and the full body from the cache to the caller.
    let third = client
        .get(&url)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(third.bytes().await.unwrap(), first_body);
    let seen = wire.lock().unwrap().clone();
    assert_eq!(seen, [(None, 200), (Some(etag), 304)]);
    assert!(downloads_metric(&app, ("status", "304")).await >= before_304 + 1.0);
    let body: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(body["questions"].as_array().unwrap().len(), 3);
}

async fn scoring_keys_for_sync(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, ids) = published_year(&app, 5).await;
    app.import_questions(json!([question("d", &["a", "b", "c"], 2, 9, None, None)]))
        .await;
    let draft = build_ok(&app, json!({"name": "d", "scope": "YEAR", "yearId": 9})).await;
    let published: Uuid = package["id"].as_str().unwrap().parse().unwrap();
    let unpublished: Uuid = draft["id"].as_str().unwrap().parse().unwrap();
    let store = PackageStore::default();
    for _ in 0..2 {
        // The second round comes from the cache.
        let keys = store
            .scoring_for(
                &app.db,
                &[published, unpublished, Uuid::new_v4(), published],
            )
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        let scoring = &keys[&published];
        assert_eq!(scoring.questions.len(), 3);
        let nerve = scoring.questions[&ids[0]];
        assert_eq!((nerve.option_count, nerve.correct_index), (2, 1));
        let drug = scoring.questions[&ids[1]];
        assert_eq!((drug.option_count, drug.correct_index), (5, 4));
    }
    assert_eq!(store.cached_counts().2, 1);
}

/// `examsync package build` on a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_package_build() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli-packages.db?mode=rwc", dir.path().display());
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .env("DATABASE_URL", &url)
            .env_remove("REDIS_URL")
            .output()
            .expect("run examsync")
    };
    let file = dir.path().join("questions.json");
    std::fs::write(
        &file,
        json!([
            {"stem": "One", "options": ["a", "b"], "correctIndex": 0, "yearId": 1, "blockId": 11},
            {"stem": "Two", "options": ["a", "b", "c"], "correctIndex": 2, "yearId": 1},
            {"stem": "Other year", "options": ["a", "b"], "correctIndex": 1, "yearId": 2}
        ])
        .to_string(),
    )
    .unwrap();
    let out = run(&["questions", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&[
        "package",
        "build",
        "--scope",
        "YEAR",
        "--year-id",
        "1",
        "--name",
        "Year one",
        "--publish",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8(out.stdout).unwrap();
    assert!(first.contains("version 1"), "{first}");
    assert!(first.contains("2 questions"), "{first}");
    assert!(first.contains("published"), "{first}");
    // Unchanged: the same package.
    let out = run(&[
        "package",
        "build",
        "--scope",
        "year",
        "--year-id",
        "1",
        "--publish",
    ]);
    assert!(out.status.success());
    let second = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        first.split_whitespace().nth(1),
        second.split_whitespace().nth(1),
        "{first} / {second}"
    );
    // Unpublished build of another scope.
    let out = run(&["package", "build", "--scope", "PROGRAM"]);
    assert!(out.status.success());
    let program = String::from_utf8(out.stdout).unwrap();
    assert!(
        program.contains("unpublished") && program.contains("3 questions"),
        "{program}"
    );
    // Bad input: a clear error, non-zero exit.
    let out = run(&["package", "build", "--scope", "YEAR"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("yearId"));
    let out = run(&["package", "build", "--scope", "YEAR", "--year-id", "77"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no published questions"));

    let db = examsync::db::connect(&url, 1).await.unwrap();
    assert_eq!(count_rows(&db, "test_packages", "").await, 2);
    assert_eq!(count_rows(&db, "test_packages", "is_published").await, 1);
    let hash: String = {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT version_hash, questions_json FROM test_packages WHERE scope = 'YEAR'"
                    .to_owned(),
            ))
            .await
            .unwrap()
            .unwrap();
        let questions: String = row.try_get("", "questions_json").unwrap();
        let parsed: Vec<Value> = serde_json::from_str(&questions).unwrap();
        let (canonical, hash) = version_hash_of(&parsed);
        assert_eq!(
            canonical, questions,
            "questions_json holds the canonical bytes"
        );
        assert_eq!(row.try_get::<String>("", "version_hash").unwrap(), hash);
        hash
    };
    assert_eq!(hash.len(), 64);
}

// ---------------------------------------------------------------------------------------
// Deltas, ranges and dictionary transport (docs/api.md sections 5 and 5.1)

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

async fn get_delta(
    app: &TestApp,
    id: &str,
    from: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Download {
    fetch(
        app,
        Method::GET,
        &format!("/api/v1/tests/packages/{id}/delta?from={from}"),
        Some(token),
        headers,
    )
    .await
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

async fn deltas_turn_the_held_version_into_the_new_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (v1, v2, ids) = two_versions(&app, 31).await;
    let (id1, id2) = (v1["id"].as_str().unwrap(), v2["id"].as_str().unwrap());
    let (h1, h2) = (
        v1["versionHash"].as_str().unwrap(),
        v2["versionHash"].as_str().unwrap(),
    );
    let (_, student) = app.student();
    let old = get_package(&app, id1, &student, &[]).await.json();
    let new = get_package(&app, id2, &student, &[]).await.json();

    let r = get_delta(&app, id2, id1, &student, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let delta = r.json();
    assert_eq!(delta["package_id"], id2);
    assert_eq!(delta["version"], 2);
    assert_eq!(delta["version_hash"], h2);
    assert_eq!(delta["question_count"], 4);
    assert_eq!(delta["from_package_id"], id1);
    assert_eq!(delta["from_version"], 1);
    assert_eq!(delta["from_version_hash"], h1);
    assert_eq!(delta["removed"], json!([ids[2]]));
    let upserted: Vec<&str> = delta["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_id"].as_str().unwrap())
        .collect();
    assert_eq!(upserted.len(), 3, "{delta}"); // edited stem, edited options, added
    let mut sorted = upserted.clone();
    sorted.sort();
    assert_eq!(upserted, sorted, "upserted is ordered by question_id");
    assert!(
        !upserted.contains(&ids[3].to_string().as_str()),
        "unchanged is not sent"
    );
    for q in delta["upserted"].as_array().unwrap() {
        assert_eq!(q.as_object().unwrap().len(), 14, "{q}");
    }

    // Applying it gives exactly the new download, and its hash verifies.
    let applied = apply_delta(old["questions"].as_array().unwrap(), &delta);
    assert_eq!(Value::Array(applied.clone()), new["questions"]);
    assert_eq!(version_hash_of(&applied).1, h2);

    // Caching: weak ETag from the two hashes, immutable, 304, Last-Modified.
    let etag = format!("W/\"{h1}.{h2}\"");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("cache-control"), Some(CACHE_CONTROL));
    assert_eq!(r.header("vary"), Some(VARY));
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));
    assert_eq!(r.header("use-as-dictionary"), None);
    for inm in [
        etag.clone(),
        format!("\"{h1}.{h2}\""),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let nm = get_delta(&app, id2, id1, &student, &[("if-none-match", &inm)]).await;
        assert_eq!(nm.status, 304, "{inm}");
        assert!(nm.body.is_empty());
        assert_eq!(nm.header("etag"), Some(etag.as_str()));
        assert_eq!(nm.header("cache-control"), Some(CACHE_CONTROL));
        assert_eq!(nm.header("vary"), Some(VARY));
        assert_eq!(nm.header("last-modified"), r.header("last-modified"));
    }
    let other = get_delta(
        &app,
        id2,
        id1,
        &student,
        &[("if-none-match", &format!("W/\"{h2}\""))],
    )
    .await;
    assert_eq!(other.status, 200, "the download's ETag is not the delta's");

    // gzip and br: same ETag, same bytes once decoded.
    for coding in ["gzip", "br"] {
        let c = get_delta(&app, id2, id1, &student, &[("accept-encoding", coding)]).await;
        assert_eq!(c.header("content-encoding"), Some(coding));
        assert_eq!(c.header("etag"), Some(etag.as_str()));
        assert_eq!(decode(Some(coding), &c.body), r.body);
    }
    // HEAD: the GET's status and headers, no body.
    let head = fetch(
        &app,
        Method::HEAD,
        &format!("/api/v1/tests/packages/{id2}/delta?from={id1}"),
        Some(&student),
        &[],
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(comparable(&head.headers), comparable(&r.headers));

    // Backwards (from the newer) and the same id twice.
    let back = get_delta(&app, id1, id2, &student, &[]).await.json();
    let applied = apply_delta(new["questions"].as_array().unwrap(), &back);
    assert_eq!(Value::Array(applied), old["questions"]);
    assert_eq!(back["removed"], json!([ids[4]]), "v2's added question");
    let same = get_delta(&app, id2, id2, &student, &[]).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["upserted"], json!([]));
    assert_eq!(same.json()["removed"], json!([]));

    // Another instance (nothing cached there) sends the same bytes and validators.
    let (base, handle) = crate::graphql::second_instance(&app).await;
    let there = raw_client()
        .get(format!(
            "{base}/api/v1/tests/packages/{id2}/delta?from={id1}"
        ))
        .bearer_auth(&student)
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(there.headers()["etag"].to_str().unwrap(), etag);
    let here = get_delta(&app, id2, id1, &student, &[("accept-encoding", "br")]).await;
    assert_eq!(there.bytes().await.unwrap().to_vec(), here.body);
    handle.abort();
}

async fn delta_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let (v1, v2, _) = two_versions(&app, 32).await;
    let (id1, id2) = (v1["id"].as_str().unwrap(), v2["id"].as_str().unwrap());
    let (other, _) = published_year(&app, 33).await;
    let other = other["id"].as_str().unwrap();
    let (_, student) = app.student();
    let unknown = Uuid::new_v4().to_string();

    for (id, from, status, code) in [
        (id2, unknown.as_str(), 404, "NOT_FOUND"),
        (unknown.as_str(), id1, 404, "NOT_FOUND"),
        ("not-a-uuid", id1, 400, "VALIDATION_ERROR"),
        (id2, "nope", 400, "VALIDATION_ERROR"),
        (id2, "", 400, "VALIDATION_ERROR"),
        (id2, other, 409, "DELTA_SCOPE_MISMATCH"),
        (other, id1, 409, "DELTA_SCOPE_MISMATCH"),
    ] {
        let r = get_delta(&app, id, from, &student, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{id} {from}");
        assert_eq!(r.json()["error_code"], code, "{id} {from}");
        // The 304 path checks the same rules before comparing validators.
        let r = get_delta(&app, id, from, &student, &[("if-none-match", "*")]).await;
        assert_eq!(r.status.as_u16(), status, "{id} {from} with If-None-Match");
    }
    // No `from` at all.
    let r = fetch(
        &app,
        Method::GET,
        &format!("/api/v1/tests/packages/{id2}/delta"),
        Some(&student),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    // Unauthenticated.
    let r = fetch(
        &app,
        Method::GET,
        &format!("/api/v1/tests/packages/{id2}/delta?from={id1}"),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    // An unpublished version is invisible: 404.
    app.import_questions(json!([question("Zeta?", &["a", "b"], 0, 32, None, None)]))
        .await;
    let draft = build_ok(&app, json!({"name": "v3", "scope": "YEAR", "yearId": 32})).await;
    assert_eq!(draft["isPublished"], false);
    let r = get_delta(&app, draft["id"].as_str().unwrap(), id1, &student, &[]).await;
    assert_eq!(r.status, 404);
    let r = get_delta(&app, id1, draft["id"].as_str().unwrap(), &student, &[]).await;
    assert_eq!(r.status, 404);
}

async fn graphql_package_delta(backend: Backend) {
    let app = spawn_app(backend).await;
    let (v1, v2, ids) = two_versions(&app, 34).await;
    let (id1, id2) = (v1["id"].as_str().unwrap(), v2["id"].as_str().unwrap());
    let (other, _) = published_year(&app, 35).await;
    let (_, student) = app.student();
    const Q: &str = "query($id: UUID!, $from: UUID!) { packageDelta(id: $id, from: $from) { \
        package { id version versionHash } from { id version versionHash } \
        upserted { id questionId stem options correctIndex } removed } }";
    let (status, body) = app
        .graphql(Some(&student), Q, json!({"id": id2, "from": id1}))
        .await;
    assert_eq!(status, 200);
    let d = &body["data"]["packageDelta"];
    assert_eq!(d["package"]["id"], id2, "{body}");
    assert_eq!(d["from"]["versionHash"], v1["versionHash"]);
    assert_eq!(d["removed"], json!([ids[2]]));
    let rest = get_delta(&app, id2, id1, &student, &[]).await.json();
    let rest_ids: Vec<&Value> = rest["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["question_id"])
        .collect();
    let gql_ids: Vec<&Value> = d["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["questionId"])
        .collect();
    assert_eq!(gql_ids, rest_ids);
    assert_eq!(
        d["upserted"][0]["id"],
        format!("{id2}:{}", rest_ids[0].as_str().unwrap())
    );
    // Unknown: null. Another scope: BAD_USER_INPUT.
    let (_, body) = app
        .graphql(
            Some(&student),
            Q,
            json!({"id": id2, "from": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(body["data"]["packageDelta"], Value::Null, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let (_, body) = app
        .graphql(Some(&student), Q, json!({"id": id2, "from": other["id"]}))
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["data"]["packageDelta"], Value::Null);
}

async fn ranges_resume_against_another_instance(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, _) = published_year(&app, 36).await;
    let id = package["id"].as_str().unwrap();
    let (_, student) = app.student();
    let (other_base, handle) = crate::graphql::second_instance(&app).await;
    let path = format!("/api/v1/tests/packages/{id}");

    for coding in ["identity", "gzip", "br"] {
        let full = get_package(&app, id, &student, &[("accept-encoding", coding)]).await;
        assert_eq!(full.status, 200);
        assert_eq!(full.header("accept-ranges"), Some("bytes"));
        let last_modified = full.header("last-modified").unwrap().to_owned();
        assert!(last_modified.ends_with(" GMT"), "{last_modified}");
        let total = full.body.len();
        let cut = total / 3;

        // The first part from this instance…
        let first = get_package(
            &app,
            id,
            &student,
            &[
                ("accept-encoding", coding),
                ("range", &format!("bytes=0-{}", cut - 1)),
            ],
        )
        .await;
        assert_eq!(first.status, 206, "{coding}");
        assert_eq!(
            first.header("content-range"),
            Some(format!("bytes 0-{}/{total}", cut - 1).as_str())
        );
        assert_eq!(first.header("etag"), full.header("etag"));
        assert_eq!(first.header("use-as-dictionary"), None);
        // …the rest from the other one, guarded by If-Range.
        let rest = raw_client()
            .get(format!("{other_base}{path}"))
            .bearer_auth(&student)
            .header("accept-encoding", coding)
            .header("range", format!("bytes={cut}-"))
            .header("if-range", &last_modified)
            .send()
            .await
            .unwrap();
        assert_eq!(rest.status(), 206, "{coding}");
        assert_eq!(
            rest.headers()["content-range"].to_str().unwrap(),
            format!("bytes {cut}-{}/{total}", total - 1)
        );
        let mut assembled = first.body.clone();
        assembled.extend_from_slice(&rest.bytes().await.unwrap());
        assert_eq!(assembled, full.body, "{coding} assembles");

        // Suffix range; a stale If-Range date gets the whole 200; 416 past the end.
        let tail = get_package(
            &app,
            id,
            &student,
            &[("accept-encoding", coding), ("range", "bytes=-10")],
        )
        .await;
        assert_eq!(tail.status, 206);
        assert_eq!(tail.body, full.body[total - 10..]);
        let stale = get_package(
            &app,
            id,
            &student,
            &[
                ("accept-encoding", coding),
                ("range", "bytes=0-9"),
                ("if-range", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        )
        .await;
        assert_eq!(stale.status, 200);
        assert_eq!(stale.body, full.body);
        let weak = get_package(
            &app,
            id,
            &student,
            &[
                ("range", "bytes=0-9"),
                ("if-range", full.header("etag").unwrap()),
            ],
        )
        .await;
        assert_eq!(weak.status, 200, "a weak ETag never satisfies If-Range");
        let past = get_package(
            &app,
            id,
            &student,
            &[
                ("accept-encoding", coding),
                ("range", &format!("bytes={total}-")),
            ],
        )
        .await;
        assert_eq!(past.status, 416);
        assert_eq!(
            past.header("content-range"),
            Some(format!("bytes */{total}").as_str())
        );
        assert_eq!(past.json()["error_code"], "RANGE_NOT_SATISFIABLE");
        // Several ranges: the whole body.
        let multi = get_package(
            &app,
            id,
            &student,
            &[("accept-encoding", coding), ("range", "bytes=0-1,5-6")],
        )
        .await;
        assert_eq!(multi.status, 200);
    }
    // A 304 carries Last-Modified too.
    let nm = get_package(
        &app,
        id,
        &student,
        &[(
            "if-none-match",
            &format!("W/\"{}\"", package["versionHash"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(nm.status, 304);
    assert!(nm.header("last-modified").is_some());
    handle.abort();
}

/// Runs the independent Python decoder; `None` when python3 with zstandard is missing.
async fn python_dcz_decode(dictionary: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let has = std::process::Command::new("python3")
        .args(["-c", "import zstandard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        if crate::helpers::services_required() {
            panic!(
                "python3 with zstandard is required (pip install -r tests/interop/requirements.txt)"
            );
        }
        eprintln!("SKIPPED: python3 with zstandard missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (d, b, o) = (
        dir.path().join("dict"),
        dir.path().join("body"),
        dir.path().join("out"),
    );
    std::fs::write(&d, dictionary).unwrap();
    std::fs::write(&b, body).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/dcz_decode.py"
        ))
        .args([&d, &b, &o])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "dcz_decode.py: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(std::fs::read(&o).unwrap())
}

async fn dcz_with_a_published_download_as_dictionary(backend: Backend) {
    use base64::Engine;
    let app = spawn_app(backend).await;
    let (v1, v2, _) = two_versions(&app, 37).await;
    let (id1, id2) = (v1["id"].as_str().unwrap(), v2["id"].as_str().unwrap());
    let (_, student) = app.student();
    let old = get_package(&app, id1, &student, &[]).await;
    assert_eq!(
        old.header("use-as-dictionary"),
        Some("match=\"/api/v1/tests/packages/*\"")
    );
    let new = get_package(&app, id2, &student, &[]).await;
    let sha: [u8; 32] = Sha256::digest(&old.body).into();
    let available = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(sha)
    );
    let before = downloads_metric(&app, ("encoding", "dcz")).await;

    // On another instance, which never served v1: the digest is found in the database.
    let (other_base, handle) = crate::graphql::second_instance(&app).await;
    for base in [app.base.clone(), other_base] {
        let r = raw_client()
            .get(format!("{base}/api/v1/tests/packages/{id2}"))
            .bearer_auth(&student)
            .header("accept-encoding", "gzip, deflate, br, zstd, dcb, dcz")
            .header("available-dictionary", &available)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-encoding"], "dcz", "{base}");
        assert_eq!(h["etag"], new.header("etag").unwrap());
        assert_eq!(h["vary"], VARY);
        assert_eq!(h["use-as-dictionary"], "match=\"/api/v1/tests/packages/*\"");
        let body = r.bytes().await.unwrap().to_vec();
        assert_eq!(
            h["content-length"].to_str().unwrap(),
            body.len().to_string()
        );
        assert_eq!(&body[..8], &[0x5e, 0x2a, 0x4d, 0x18, 0x20, 0, 0, 0]);
        assert_eq!(&body[8..40], &sha);
        assert!(
            body.len() < new.body.len() / 2,
            "{} vs {}",
            body.len(),
            new.body.len()
        );
        if let Some(decoded) = python_dcz_decode(&old.body, &body).await {
            assert_eq!(decoded, new.body, "decoded by Python zstandard");
        }
    }
    handle.abort();
    assert!(downloads_metric(&app, ("encoding", "dcz")).await >= before + 1.0);

    // A dictionary the server does not know, or no `dcz` in Accept-Encoding: br.
    let unknown = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode([9u8; 32])
    );
    for (accept, dictionary) in [
        ("br, dcz", unknown.as_str()),
        ("br", available.as_str()),
        ("br, dcz", "garbage"),
        ("br, dcz;q=0", available.as_str()),
    ] {
        let r = get_package(
            &app,
            id2,
            &student,
            &[
                ("accept-encoding", accept),
                ("available-dictionary", dictionary),
            ],
        )
        .await;
        assert_eq!(
            r.header("content-encoding"),
            Some("br"),
            "{accept} {dictionary}"
        );
        assert_eq!(decode(Some("br"), &r.body), new.body);
    }
    // A 304 wins over any encoding.
    let r = get_package(
        &app,
        id2,
        &student,
        &[
            ("accept-encoding", "dcz"),
            ("available-dictionary", &available),
            ("if-none-match", new.header("etag").unwrap()),
        ],
    )
    .await;
    assert_eq!(r.status, 304);
}

/// Chromium (RFC 9842): version N, then N+1 as `dcz`, bytes identical to the identity
/// download, counted by the server's metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_dcz_updates() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dcz.mjs");
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules");
    let ready = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new(modules).exists();
    if !ready {
        if crate::helpers::services_required() {
            panic!("chromium or tests/browser/node_modules missing");
        }
        eprintln!("SKIPPED: chromium or tests/browser/node_modules missing");
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let (v1, v2, _) = two_versions(&app, 38).await;
    let (_, student) = app.student();
    let before = downloads_metric(&app, ("encoding", "dcz")).await;
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env(
            "EXAMSYNC_URL",
            format!("http://localhost:{}", app.addr.port()),
        )
        .env("EXAMSYNC_TOKEN", &student)
        .env("OLD_ID", v1["id"].as_str().unwrap())
        .env("NEW_ID", v2["id"].as_str().unwrap())
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser check failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        downloads_metric(&app, ("encoding", "dcz")).await >= before + 1.0,
        "the server counted a dcz response"
    );
}

/// `requests` copies of one GET sent at once; every answer must be a `200` with one body.
async fn burst(app: &TestApp, path: &str, token: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let requests = (0..16).map(|_| fetch(app, Method::GET, path, Some(token), headers));
    let answers = futures::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(
            answer.body, answers[0].body,
            "{path}: every answer has the same bytes"
        );
    }
    answers[0].body.clone()
}

/// A new version appears and every phone asks for it at once: the instance builds each
/// download, delta and `dcz` body once, and the other requests wait for that build.
async fn a_burst_of_cold_requests_builds_once(backend: Backend) {
    use base64::Engine;
    use examsync::metrics::PackageBuild;
    let app = spawn_app(backend).await;
    let (v1, v2, _) = two_versions(&app, 43).await;
    let (id1, id2) = (v1["id"].as_str().unwrap(), v2["id"].as_str().unwrap());
    let (_, student) = app.student();
    let store = &app.state.packages;
    let count = |kind| store.build_count(kind);
    // Counted from the app's start: publishing v2 may already have started its delta
    // from v1 (built once either way).
    let before = [0u64; 3];

    let held = burst(
        &app,
        &format!("/api/v1/tests/packages/{id1}"),
        &student,
        &[],
    )
    .await;
    let new = burst(
        &app,
        &format!("/api/v1/tests/packages/{id2}"),
        &student,
        &[],
    )
    .await;
    assert_eq!(count(PackageBuild::Download), before[0] + 2);

    let delta_path = format!("/api/v1/tests/packages/{id2}/delta?from={id1}");
    let delta = burst(&app, &delta_path, &student, &[("accept-encoding", "br")]).await;
    assert_eq!(count(PackageBuild::Delta), before[1] + 1);
    let mut decoded = Vec::new();
    brotli::BrotliDecompress(&mut &delta[..], &mut decoded).unwrap();
    let delta: Value = serde_json::from_slice(&decoded).unwrap();
    let held: Value = serde_json::from_slice(&held).unwrap();
    let new: Value = serde_json::from_slice(&new).unwrap();
    assert_eq!(
        apply_delta(held["questions"].as_array().unwrap(), &delta),
        *new["questions"].as_array().unwrap()
    );

    let held_identity = get_package(&app, id1, &student, &[]).await.body;
    let sha: [u8; 32] = Sha256::digest(&held_identity).into();
    let available = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(sha)
    );
    let dcz_headers = [
        ("accept-encoding", "br, dcz"),
        ("available-dictionary", available.as_str()),
    ];
    let dcz = burst(
        &app,
        &format!("/api/v1/tests/packages/{id2}"),
        &student,
        &dcz_headers,
    )
    .await;
    assert_eq!(&dcz[8..40], &sha);
    assert_eq!(count(PackageBuild::Dcz), before[2] + 1);
    // Served from the caches now: no more builds.
    burst(&app, &delta_path, &student, &[("accept-encoding", "br")]).await;
    assert_eq!(count(PackageBuild::Delta), before[1] + 1);
    assert_eq!(count(PackageBuild::Download), before[0] + 2);
}

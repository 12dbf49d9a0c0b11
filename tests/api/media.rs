//! Media end to end (docs/api.md §4.1, §5): uploads and their rules, reading an object
//! (conditional, ranged, visible only through a published package), question references
//! in snapshots, GraphQL and the list, `version_hash` invariance, and the bundle — read
//! back by the `zip` crate and by Python's `zipfile`, byte-identical on two instances and
//! resumable across them.
#![allow(clippy::unwrap_used)]
use std::{io::Read, time::Duration};

use examsync::media::{MediaSha256, draw};
use reqwest::{Client, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp, count_rows, question, spawn_app, spawn_app_with},
};

const BUILD: &str = "mutation($input: BuildPackageInput!) { buildPackage(input: $input) { \
    id version versionHash isPublished mediaCount mediaBytes mediaBundlePath \
    questions { questionId media { sha256 contentType bytes width height placement alt url } } } }";

/// A small PNG that differs by `n`.
fn png(n: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..(n + 2) * 3).map(|i| (i * 37 + n) as u8).collect();
    draw::png_gray(n + 2, 3, &pixels)
}

fn sha(bytes: &[u8]) -> String {
    MediaSha256::of(bytes).hex()
}

fn raw_client() -> Client {
    Client::builder()
        .no_gzip()
        .no_brotli()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn put(app: &TestApp, token: &str, hash: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let response = app
        .client
        .put(app.url(&format!("/api/v1/media/{hash}")))
        .bearer_auth(token)
        .header("content-type", "image/svg+xml")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn upload(app: &TestApp, bytes: &[u8]) -> String {
    let hash = sha(bytes);
    let (status, body) = put(app, &app.admin_token(), &hash, bytes.to_vec()).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    hash
}

struct Got {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn get(base: &str, path: &str, token: &str, headers: &[(&str, &str)]) -> Got {
    request(reqwest::Method::GET, base, path, token, headers).await
}

async fn request(
    method: reqwest::Method,
    base: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut request = raw_client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Got {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn build(app: &TestApp, input: Value) -> Value {
    let (status, body) = app
        .graphql(Some(&app.admin_token()), BUILD, json!({ "input": input }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["buildPackage"].clone()
}

async fn import(app: &TestApp, questions: Value) -> Result<Vec<Uuid>, Value> {
    let (_, body) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation($input: [QuestionInput!]!) { importQuestions(input: $input) { ids } }",
            json!({"input": questions}),
        )
        .await;
    if body.get("errors").is_some() {
        return Err(body);
    }
    Ok(body["data"]["importQuestions"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect())
}

fn with_media(mut q: Value, media: Value) -> Value {
    q["media"] = media;
    q
}

/// The entries of a bundle read by the `zip` crate, checked against their names.
fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        assert_eq!(file.compression(), zip::CompressionMethod::Stored);
        assert!(file.extra_data().is_none_or(|e| e.is_empty()));
        let name = file.name().unwrap().to_string();
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        assert_eq!(sha(&data), name, "an entry's bytes hash to its name");
        entries.push((name, data));
    }
    let names: Vec<&String> = entries.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    entries
}

backend_tests!(
    cli_imports_files_and_directories,
    demo_bank_shows_media,
    uploads_follow_the_rules,
    objects_are_served_with_validators_and_ranges,
    objects_are_visible_only_through_published_packages,
    imports_check_their_references,
    snapshots_carry_media_only_when_present,
    bundles_are_deterministic_and_resumable,
);

async fn uploads_follow_the_rules(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.media_max_bytes = 1_600_000).await;
    let admin = app.admin_token();
    let image = png(1);
    let hash = sha(&image);
    // HEAD tells an uploader what is there already.
    let path = format!("/api/v1/media/{hash}");
    let before = request(reqwest::Method::HEAD, &app.base, &path, &admin, &[]).await;
    assert_eq!(before.status, 404);
    let (status, body) = put(&app, &admin, &hash, image.clone()).await;
    assert_eq!(status, 201, "{body}");
    let after = request(reqwest::Method::HEAD, &app.base, &path, &admin, &[]).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.header("content-type"), Some("image/png"));
    assert_eq!(
        body,
        json!({"sha256": hash, "content_type": "image/png", "bytes": image.len(), "width": 3, "height": 3})
    );
    // Idempotent: the same bytes again are 200 with the same body.
    let (status, again) = put(&app, &admin, &hash, image.clone()).await;
    assert_eq!((status, &again), (StatusCode::OK, &body));
    assert_eq!(app.count("media_objects").await, 1);

    // Larger than the 1 MiB limit of other routes, within the media limit: stored.
    let mut big = png(2);
    big.resize(1_200_000, 0);
    let (status, body) = put(&app, &admin, &sha(&big), big.clone()).await;
    assert_eq!(status, 201, "{body}");
    // Past the media limit: 413.
    big.resize(1_700_000, 0);
    let (status, body) = put(&app, &admin, &sha(&big), big).await;
    assert_eq!(status, 413, "{body}");

    // A hash that is not the bytes' stores nothing.
    let other = png(3);
    let (status, body) = put(&app, &admin, &sha(b"something else"), other).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "MEDIA_HASH_MISMATCH");
    // SVG (whatever Content-Type says), text and a PNG without a header: 415.
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#;
    let truncated = png(4)[..20].to_vec();
    for bytes in [svg.to_vec(), b"hello".to_vec(), truncated] {
        let (status, body) = put(&app, &admin, &sha(&bytes), bytes).await;
        assert_eq!(status, 415, "{body}");
        assert_eq!(body["error_code"], "MEDIA_TYPE_NOT_ALLOWED");
    }
    // Sounds carry no dimensions.
    let sound = draw::silent_mp3(3);
    let (status, body) = put(&app, &admin, &sha(&sound), sound).await;
    assert_eq!(status, 201);
    assert_eq!(body["content_type"], "audio/mpeg");
    assert_eq!(body["width"], Value::Null);
    assert_eq!(app.count("media_objects").await, 3);

    // Students may not upload; malformed hashes are 400.
    let (_, student) = app.student();
    let (status, _) = put(&app, &student, &sha(&png(5)), png(5)).await;
    assert_eq!(status, 403);
    let (status, _) = put(&app, &admin, "ABC", png(5)).await;
    assert_eq!(status, 400);
    let (status, _) = put(&app, &admin, &hash.to_uppercase(), image).await;
    assert_eq!(status, 400);
}

/// Imports one published question showing `media` and builds a published PROGRAM package.
async fn published_with(app: &TestApp, media: Value) -> Value {
    import(
        app,
        json!([with_media(
            question("Which rhythm?", &["a", "b", "c"], 0, 1, None, None),
            media
        )]),
    )
    .await
    .unwrap();
    build(
        app,
        json!({"name": "P", "scope": "PROGRAM", "publish": true}),
    )
    .await
}

async fn objects_are_served_with_validators_and_ranges(backend: Backend) {
    let app = spawn_app(backend).await;
    let image = png(7);
    let hash = upload(&app, &image).await;
    published_with(&app, json!([{"sha256": hash, "placement": "STEM"}])).await;
    let (_, student) = app.student();
    let path = format!("/api/v1/media/{hash}");
    let etag = format!("\"{hash}\"");

    let full = get(&app.base, &path, &student, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, image);
    assert_eq!(full.header("content-type"), Some("image/png"));
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert_eq!(
        full.header("cache-control"),
        Some("private, max-age=31536000, immutable")
    );
    assert_eq!(full.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let length = image.len().to_string();
    assert_eq!(full.header("content-length"), Some(length.as_str()));

    let head = request(reqwest::Method::HEAD, &app.base, &path, &student, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    for inm in [etag.clone(), format!("W/{etag}"), "*".into()] {
        let revalidated = get(&app.base, &path, &student, &[("if-none-match", &inm)]).await;
        assert_eq!(revalidated.status, 304, "{inm}");
        assert!(revalidated.body.is_empty());
        assert_eq!(revalidated.header("etag"), Some(etag.as_str()));
    }
    let other = get(&app.base, &path, &student, &[("if-none-match", "\"x\"")]).await;
    assert_eq!(other.status, 200);

    let part = get(&app.base, &path, &student, &[("range", "bytes=0-9")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, image[..10]);
    let range = format!("bytes 0-9/{}", image.len());
    assert_eq!(part.header("content-range"), Some(range.as_str()));
    let tail = get(
        &app.base,
        &path,
        &student,
        &[("range", "bytes=10-"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(tail.status, 206);
    assert_eq!([part.body, tail.body].concat(), image);
    // If-Range that does not match (another tag, a weak one): the whole object.
    for stale in ["\"other\"".to_owned(), format!("W/{etag}")] {
        let whole = get(
            &app.base,
            &path,
            &student,
            &[("range", "bytes=10-"), ("if-range", &stale)],
        )
        .await;
        assert_eq!(whole.status, 200, "{stale}");
        assert_eq!(whole.body, image);
    }
    let beyond = format!("bytes={}-", image.len());
    let unsatisfiable = get(&app.base, &path, &student, &[("range", &beyond)]).await;
    assert_eq!(unsatisfiable.status, 416);
    let star = format!("bytes */{}", image.len());
    assert_eq!(unsatisfiable.header("content-range"), Some(star.as_str()));

    // Steady state: metadata, bytes and the referring packages come from memory, so
    // neither a 304 nor a 200 asks the database (a background probe may run meanwhile).
    let statements = || {
        app.state
            .db_statements
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = statements();
    for _ in 0..20 {
        let revalidated = get(&app.base, &path, &student, &[("if-none-match", &etag)]).await;
        assert_eq!(revalidated.status, 304);
        assert_eq!(get(&app.base, &path, &student, &[]).await.body, image);
    }
    assert!(
        statements() - before <= 2,
        "{} statements",
        statements() - before
    );
    // Warm, the revalidation is answered in front of the router, with the handler's headers.
    // (A student never seen before is not known to memory: the handler answers them.)
    let (_, newcomer) = app.student();
    let handler = get(&app.base, &path, &newcomer, &[("if-none-match", &etag)]).await;
    assert_eq!(handler.status, 304);
    let revalidation = axum::extract::Request::get(&path)
        .header("authorization", format!("Bearer {student}"))
        .header("if-none-match", &etag)
        .body(axum::body::Body::empty())
        .unwrap();
    let from_memory = examsync::http::from_memory::answer(&app.state, &revalidation).unwrap();
    assert_eq!(from_memory.status(), 304);
    for name in [
        "etag",
        "cache-control",
        "vary",
        "accept-ranges",
        "x-content-type-options",
    ] {
        assert_eq!(from_memory.headers()[name], handler.headers[name], "{name}");
    }
}

async fn objects_are_visible_only_through_published_packages(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token();
    let (_, student) = app.student();
    let image = png(8);
    let hash = upload(&app, &image).await;
    let path = format!("/api/v1/media/{hash}");
    // Stored but referred to by nothing: admins only.
    assert_eq!(get(&app.base, &path, &student, &[]).await.status, 404);
    assert_eq!(get(&app.base, &path, &admin, &[]).await.status, 200);
    // Referred to by a draft question only: still hidden.
    let mut draft = with_media(
        question("draft", &["a", "b"], 0, 1, None, None),
        json!([{"sha256": hash, "placement": "EXPLANATION", "alt": "x-ray"}]),
    );
    draft["status"] = json!("DRAFT");
    import(
        &app,
        json!([draft, question("other", &["a", "b"], 0, 1, None, None)]),
    )
    .await
    .unwrap();
    let package = build(
        &app,
        json!({"name": "P", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    assert_eq!(package["mediaCount"], 0);
    assert_eq!(get(&app.base, &path, &student, &[]).await.status, 404);
    // In an unpublished package: hidden; once published: readable.
    let package = published_or_not(&app, &hash, false).await;
    assert_eq!(package["isPublished"], false);
    assert_eq!(get(&app.base, &path, &student, &[]).await.status, 404);
    let head = request(reqwest::Method::HEAD, &app.base, &path, &student, &[]).await;
    assert_eq!(head.status, 404);
    let (_, body) = app
        .graphql(
            Some(&admin),
            "mutation($id: UUID!) { publishPackage(id: $id) { isPublished } }",
            json!({"id": package["id"]}),
        )
        .await;
    assert_eq!(
        body["data"]["publishPackage"]["isPublished"], true,
        "{body}"
    );
    assert_eq!(get(&app.base, &path, &student, &[]).await.body, image);
    // Unknown and malformed hashes.
    let unknown = format!("/api/v1/media/{}", sha(b"never uploaded"));
    assert_eq!(get(&app.base, &unknown, &admin, &[]).await.status, 404);
    let malformed = get(&app.base, "/api/v1/media/not-a-hash", &student, &[]).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(get(&app.base, &path, "bad-token", &[]).await.status, 401);
}

async fn published_or_not(app: &TestApp, hash: &str, publish: bool) -> Value {
    import(
        app,
        json!([with_media(
            question("published", &["a", "b"], 1, 1, None, None),
            json!([{"sha256": hash, "placement": "OPTION_B"}])
        )]),
    )
    .await
    .unwrap();
    build(
        app,
        json!({"name": "P", "scope": "PROGRAM", "publish": publish}),
    )
    .await
}

async fn imports_check_their_references(backend: Backend) {
    let app = spawn_app(backend).await;
    let hash = upload(&app, &png(9)).await;
    let good = question("ok", &["a", "b"], 0, 1, None, None);
    let cases = [
        (
            json!([{"sha256": sha(b"not uploaded"), "placement": "STEM"}]),
            "no uploaded object",
        ),
        (
            json!([{"sha256": hash, "placement": "OPTION_C"}]),
            "names an option the question lacks",
        ),
        (json!([{"sha256": "xyz", "placement": "STEM"}]), "sha256"),
        (
            Value::Array(vec![json!({"sha256": hash, "placement": "STEM"}); 17]),
            "at most 16",
        ),
    ];
    for (media, expected) in cases {
        let id = Uuid::new_v4();
        let mut bad = with_media(question("bad", &["a", "b"], 0, 1, None, None), media);
        bad["id"] = json!(id);
        let err = import(&app, json!([good.clone(), bad])).await.unwrap_err();
        assert_eq!(
            err["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{err}"
        );
        let message = err["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("item 1"), "{message}");
        assert!(message.contains(&id.to_string()), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    // All or nothing: nothing was imported.
    assert_eq!(app.count("questions").await, 0);
    assert_eq!(app.count("question_media").await, 0);
    // Sixteen references, an existing option, alt text: accepted.
    let ok = with_media(
        question("ok", &["a", "b", "c"], 0, 1, None, None),
        Value::Array(vec![
            json!({"sha256": hash, "placement": "OPTION_C", "alt": "ECG"});
            16
        ]),
    );
    import(&app, json!([ok])).await.unwrap();
    assert_eq!(app.count("question_media").await, 16);
}

async fn snapshots_carry_media_only_when_present(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    // The version_hash vector's questions, imported while media objects exist but are not
    // referred to: the package has exactly the vector's hash.
    let vector: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/vectors/version_hash.json"
        ))
        .unwrap(),
    )
    .unwrap();
    upload(&app, &png(10)).await;
    let inputs: Vec<Value> = vector["questions"]
        .as_array()
        .unwrap()
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
    import(&app, Value::Array(inputs.clone())).await.unwrap();
    let plain = build(
        &app,
        json!({"name": "V", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    assert_eq!(plain["versionHash"], vector["version_hash"]);
    assert_eq!(plain["mediaCount"], 0);
    assert_eq!(plain["mediaBytes"], 0);
    let id = plain["id"].as_str().unwrap();
    let download = get(
        &app.base,
        &format!("/api/v1/tests/packages/{id}"),
        &student,
        &[],
    )
    .await;
    let text = String::from_utf8(download.body).unwrap();
    assert!(text.contains(&format!(
        "\"questions\":{}",
        vector["canonical"].as_str().unwrap()
    )));

    // One question gains an image and a sound: a new version whose snapshot carries them.
    let image = png(11);
    let sound = draw::silent_mp3(2);
    let (image_sha, sound_sha) = (upload(&app, &image).await, upload(&app, &sound).await);
    let mut edited = inputs[0].clone();
    edited["media"] = json!([
        {"sha256": image_sha, "placement": "STEM", "alt": "ECG, lead II"},
        {"sha256": sound_sha, "placement": "EXPLANATION"},
        {"sha256": image_sha, "placement": "OPTION_A"},
    ]);
    import(&app, json!([edited])).await.unwrap();
    let with = build(
        &app,
        json!({"name": "V", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    assert_eq!(with["version"], 2);
    assert_ne!(with["versionHash"], vector["version_hash"]);
    assert_eq!(with["mediaCount"], 2);
    assert_eq!(with["mediaBytes"], image.len() + sound.len());
    let with_id = with["id"].as_str().unwrap();
    assert_eq!(
        with["mediaBundlePath"],
        format!("/api/v1/tests/packages/{with_id}/media")
    );
    let download = get(
        &app.base,
        &format!("/api/v1/tests/packages/{with_id}"),
        &student,
        &[],
    )
    .await;
    let body: Value = serde_json::from_slice(&download.body).unwrap();
    let edited_id = inputs[0]["id"].as_str().unwrap();
    for snapshot in body["questions"].as_array().unwrap() {
        let keys = snapshot.as_object().unwrap().len();
        if snapshot["question_id"] == edited_id {
            assert_eq!(keys, 15);
            assert_eq!(
                snapshot["media"][0],
                json!({"sha256": image_sha, "content_type": "image/png", "bytes": image.len(),
                       "width": 13, "height": 3, "placement": "STEM", "alt": "ECG, lead II"})
            );
            assert_eq!(snapshot["media"][1]["content_type"], "audio/mpeg");
            assert_eq!(snapshot["media"][1]["width"], Value::Null);
            assert_eq!(snapshot["media"][1]["alt"], Value::Null);
            assert_eq!(snapshot["media"][2]["placement"], "OPTION_A");
        } else {
            assert_eq!(keys, 14, "{snapshot}");
        }
    }
    // GraphQL: `media` on every snapshot, `[]` when none.
    let graphql_questions = with["questions"].as_array().unwrap();
    for q in graphql_questions {
        if q["questionId"] == edited_id {
            assert_eq!(q["media"][0]["url"], format!("/api/v1/media/{image_sha}"));
            assert_eq!(q["media"][0]["contentType"], "image/png");
            assert_eq!(q["media"][1]["placement"], "EXPLANATION");
        } else {
            assert_eq!(q["media"], json!([]));
        }
    }
    // The list shows the totals.
    let list = get(&app.base, "/api/v1/tests/packages", &student, &[]).await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    for item in list["items"].as_array().unwrap() {
        let expected = if item["package_id"] == with_id {
            (2, image.len() + sound.len())
        } else {
            (0, 0)
        };
        assert_eq!(
            (
                item["media_count"].as_u64().unwrap(),
                item["media_bytes"].as_u64().unwrap()
            ),
            (expected.0, expected.1 as u64)
        );
    }
    // The delta carries the changed references.
    let delta = get(
        &app.base,
        &format!("/api/v1/tests/packages/{with_id}/delta?from={id}"),
        &student,
        &[],
    )
    .await;
    let delta: Value = serde_json::from_slice(&delta.body).unwrap();
    assert_eq!(delta["upserted"].as_array().unwrap().len(), 1);
    assert_eq!(delta["upserted"][0]["media"][1]["sha256"], sound_sha);
    // Only the image changing (another object) makes a new version again.
    let other = png(12);
    let other_sha = upload(&app, &other).await;
    let mut again = inputs[0].clone();
    again["media"] = json!([{"sha256": other_sha, "placement": "STEM"}]);
    import(&app, json!([again])).await.unwrap();
    let third = build(
        &app,
        json!({"name": "V", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    assert_eq!(third["version"], 3);
    assert_eq!(third["mediaCount"], 1);
}

async fn bundles_are_deterministic_and_resumable(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    let images: Vec<Vec<u8>> = (20..24).map(png).collect();
    let mut hashes = Vec::new();
    for image in &images {
        hashes.push(upload(&app, image).await);
    }
    let refs = |shas: &[String]| -> Value {
        Value::Array(
            shas.iter()
                .map(|s| json!({"sha256": s, "placement": "STEM"}))
                .collect(),
        )
    };
    let ids = import(
        &app,
        json!([
            with_media(
                question("q1", &["a", "b"], 0, 1, None, None),
                refs(&hashes[..2])
            ),
            with_media(
                question("q2", &["a", "b"], 0, 1, None, None),
                refs(&hashes[1..3])
            ),
        ]),
    )
    .await
    .unwrap();
    let first = build(
        &app,
        json!({"name": "B", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tests/packages/{first_id}/media");

    let full = get(&app.base, &path, &student, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-type"), Some("application/zip"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert!(full.header("last-modified").unwrap().ends_with(" GMT"));
    let etag = full.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"'), "a strong ETag: {etag}");
    let entries = zip_entries(&full.body);
    let mut expected: Vec<String> = hashes[..3].to_vec();
    expected.sort();
    assert_eq!(
        entries.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        expected
    );

    // Python's zipfile agrees.
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("bundle.zip");
    std::fs::write(&zip_path, &full.body).unwrap();
    let python = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/media_bundle.py"
        ))
        .arg(&zip_path)
        .output()
        .expect("python3 runs");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&python.stdout).lines().count(), 3);

    // Byte-identical from a second instance (and so after a restart).
    let (other_base, handle) = crate::graphql::second_instance(&app).await;
    let again = get(&other_base, &path, &student, &[]).await;
    assert_eq!(again.body, full.body);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("last-modified"), full.header("last-modified"));

    // A download cut short resumes against the other instance, with either validator.
    let total = full.body.len();
    let last_modified = full.header("last-modified").unwrap().to_owned();
    for cut in [1, 93, 200, total / 2, total - 1] {
        for validator in [etag.as_str(), last_modified.as_str()] {
            let head = get(
                &app.base,
                &path,
                &student,
                &[("range", &format!("bytes=0-{}", cut - 1))],
            )
            .await;
            assert_eq!(head.status, 206);
            let rest = get(
                &other_base,
                &path,
                &student,
                &[("range", &format!("bytes={cut}-")), ("if-range", validator)],
            )
            .await;
            assert_eq!(rest.status, 206, "cut {cut}");
            let range = format!("bytes {cut}-{}/{total}", total - 1);
            assert_eq!(rest.header("content-range"), Some(range.as_str()));
            assert_eq!([head.body, rest.body].concat(), full.body, "cut {cut}");
        }
    }
    // A stale validator gets the whole bundle; HEAD, 304 and 416 as for a download.
    let stale = get(
        &app.base,
        &path,
        &student,
        &[("range", "bytes=5-"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!((stale.status, stale.body.len()), (StatusCode::OK, total));
    let head = request(reqwest::Method::HEAD, &app.base, &path, &student, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(total.to_string().as_str())
    );
    let not_modified = get(&app.base, &path, &student, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let beyond = get(
        &app.base,
        &path,
        &student,
        &[("range", &format!("bytes={total}-"))],
    )
    .await;
    assert_eq!(beyond.status, 416);

    // A newer version: `?from=` bundles only what the held version lacks.
    import(
        &app,
        json!([with_media(
            json!({"id": ids[1], "stem": "q2", "options": ["a", "b"], "correctIndex": 0, "yearId": 1}),
            refs(&hashes[2..4])
        )]),
    )
    .await
    .unwrap();
    let second = build(
        &app,
        json!({"name": "B", "scope": "PROGRAM", "publish": true}),
    )
    .await;
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(second["mediaCount"], 4);
    let delta_path = format!("/api/v1/tests/packages/{second_id}/media?from={first_id}");
    let delta = get(&app.base, &delta_path, &student, &[]).await;
    assert_eq!(delta.status, 200);
    let names: Vec<String> = zip_entries(&delta.body)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![hashes[3].clone()]);
    assert_eq!(
        get(&other_base, &delta_path, &student, &[]).await.body,
        delta.body
    );
    // Nothing new (the same version): a valid empty archive.
    let same = format!("/api/v1/tests/packages/{first_id}/media?from={first_id}");
    let empty = get(&app.base, &same, &student, &[]).await;
    assert_eq!(empty.status, 200);
    assert!(zip_entries(&empty.body).is_empty());
    assert_eq!(empty.body.len(), 22);

    // Another scope: 409; unknown, unpublished, malformed: 404, 404, 400.
    import(&app, json!([question("y2", &["a", "b"], 0, 2, None, None)]))
        .await
        .unwrap();
    let year = build(
        &app,
        json!({"name": "Y", "scope": "YEAR", "yearId": 2, "publish": true}),
    )
    .await;
    let mismatch = get(
        &app.base,
        &format!("{path}?from={}", year["id"].as_str().unwrap()),
        &student,
        &[],
    )
    .await;
    assert_eq!(mismatch.status, 409);
    let mismatch: Value = serde_json::from_slice(&mismatch.body).unwrap();
    assert_eq!(mismatch["error_code"], "DELTA_SCOPE_MISMATCH");
    let unknown = format!("/api/v1/tests/packages/{}/media", Uuid::new_v4());
    assert_eq!(get(&app.base, &unknown, &student, &[]).await.status, 404);
    assert_eq!(
        get(
            &app.base,
            "/api/v1/tests/packages/nope/media",
            &student,
            &[]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        get(&app.base, &format!("{path}?from=nope"), &student, &[])
            .await
            .status,
        400
    );
    // The objects a package refers to stay stored: the database refuses their deletion.
    let deleted = app
        .db
        .execute_unprepared(&format!(
            "DELETE FROM media_objects WHERE sha256 = '{}'",
            hashes[0]
        ))
        .await;
    assert!(deleted.is_err());
    assert_eq!(count_rows(&app.db, "media_objects", "").await, 4);
    handle.abort();
}

async fn cli_imports_files_and_directories(backend: Backend) {
    let app = spawn_app(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("ecg");
    std::fs::create_dir(&nested).unwrap();
    let (a, b, sound) = (png(30), png(31), draw::silent_mp3(4));
    std::fs::write(dir.path().join("a.png"), &a).unwrap();
    std::fs::write(nested.join("b.png"), &b).unwrap();
    std::fs::write(
        nested.join("drawing.svg"),
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )
    .unwrap();
    let single = dir.path().join("heart.mp3");
    std::fs::write(&single, &sound).unwrap();
    let run = || {
        std::process::Command::new(crate::helpers::binary())
            .args(["media", "import"])
            .arg(dir.path())
            .arg(&single)
            .env_remove("REDIS_URL")
            .env("DATABASE_URL", &app.config.database_url)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    // The SVG is named on stderr, the others stored; the exit status says one was refused.
    assert!(!first.status.success());
    assert!(stderr.contains("drawing.svg"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(
        lines[0],
        format!(
            "{} image/png {} {}",
            sha(&a),
            a.len(),
            dir.path().join("a.png").display()
        )
    );
    assert!(stdout.contains(&format!("{} image/png {} ", sha(&b), b.len())));
    assert!(stdout.contains(&format!("{} audio/mpeg {} ", sha(&sound), sound.len())));
    assert_eq!(app.count("media_objects").await, 3);
    // Again: the same lines, nothing new stored.
    let second = run();
    assert_eq!(String::from_utf8_lossy(&second.stdout), stdout);
    assert_eq!(app.count("media_objects").await, 3);
    // Only allowed files: success.
    let ok = std::process::Command::new(crate::helpers::binary())
        .args(["media", "import"])
        .arg(&single)
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", &app.config.database_url)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

async fn demo_bank_shows_media(backend: Backend) {
    let app = spawn_app(backend).await;
    assert!(examsync::demo::seed_if_empty(&app.db).await.unwrap());
    let (_, student) = app.student();
    let list = get(
        &app.base,
        "/api/v1/tests/packages?scope=THEME&theme_id=111",
        &student,
        &[],
    )
    .await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    let item = &list["items"][0];
    assert_eq!(item["media_count"], 4, "{item}");
    let id = item["package_id"].as_str().unwrap();
    let bundle = get(
        &app.base,
        &format!("/api/v1/tests/packages/{id}/media"),
        &student,
        &[],
    )
    .await;
    assert_eq!(bundle.status, 200);
    let entries = zip_entries(&bundle.body);
    assert_eq!(entries.len(), 4);
    let total: usize = entries.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(item["media_bytes"].as_u64().unwrap(), total as u64);
    for (name, data) in &entries {
        let object = get(&app.base, &format!("/api/v1/media/{name}"), &student, &[]).await;
        assert_eq!(&object.body, data);
    }
}

//! Deltas (docs/api.md section 5): applying one turns the held version into the new one;
//! its errors; GraphQL `packageDelta`.
use super::*;

backend_tests!(
    deltas_turn_the_held_version_into_the_new_one,
    delta_errors,
    graphql_package_delta,
);

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

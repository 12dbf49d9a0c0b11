//! Building packages: each scope, versions, `version_hash` recomputed here independently
//! of the server's code, database-enforced immutability, concurrent builds, the scoring
//! keys sync reads, and `examsync package build`.
use super::*;

backend_tests!(
    builds_each_scope,
    versions_follow_the_question_set,
    version_hash_matches_the_vector_and_recomputes,
    published_packages_are_immutable_in_the_database,
    concurrent_builds_make_one_version,
    scoring_keys_for_sync,
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

async fn scoring_keys_for_sync(backend: Backend) {
    let app = spawn_app(backend).await;
    let (package, ids) = published_year(&app, 5).await;
    app.import_questions(json!([question("d", &["a", "b", "c"], 2, 9, None, None)]))
        .await;
    let draft = build_ok(&app, json!({"name": "d", "scope": "YEAR", "yearId": 9})).await;
    let published: entity::PackageId = package["id"].as_str().unwrap().parse().unwrap();
    let unpublished: entity::PackageId = draft["id"].as_str().unwrap().parse().unwrap();
    let store = PackageStore::default();
    for _ in 0..2 {
        // The second round comes from the cache.
        let keys = store
            .scoring_for(
                &app.db,
                &[
                    published,
                    unpublished,
                    entity::PackageId::new_v4(),
                    published,
                ],
            )
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        let scoring = &keys[&published];
        assert_eq!(scoring.questions.len(), 3);
        let nerve = scoring.questions[&entity::QuestionId::from(ids[0])];
        assert_eq!((nerve.option_count, nerve.correct_index), (2, 1));
        let drug = scoring.questions[&entity::QuestionId::from(ids[1])];
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

//! Visibility and listing: unpublished packages, ids and authentication, list filters and
//! the GraphQL package types.
use super::*;

backend_tests!(
    unpublished_packages_are_invisible_to_students,
    ids_and_authentication,
    list_filters,
    graphql_package_types,
);

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

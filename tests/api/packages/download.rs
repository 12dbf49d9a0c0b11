//! Downloads (docs/api.md section 4): conditional requests, HEAD, encodings, an RFC 9111
//! caching client, and ranges resumed against another instance.
use super::*;

backend_tests!(
    if_none_match_forms,
    head_is_get_without_body,
    encodings_keep_the_etag,
    caching_client_revalidates_with_304,
    ranges_resume_against_another_instance,
);

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

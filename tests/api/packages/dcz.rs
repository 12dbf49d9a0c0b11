//! Dictionary transport (docs/api.md section 5.1): `dcz` against a published download as
//! the dictionary, decoded independently (Python) and by Chromium.
use super::*;

backend_tests!(dcz_with_a_published_download_as_dictionary);

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

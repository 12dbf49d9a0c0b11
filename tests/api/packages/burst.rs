//! Single flight: a burst of cold requests builds each body once.
use super::*;

backend_tests!(a_burst_of_cold_requests_builds_once);

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

//! API fuzzing with Schemathesis (PyPI) against the served OpenAPI document of the REST
//! routes and against `/graphql`: no 5xx, responses match the documented shapes, every
//! GraphQL error carries a documented code, no SQL text (tests/schemathesis/hooks.py).
use serde_json::{Value, json};

use crate::helpers::{Backend, question, spawn_app_with};

fn schemathesis_available() -> bool {
    let ok = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if crate::helpers::services_required() {
            panic!("schemathesis is required (pip install -r tests/schemathesis/requirements.txt)");
        }
        examsync_test_support::report_skip("schemathesis missing");
    }
    ok
}

async fn run_schemathesis(target: &str, token: &str, checks: &str) {
    let output = tokio::process::Command::new("schemathesis")
        .args([
            "run",
            target,
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .args([
            "--max-examples",
            "30",
            "--seed",
            "20261125",
            "--checks",
            checks,
        ])
        .env("SCHEMATHESIS_HOOKS", "tests.schemathesis.hooks")
        .env("PYTHONPATH", env!("CARGO_MANIFEST_DIR"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems with {target}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_rest_and_graphql() {
    if !schemathesis_available() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |c| c.rate_limit_per_minute = 0).await;
    app.import_questions(json!([
        question("Fuzz one", &["a", "b", "c"], 1, 1, Some(11), Some(111)),
        question("Fuzz two", &["a", "b"], 0, 1, Some(11), Some(112)),
    ]))
    .await;
    let (_, built) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation { buildPackage(input: {name: \"Y1\", scope: YEAR, yearId: 1, publish: true}) { id } }",
            Value::Null,
        )
        .await;
    assert!(built.get("errors").is_none(), "{built}");
    let (_, token) = app.student();
    run_schemathesis(
        &app.url("/api/v1/openapi.json"),
        &token,
        // Every built-in check (positive and negative data acceptance included) plus ours,
        // over every phase (examples, coverage, fuzzing, stateful).
        "all",
    )
    .await;
    run_schemathesis(
        &app.url("/graphql"),
        &token,
        "examsync_contract,response_schema_conformance,status_code_conformance,content_type_conformance",
    )
    .await;
}

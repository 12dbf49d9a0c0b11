//! `examsync access grant|revoke|list|import` (docs/api.md section 3.1) against SQLite and
//! PostgreSQL, and what a served instance makes of the grants.
use std::process::{Command, Output};

use uuid::Uuid;

use crate::access::{bank, download};
use crate::backend_tests;
use crate::helpers::{Backend, binary, count_rows, start, test_config};

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("access")
        .args(args)
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", url)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn cli_grants(backend: Backend) {
    let (mut config, database, redis) = test_config(backend).await;
    config.access = examsync::access::AccessMode::Grants;
    let url = database.url.clone();
    let app = start(backend, config, database, redis).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();
    let user = student.to_string();

    // grant prints the id; list prints one line per grant starting with it.
    let id = ok(&run(
        &url,
        &[
            "grant",
            "--user",
            &user,
            "--scope",
            "YEAR",
            "--year-id",
            "1",
        ],
    ));
    let id = Uuid::parse_str(id.trim()).unwrap();
    let listed = ok(&run(&url, &["list", "--user", &user]));
    assert!(listed.starts_with(&id.to_string()), "{listed}");
    assert_eq!(download(&app, &token, bank.year1_v2, &[]).await.0, 200);
    // Ids that do not fit the scope are refused.
    let out = run(
        &url,
        &[
            "grant",
            "--user",
            &user,
            "--scope",
            "PROGRAM",
            "--year-id",
            "1",
        ],
    );
    assert!(!out.status.success());
    let out = run(&url, &["grant", "--user", &user, "--scope", "THEME"]);
    assert!(!out.status.success());
    // revoke: the grant stays listed, revoked.
    ok(&run(&url, &["revoke", &id.to_string()]));
    let listed = ok(&run(&url, &["list", "--user", &user]));
    assert!(listed.contains("revoked_at=2"), "{listed}");

    // Import: named columns, all or nothing naming the line, idempotent.
    let dir = tempfile::tempdir().unwrap();
    let other = Uuid::new_v4();
    let good = dir.path().join("grants.csv");
    std::fs::write(
        &good,
        format!(
            "user_id,scope,year_id,block_id,theme_id,valid_from,valid_until\n\
             {student},BLOCK,,21,,,\n\
             {other},PROGRAM,,,,2026-01-01T00:00:00Z,2099-01-01T00:00:00Z\n"
        ),
    )
    .unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("user_id,scope,year_id\n{other},YEAR,3\n{other},YEAR,three\n"),
    )
    .unwrap();
    let before = count_rows(&app.db, "access_grants", "").await;
    let out = run(&url, &["import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count_rows(&app.db, "access_grants", "").await, before);
    ok(&run(&url, &["import", good.to_str().unwrap()]));
    let after = count_rows(&app.db, "access_grants", "").await;
    assert_eq!(after, before + 2);
    ok(&run(&url, &["import", good.to_str().unwrap()]));
    assert_eq!(count_rows(&app.db, "access_grants", "").await, after);
    assert_eq!(download(&app, &token, bank.year2, &[]).await.0, 200);

    // The previous server's user_allowed_blocks export: BLOCK grants.
    let legacy = dir.path().join("user_allowed_blocks.csv");
    std::fs::write(
        &legacy,
        format!("user_id,block_id\n{other},11\n{other},12\n"),
    )
    .unwrap();
    ok(&run(&url, &["import", legacy.to_str().unwrap()]));
    let listed = ok(&run(&url, &["list", "--user", &other.to_string()]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(
        listed.contains("scope=BLOCK") && listed.contains("block_id=12"),
        "{listed}"
    );
    let other_token = app.token(other, examsync::auth::Role::Student);
    // PROGRAM from the first file covers everything for `other`.
    assert_eq!(download(&app, &other_token, bank.program, &[]).await.0, 200);
}

backend_tests!(cli_grants);

/// RFC 7518 §3.2: a key shorter than 32 bytes stops `serve` and `token`, naming the setting.
#[test]
fn keys_shorter_than_32_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
    let short = "a".repeat(31);
    let user = Uuid::new_v4().to_string();
    for (args, key) in [
        (vec!["serve", "--bind", "127.0.0.1:0"], "JWT_SECRET"),
        (
            vec!["token", "--user", &user, "--role", "STUDENT"],
            "JWT_SECRET",
        ),
        (
            vec!["token", "--user", &user, "--role", "STUDENT"],
            "JWT_SECRET_PREVIOUS",
        ),
    ] {
        let mut command = Command::new(binary());
        command
            .args(&args)
            .env_remove("REDIS_URL")
            .env("DATABASE_URL", &url)
            .env("JWT_SECRET", "b".repeat(32))
            .env(key, &short);
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{args:?} {key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let flag = key.to_ascii_lowercase().replace('_', "-");
        assert!(
            stderr.contains(&flag) && stderr.contains("32 bytes"),
            "{stderr}"
        );
    }
    let out = Command::new(binary())
        .args([
            "token", "--user", &user, "--role", "STUDENT", "--grant", "YEAR:1",
        ])
        .env("JWT_SECRET", "b".repeat(32))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verified = examsync::auth::TokenVerifier::new(&"b".repeat(32), None)
        .verify(token.trim())
        .unwrap();
    assert_eq!(
        verified.access.as_deref(),
        Some(&[examsync::access::GrantTarget::Year(1)][..])
    );
}

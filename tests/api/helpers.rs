//! The test harness: `spawn_app(backend)` starts the real server on port 0 with a fresh
//! database (SQLite file, or a new PostgreSQL database when `TEST_DATABASE_URL` is set)
//! and its own Redis key prefix (when `TEST_REDIS_URL` is set), and cleans both up on drop.
//!
//! With `EXAMSYNC_REQUIRE_SERVICES=1` (set by `.ci/run`) a missing service fails the test
//! instead of skipping it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use examsync::{
    Application, Config,
    auth::{Role, sign_token},
    config::Secret,
};
use reqwest::{Client, RequestBuilder};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use uuid::Uuid;

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const PREVIOUS_SECRET: &str = "integration-test-previous-secret-01";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// PostgreSQL, plus Redis when `TEST_REDIS_URL` is set.
    Postgres,
}

/// Runs `$body` (an async fn taking a `Backend`) once per backend as separate tests.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            pub mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::skip_postgres() {
                        return;
                    }
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            }
        )*
    };
}

pub fn services_required() -> bool {
    std::env::var("EXAMSYNC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// True (and says so) when PostgreSQL tests cannot run here; panics when CI requires them.
pub fn skip_postgres() -> bool {
    if std::env::var("TEST_DATABASE_URL").is_ok() {
        return false;
    }
    if services_required() {
        panic!("TEST_DATABASE_URL is not set but EXAMSYNC_REQUIRE_SERVICES=1");
    }
    examsync_test_support::report_skip("TEST_DATABASE_URL not set");
    true
}

pub fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) if services_required() => {
            panic!("TEST_REDIS_URL is not set but EXAMSYNC_REQUIRE_SERVICES=1")
        }
        Err(_) => None,
    }
}

/// A fresh database for one test, removed on drop.
pub struct TestDatabase {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Another instance's database: its owner cleans up.
    Shared,
    /// The directory of the SQLite file, removed when the test ends.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl TestDatabase {
    /// The same database for a second instance (the first one's owner removes it).
    pub fn shared(other: &TestDatabase) -> TestDatabase {
        TestDatabase {
            url: other.url.clone(),
            cleanup: Cleanup::Shared,
        }
    }

    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/examsync.db?mode=rwc", dir.path().display());
                TestDatabase {
                    url,
                    cleanup: Cleanup::Sqlite { _dir: dir },
                }
            }
            Backend::Postgres => {
                let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
                let name = format!("examsync_test_{}", Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to PostgreSQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = replace_database(&admin_url, &name);
                TestDatabase {
                    url,
                    cleanup: Cleanup::Postgres { admin_url, name },
                }
            }
        }
    }
}

/// `postgres://u@h:p/db?x` with another database name.
pub use examsync_test_support::replace_database;

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside a runtime; do the async cleanup on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(&admin_url).await {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A Redis key prefix for one test; its keys are deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> Option<TestRedis> {
        redis_url().map(|url| TestRedis {
            url,
            prefix: format!("examsync-test:{}:", Uuid::new_v4().simple()),
        })
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // On a thread of its own: this may run inside the tests' runtime.
        let _ = std::thread::spawn(move || {
            let _ = examsync_test_support::redis_keys::delete_by_prefix(&url, &prefix);
        })
        .join();
    }
}

/// A running server plus what a test needs to talk to it and inspect its database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: Client,
    pub db: DatabaseConnection,
    pub backend: Backend,
    pub config: Config,
    /// The server's own state (e.g. its SQL statement counter).
    pub state: examsync::AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    // Dropped last: the database and keys outlive the server.
    _redis: Option<TestRedis>,
    pub database: TestDatabase,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A config for `backend` with a fresh database (and Redis prefix for PostgreSQL runs).
pub async fn test_config(backend: Backend) -> (Config, TestDatabase, Option<TestRedis>) {
    let database = TestDatabase::new(backend).await;
    let redis = match backend {
        Backend::Postgres => TestRedis::new(),
        Backend::Sqlite => None,
    };
    let mut config = Config::with_database(database.url.clone());
    config.jwt_secret = Some(Secret(SECRET.into()));
    config.jwt_secret_previous = Some(Secret(PREVIOUS_SECRET.into()));
    config.db_pool_size = 5;
    // Most suites test something other than access; tests/api/access.rs and
    // tests/api/withdrawal.rs turn grants on (the production default) themselves.
    config.access = examsync::access::AccessMode::Open;
    if let Some(redis) = &redis {
        config.redis_url = Some(redis.url.clone());
        config.redis_prefix = redis.prefix.clone();
    }
    (config, database, redis)
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let (mut config, database, redis) = test_config(backend).await;
    configure(&mut config);
    start(backend, config, database, redis).await
}

/// Starts a server on an existing config (e.g. a second instance on the same database).
pub async fn start(
    backend: Backend,
    config: Config,
    database: TestDatabase,
    redis: Option<TestRedis>,
) -> TestApp {
    let application = Application::build(config.clone())
        .await
        .expect("application starts");
    let addr = application.local_addr().expect("bound address");
    let db = application.state().db.clone();
    let state = application.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = application
            .run_until_stopped(async {
                let _ = rx.await;
            })
            .await;
    });
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        db,
        backend,
        config,
        state,
        shutdown: Some(tx),
        server: Some(server),
        _redis: redis,
        database,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, user: Uuid, role: Role) -> String {
        sign_token(SECRET, user, role, 3600).expect("token")
    }

    /// A new student: (user id, token).
    pub fn student(&self) -> (Uuid, String) {
        let id = Uuid::new_v4();
        (id, self.token(id, Role::Student))
    }

    /// A token with extra claims (e.g. `access`, `aud`) on top of the usual ones.
    pub fn token_with(&self, user: Uuid, role: Role, extra: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "sub": user, "role": role.as_str(), "exp": now + 3600, "iat": now, "type": "access",
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }

    /// Grants `user` a scope through admin GraphQL; returns the grant id.
    pub async fn grant(&self, user: Uuid, scope: &str, id: Option<i32>) -> Uuid {
        let field = match scope {
            "YEAR" => "yearId",
            "BLOCK" => "blockId",
            _ => "themeId",
        };
        let mut input = json!({"userId": user, "scope": scope});
        if let Some(id) = id {
            input[field] = json!(id);
        }
        let (status, body) = self
            .graphql(
                Some(&self.admin_token()),
                "mutation($input: GrantAccessInput!) { grantAccess(input: $input) { id } }",
                json!({"input": input}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        Uuid::parse_str(body["data"]["grantAccess"]["id"].as_str().expect("id")).expect("uuid")
    }

    /// Builds and publishes a package through admin GraphQL; returns its id.
    pub async fn publish(&self, scope: &str, scope_ids: Value) -> Uuid {
        let mut input =
            json!({"name": format!("{scope} package"), "scope": scope, "publish": true});
        if let (Some(input), Some(ids)) = (input.as_object_mut(), scope_ids.as_object()) {
            input.extend(ids.clone());
        }
        let (status, body) = self
            .graphql(
                Some(&self.admin_token()),
                "mutation($input: BuildPackageInput!) { buildPackage(input: $input) { id } }",
                json!({"input": input}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        Uuid::parse_str(body["data"]["buildPackage"]["id"].as_str().expect("id")).expect("uuid")
    }

    pub fn admin_token(&self) -> String {
        self.token(Uuid::new_v4(), Role::Admin)
    }

    pub fn get(&self, path: &str, token: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str, token: &str) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(token)
    }

    /// POSTs a GraphQL operation; returns (HTTP status, body).
    pub async fn graphql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("graphql request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("graphql json"))
    }

    /// Imports questions through GraphQL as an admin; returns their ids.
    pub async fn import_questions(&self, questions: Value) -> Vec<Uuid> {
        let (status, body) = self
            .graphql(
                Some(&self.admin_token()),
                "mutation($input: [QuestionInput!]!) { importQuestions(input: $input) { ids } }",
                json!({"input": questions}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        body["data"]["importQuestions"]["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| Uuid::parse_str(v.as_str().expect("id")).expect("uuid"))
            .collect()
    }

    /// Counts rows of a table straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        count_rows(&self.db, table, "").await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub async fn count_rows(db: &DatabaseConnection, table: &str, condition: &str) -> i64 {
    let sql = if condition.is_empty() {
        format!("SELECT COUNT(*) AS n FROM {table}")
    } else {
        format!("SELECT COUNT(*) AS n FROM {table} WHERE {condition}")
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .expect("count query")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("count")
}

/// The `n` of a query returning one row.
pub async fn count_query(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .expect("count query")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("count")
}

/// Every rule of `examsync_test_support::ORPHAN_CHECKS` holds: no attempt or answer names
/// a user, session, question or attempt that does not exist (on PostgreSQL no foreign key
/// holds these, the sync path does).
pub async fn assert_no_orphans(db: &DatabaseConnection) {
    for (rule, sql) in examsync_test_support::ORPHAN_CHECKS {
        let n = count_query(db, sql).await;
        assert_eq!(n, 0, "{n} rows break a reference: {rule}");
    }
}

/// A question input in the GraphQL/CLI shape.
pub fn question(
    stem: &str,
    options: &[&str],
    correct: i32,
    year: i32,
    block: Option<i32>,
    theme: Option<i32>,
) -> Value {
    json!({
        "stem": stem,
        "options": options,
        "correctIndex": correct,
        "yearId": year,
        "blockId": block,
        "themeId": theme,
    })
}

/// The path of the examsync binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_examsync"))
}

/// Waits until `url` answers 200 (a server started as a process).
pub async fn wait_ready(client: &Client, url: &str) {
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not become ready");
}

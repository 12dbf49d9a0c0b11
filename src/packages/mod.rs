//! Test packages: build from the bank, version, publish, list and serve (docs/api.md sections 4–6).
//! Both REST and GraphQL (and the CLI and the demo seed) call these functions; each rule
//! lives here once.
//!
//! # Scopes
//!
//! A package snapshots the PUBLISHED questions of a scope. `scope_data` (and the
//! `year_id`/`block_id`/`theme_id` columns) hold the scope's own id plus the ancestor ids
//! the builder gave, and every given id filters the questions:
//!
//! | scope   | required   | optional ancestors      | `scope_data` example                       |
//! |---------|------------|-------------------------|--------------------------------------------|
//! | PROGRAM | —          | —                       | `{}`                                       |
//! | YEAR    | `year_id`  | —                       | `{"year_id":1}`                            |
//! | BLOCK   | `block_id` | `year_id`               | `{"block_id":2}` or `{"block_id":2,"year_id":1}` |
//! | THEME   | `theme_id` | `year_id`, `block_id`   | `{"theme_id":7}`, …                        |
//!
//! An id that is not part of the scope (a `theme_id` for a BLOCK) is refused. Versions are
//! counted per (scope, canonical `scope_data`): a BLOCK built with and without its `year_id`
//! are two lines of versions, so builders should stick to one form.
//!
//! # Versions
//!
//! `version_hash` is the SHA-256 of the RFC 8785 canonical JSON of the snapshot array
//! ordered by `question_id`; `questions_json` stores exactly those bytes. A build whose hash
//! equals the newest version's (published or not) returns that version (keeping its name
//! and description, publishing it when asked); otherwise it inserts version N+1. Two
//! concurrent builds race on the unique index (scope, scope_key, version): the loser re-reads
//! and either returns the winner (same hash) or tries the next version.
//!
//! A scope without published questions is refused (`EMPTY_SCOPE`, a 400-class error): an
//! empty package would be useless to a phone and would hide a typo in the ids.
pub mod dcz;
pub mod delta;
pub mod encoding;
pub mod single_flight;
pub mod store;

pub use store::{PackageScoring, PackageStore, ScoringKey};

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use entity::{PackageId, QuestionId, UserId, VersionHash};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DerivePartialModel,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
    sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    error::{AppError, AppResult, ErrorCode},
    hashing::canonical_json,
    media::{MediaContentType, MediaMeta, MediaPlacement, MediaSha256},
};
use entity::{question, test_package};

pub use entity::enums::PackageScope;

/// The scope names, as `400` errors list them.
pub const SCOPE_NAMES: [&str; 4] = [
    PackageScope::Program.as_str(),
    PackageScope::Year.as_str(),
    PackageScope::Block.as_str(),
    PackageScope::Theme.as_str(),
];

/// Parses a scope name (any case), or the `400` that names the allowed ones.
pub fn parse_scope(s: &str) -> AppResult<PackageScope> {
    PackageScope::parse(s).ok_or_else(|| {
        AppError::bad_request_with(
            ErrorCode::ValidationError,
            format!(
                "unknown scope `{}`; allowed: {}",
                s.chars().take(40).collect::<String>(),
                SCOPE_NAMES.join(", ")
            ),
            json!({"field": "scope", "allowed": SCOPE_NAMES}),
        )
    })
}

/// What an admin asks to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub publish: bool,
    pub created_by: Option<UserId>,
}

/// A question as frozen in a package: exactly the 14 fields of the REST download, plus
/// `media` when the question has some. Serialized through RFC 8785, so field order here
/// does not matter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    #[schema(value_type = uuid::Uuid)]
    pub question_id: QuestionId,
    pub stem: String,
    pub option_a: Option<String>,
    pub option_b: Option<String>,
    pub option_c: Option<String>,
    pub option_d: Option<String>,
    pub option_e: Option<String>,
    pub correct_index: i32,
    pub explanation_md: Option<String>,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub cognitive_level: Option<String>,
    pub difficulty: Option<String>,
    /// Absent (not `[]`) when the question has none, so that a package without media keeps
    /// exactly the bytes, and so the `version_hash`, it had before media existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub media: Vec<SnapshotMedia>,
}

/// One media reference of a snapshot: the object's identity and facts, and where the
/// question shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotMedia {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub sha256: MediaSha256,
    pub content_type: MediaContentType,
    pub bytes: i64,
    /// Images only.
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub placement: MediaPlacement,
    pub alt: Option<String>,
}

impl SnapshotMedia {
    pub fn new(meta: &MediaMeta, placement: MediaPlacement, alt: Option<String>) -> Self {
        SnapshotMedia {
            sha256: meta.sha256,
            content_type: meta.content_type,
            bytes: meta.bytes as i64,
            width: meta.width,
            height: meta.height,
            placement,
            alt,
        }
    }
}

impl Snapshot {
    /// The snapshot of `q` with its media references (in the question's order).
    pub fn with_media(q: &question::Model, media: Vec<SnapshotMedia>) -> Snapshot {
        Snapshot {
            media,
            ..Snapshot::of(q)
        }
    }

    pub fn of(q: &question::Model) -> Snapshot {
        let mut options = crate::questions::options_of(q).into_iter();
        Snapshot {
            question_id: q.id,
            stem: q.stem.clone(),
            option_a: options.next(),
            option_b: options.next(),
            option_c: options.next(),
            option_d: options.next(),
            option_e: options.next(),
            correct_index: q.correct_index,
            explanation_md: q.explanation_md.clone(),
            year_id: q.year_id,
            block_id: q.block_id,
            theme_id: q.theme_id,
            cognitive_level: q.cognitive_level.clone(),
            difficulty: q.difficulty.clone(),
            media: Vec::new(),
        }
    }

    /// The options present, A to E (GraphQL's `options`).
    pub fn options(&self) -> Vec<String> {
        [
            &self.option_a,
            &self.option_b,
            &self.option_c,
            &self.option_d,
            &self.option_e,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn scoring_key(&self) -> ScoringKey {
        ScoringKey {
            option_count: self.options().len(),
            correct_index: self.correct_index,
        }
    }
}

/// The canonical `questions` array (sorted by `question_id` as lowercase strings) and its
/// `version_hash`.
pub fn canonical_questions(mut snapshots: Vec<Snapshot>) -> AppResult<(String, VersionHash)> {
    let mut keyed: Vec<(String, Snapshot)> = snapshots
        .drain(..)
        .map(|s| (s.question_id.to_string().to_ascii_lowercase(), s))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let ordered: Vec<Snapshot> = keyed.into_iter().map(|(_, s)| s).collect();
    let canonical = canonical_json(&ordered)
        .map_err(|e| AppError::internal(format!("canonical JSON of snapshots: {e}")))?;
    let hash = VersionHash::from_digest(crate::hashing::sha256(canonical.as_bytes()));
    Ok((canonical, hash))
}

/// Parses a stored `questions_json`.
pub fn parse_snapshots(questions_json: &str) -> AppResult<Vec<Snapshot>> {
    serde_json::from_str(questions_json)
        .map_err(|e| AppError::internal(format!("stored package questions do not parse: {e}")))
}

/// The validated identity of a scope: its `scope_data` object and ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeIds {
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
}

impl ScopeIds {
    /// Checks that the ids fit the scope (see the module docs).
    pub fn new(
        scope: PackageScope,
        year_id: Option<i32>,
        block_id: Option<i32>,
        theme_id: Option<i32>,
    ) -> AppResult<ScopeIds> {
        let (required, required_name, allowed): (Option<i32>, &str, [bool; 3]) = match scope {
            PackageScope::Program => (Some(0), "", [false, false, false]),
            PackageScope::Year => (year_id, "yearId", [true, false, false]),
            PackageScope::Block => (block_id, "blockId", [true, true, false]),
            PackageScope::Theme => (theme_id, "themeId", [true, true, true]),
        };
        if required.is_none() {
            return Err(AppError::bad_request_with(
                ErrorCode::ValidationError,
                format!("a {} package needs {required_name}", scope.as_str()),
                json!({"field": required_name}),
            ));
        }
        for ((given, allowed), name) in [year_id, block_id, theme_id]
            .into_iter()
            .zip(allowed)
            .zip(["yearId", "blockId", "themeId"])
        {
            if given.is_some() && !allowed {
                return Err(AppError::bad_request_with(
                    ErrorCode::ValidationError,
                    format!("{name} is not part of a {} scope", scope.as_str()),
                    json!({"field": name}),
                ));
            }
        }
        Ok(ScopeIds {
            scope,
            year_id,
            block_id,
            theme_id,
        })
    }

    /// `scope_data`: the given ids only.
    pub fn scope_data(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (name, id) in [
            ("year_id", self.year_id),
            ("block_id", self.block_id),
            ("theme_id", self.theme_id),
        ] {
            if let Some(id) = id {
                map.insert(name.to_owned(), json!(id));
            }
        }
        Value::Object(map)
    }

    /// The `scope_key` column: canonical text of `scope_data`.
    pub fn scope_key(&self) -> AppResult<String> {
        canonical_json(&self.scope_data())
            .map_err(|e| AppError::internal(format!("canonical scope data: {e}")))
    }
}

/// Timestamps as the databases keep them (microseconds), so that what a build returns
/// equals what a later read gives.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// How many times a build retries after losing a version race.
const BUILD_ATTEMPTS: usize = 8;

/// Builds (or finds) the package of a scope: see the module docs.
pub async fn build_package(
    db: &DatabaseConnection,
    request: BuildRequest,
) -> AppResult<test_package::Model> {
    let name = package_name(&request)?;
    let ids = ScopeIds::new(
        request.scope,
        request.year_id,
        request.block_id,
        request.theme_id,
    )?;
    let scope_key = ids.scope_key()?;
    let questions = published_questions(db, &ids, &scope_key).await?;
    let contents = package_contents(db, questions).await?;

    for _ in 0..BUILD_ATTEMPTS {
        let newest = newest_version(db, &ids, &scope_key).await?;
        if let Some(newest) = newest
            .as_ref()
            .filter(|n| n.version_hash == contents.version_hash)
        {
            return reuse_version(db, newest, request.publish, contents.questions_json).await;
        }
        let version = newest.as_ref().map_or(1, |p| p.version + 1);
        let row = new_version_row(&request, &name, &ids, &scope_key, version, &contents);
        if let Some(model) = insert_version(db, row, version, &contents).await? {
            return Ok(model);
        }
    }
    Err(AppError::unavailable())
}

/// What a scope's questions become in a package, worked out once so that a build retrying
/// after a lost version race only reads the newest version again.
struct PackageContents {
    questions_json: String,
    version_hash: VersionHash,
    question_count: i32,
    media: crate::media::PackageMediaSet,
    index_rows: Vec<crate::access::index::IndexRow>,
}

/// The trimmed package name; a blank one is refused.
fn package_name(request: &BuildRequest) -> AppResult<String> {
    let name = request.name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::bad_request_with(
            ErrorCode::ValidationError,
            "name must not be empty",
            json!({"field": "name"}),
        ));
    }
    Ok(name)
}

/// The published questions of the scope; a scope without any makes no package.
async fn published_questions(
    db: &DatabaseConnection,
    ids: &ScopeIds,
    scope_key: &str,
) -> AppResult<Vec<question::Model>> {
    let mut query = question::Entity::find()
        .filter(question::Column::Status.eq(entity::QuestionStatus::Published));
    if let Some(year) = ids.year_id {
        query = query.filter(question::Column::YearId.eq(year));
    }
    if let Some(block) = ids.block_id {
        query = query.filter(question::Column::BlockId.eq(block));
    }
    if let Some(theme) = ids.theme_id {
        query = query.filter(question::Column::ThemeId.eq(theme));
    }
    let questions = query.all(db).await?;
    if questions.is_empty() {
        return Err(AppError::bad_request_with(
            ErrorCode::EmptyScope,
            format!(
                "the {} scope {} has no published questions",
                ids.scope.as_str(),
                scope_key
            ),
            json!({"scope": ids.scope.as_str(), "scope_data": ids.scope_data()}),
        ));
    }
    Ok(questions)
}

/// Snapshots the questions with their media, canonicalises and hashes the snapshots, and
/// keeps what the question index needs. Takes the questions so that they are freed before
/// the version loop.
async fn package_contents(
    db: &DatabaseConnection,
    questions: Vec<question::Model>,
) -> AppResult<PackageContents> {
    let question_count = i32::try_from(questions.len())
        .map_err(|_| AppError::bad_request("the scope holds too many questions"))?;
    let mut media = crate::media::question_media(db, &questions).await?;
    let (questions_json, version_hash) = canonical_questions(
        questions
            .iter()
            .map(|q| Snapshot::with_media(q, media.references.remove(&q.id).unwrap_or_default()))
            .collect(),
    )?;
    let index_rows = questions
        .iter()
        .map(|q| crate::access::index::IndexRow {
            question_id: q.id,
            year_id: q.year_id,
            block_id: q.block_id,
            theme_id: q.theme_id,
        })
        .collect();
    Ok(PackageContents {
        questions_json,
        version_hash,
        question_count,
        media,
        index_rows,
    })
}

/// The newest version of the scope's package, if any.
async fn newest_version(
    db: &DatabaseConnection,
    ids: &ScopeIds,
    scope_key: &str,
) -> AppResult<Option<PackageSummary>> {
    Ok(test_package::Entity::find()
        .filter(test_package::Column::Scope.eq(ids.scope))
        .filter(test_package::Column::ScopeKey.eq(scope_key))
        .order_by_desc(test_package::Column::Version)
        .into_partial_model::<PackageSummary>()
        .one(db)
        .await?)
}

/// Returns the existing version whose hash matches, publishing it first when asked.
async fn reuse_version(
    db: &DatabaseConnection,
    newest: &PackageSummary,
    publish: bool,
    questions_json: String,
) -> AppResult<test_package::Model> {
    // Same hash, same canonical bytes: the stored questions need not be read.
    let newest = if publish && !newest.is_published {
        publish_package(db, newest.id).await?
    } else {
        newest.clone()
    };
    Ok(newest.with_questions(questions_json))
}

/// The row of a new version `version` of the scope's package.
fn new_version_row(
    request: &BuildRequest,
    name: &str,
    ids: &ScopeIds,
    scope_key: &str,
    version: i32,
    contents: &PackageContents,
) -> test_package::ActiveModel {
    let at = now();
    test_package::ActiveModel {
        id: Set(PackageId::new_v4()),
        name: Set(name.to_owned()),
        description: Set(request.description.clone()),
        scope: Set(ids.scope),
        scope_data: Set(ids.scope_data()),
        scope_key: Set(scope_key.to_owned()),
        year_id: Set(ids.year_id),
        block_id: Set(ids.block_id),
        theme_id: Set(ids.theme_id),
        version: Set(version),
        version_hash: Set(contents.version_hash.clone()),
        questions_json: Set(contents.questions_json.clone()),
        question_count: Set(contents.question_count),
        media_count: Set(contents.media.count()),
        media_bytes: Set(contents.media.total_bytes()),
        is_published: Set(request.publish),
        published_at: Set(request.publish.then_some(at)),
        created_by: Set(request.created_by),
        created_at: Set(at),
        updated_at: Set(at),
        withdrawn_at: Set(None),
        withdrawn_reason: Set(None),
    }
}

/// Inserts the version with its question index and media objects; `None` when another
/// build made this version first, so the caller looks again.
async fn insert_version(
    db: &DatabaseConnection,
    row: test_package::ActiveModel,
    version: i32,
    contents: &PackageContents,
) -> AppResult<Option<test_package::Model>> {
    // The package, its question index and the list of its objects appear together or
    // not at all.
    let txn = db.begin().await?;
    match row.insert(&txn).await {
        Ok(model) => {
            crate::access::index::insert(&txn, model.id, &contents.index_rows).await?;
            crate::media::record_package_objects(&txn, model.id, &contents.media.objects).await?;
            txn.commit().await?;
            tracing::info!(
                package_id = %model.id,
                scope = model.scope.as_str(),
                scope_key = model.scope_key,
                version = model.version,
                questions = model.question_count,
                published = model.is_published,
                "built test package"
            );
            Ok(Some(model))
        }
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            tracing::debug!(version, "lost a package version race; re-reading");
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// Withdraws a published package (docs/api.md section 4). Withdrawing again returns it
/// unchanged, with its first time and reason.
pub async fn withdraw_package(
    db: &DatabaseConnection,
    id: PackageId,
    reason: &str,
) -> AppResult<PackageSummary> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AppError::bad_request_with(
            ErrorCode::ValidationError,
            "reason must not be empty",
            json!({"field": "reason"}),
        ));
    }
    let existing = find_summary(db, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no package {id}")))?;
    if !existing.is_published {
        return Err(AppError::bad_request_with(
            ErrorCode::ValidationError,
            "only a published package can be withdrawn",
            json!({"field": "id"}),
        ));
    }
    if existing.withdrawn_at.is_some() {
        return Ok(existing);
    }
    // Only a not yet withdrawn row is touched: concurrent withdrawals withdraw once, and
    // the triggers allow exactly this change of a published row.
    test_package::Entity::update_many()
        .col_expr(test_package::Column::WithdrawnAt, Expr::value(Some(now())))
        .col_expr(
            test_package::Column::WithdrawnReason,
            Expr::value(Some(reason.to_owned())),
        )
        .filter(test_package::Column::Id.eq(id))
        .filter(test_package::Column::WithdrawnAt.is_null())
        .exec(db)
        .await?;
    tracing::info!(package_id = %id, "withdrew test package");
    find_summary(db, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no package {id}")))
}

/// Publishes a package (idempotent: a published one is returned unchanged).
pub async fn publish_package(db: &DatabaseConnection, id: PackageId) -> AppResult<PackageSummary> {
    let at = now();
    // Only an unpublished row is touched, so the immutability trigger never fires here,
    // and concurrent publishes publish once.
    test_package::Entity::update_many()
        .col_expr(test_package::Column::IsPublished, Expr::value(true))
        .col_expr(test_package::Column::PublishedAt, Expr::value(Some(at)))
        .col_expr(test_package::Column::UpdatedAt, Expr::value(at))
        .filter(test_package::Column::Id.eq(id))
        .filter(test_package::Column::IsPublished.eq(false))
        .exec(db)
        .await?;
    find_summary(db, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no package {id}")))
}

/// A package without its questions: what lists and metadata need.
#[derive(Clone, Debug, PartialEq, Eq, DerivePartialModel)]
#[sea_orm(entity = "test_package::Entity")]
pub struct PackageSummary {
    pub id: PackageId,
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub scope_data: Value,
    pub scope_key: String,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub version: i32,
    pub version_hash: VersionHash,
    pub question_count: i32,
    pub media_count: i32,
    pub media_bytes: i64,
    pub is_published: bool,
    pub published_at: Option<DateTime<Utc>>,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub withdrawn_reason: Option<String>,
}

impl From<&test_package::Model> for PackageSummary {
    fn from(m: &test_package::Model) -> Self {
        PackageSummary {
            id: m.id,
            name: m.name.clone(),
            description: m.description.clone(),
            scope: m.scope,
            scope_data: m.scope_data.clone(),
            scope_key: m.scope_key.clone(),
            year_id: m.year_id,
            block_id: m.block_id,
            theme_id: m.theme_id,
            version: m.version,
            version_hash: m.version_hash.clone(),
            question_count: m.question_count,
            media_count: m.media_count,
            media_bytes: m.media_bytes,
            is_published: m.is_published,
            published_at: m.published_at,
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
            withdrawn_at: m.withdrawn_at,
            withdrawn_reason: m.withdrawn_reason.clone(),
        }
    }
}

impl PackageSummary {
    /// The whole row, given its stored questions.
    pub fn with_questions(self, questions_json: String) -> test_package::Model {
        test_package::Model {
            id: self.id,
            name: self.name,
            description: self.description,
            scope: self.scope,
            scope_data: self.scope_data,
            scope_key: self.scope_key,
            year_id: self.year_id,
            block_id: self.block_id,
            theme_id: self.theme_id,
            version: self.version,
            version_hash: self.version_hash,
            questions_json,
            question_count: self.question_count,
            media_count: self.media_count,
            media_bytes: self.media_bytes,
            is_published: self.is_published,
            published_at: self.published_at,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            withdrawn_at: self.withdrawn_at,
            withdrawn_reason: self.withdrawn_reason,
        }
    }

    /// Published and not withdrawn: what students may be served.
    pub fn is_served(&self) -> bool {
        self.is_published && self.withdrawn_at.is_none()
    }

    /// The REST `scope_data`: all three keys, `null` where absent.
    pub fn rest_scope_data(&self) -> Value {
        json!({
            "year_id": self.year_id,
            "block_id": self.block_id,
            "theme_id": self.theme_id,
        })
    }
}

/// A delta needs two versions of one line (scope + scope_data): otherwise `409`.
pub fn check_delta_scope(to: (PackageScope, &str), from: (PackageScope, &str)) -> AppResult<()> {
    if to == from {
        return Ok(());
    }
    Err(AppError::Conflict {
        code: ErrorCode::DeltaScopeMismatch,
        message: format!(
            "the packages are of different scopes ({} {} and {} {}); a delta needs two \
             versions of one scope and scope_data",
            to.0.as_str(),
            to.1,
            from.0.as_str(),
            from.1
        ),
        details: Some(json!({
            "scope": to.0, "scope_data": to.1,
            "from_scope": from.0, "from_scope_data": from.1,
        })),
    })
}

/// The delta from published package `from` to published package `id` (GraphQL's
/// `packageDelta`; REST serves `PackageStore::delta_bodies`, the same rule cached as
/// bytes): `None` when either is unknown or unpublished.
pub async fn package_delta(
    db: &DatabaseConnection,
    id: PackageId,
    from: PackageId,
) -> AppResult<Option<(PackageSummary, PackageSummary, delta::Delta)>> {
    let (Some(to), Some(held)) = (find_summary(db, id).await?, find_summary(db, from).await?)
    else {
        return Ok(None);
    };
    // A delta *from* a withdrawn package is how phones leave it; one *to* it is not served.
    if !to.is_served() || !held.is_published {
        return Ok(None);
    }
    check_delta_scope((to.scope, &to.scope_key), (held.scope, &held.scope_key))?;
    let Some((to_json, held_json)) = load_delta_json(db, id, from).await? else {
        return Ok(None);
    };
    let (_, delta) = diff_stored(&held_json, &to_json)?;
    Ok(Some((to, held, delta)))
}

/// The stored questions of both ends of a delta, `(to, from)`: `None` when either row is
/// gone. `from == id` (an empty delta) is one row read once.
pub async fn load_delta_json(
    db: &impl ConnectionTrait,
    id: PackageId,
    from: PackageId,
) -> AppResult<Option<(String, String)>> {
    let mut json = load_questions_json(db, &[id, from]).await?;
    let to_json = json.remove(&id);
    let from_json = if from == id {
        to_json.clone()
    } else {
        json.remove(&from)
    };
    Ok(to_json.zip(from_json))
}

/// The delta from the stored questions `from_json` to `to_json`, with the parsed
/// questions of `to`.
pub fn diff_stored(from_json: &str, to_json: &str) -> AppResult<(Vec<Snapshot>, delta::Delta)> {
    let to = parse_snapshots(to_json)?;
    let delta = delta::diff(&parse_snapshots(from_json)?, &to);
    Ok((to, delta))
}

/// Filters of the package list (REST query and GraphQL `PackageFilter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub scope: Option<PackageScope>,
    /// `Some(0)` is a filter like any other value.
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    /// Only the newest published version of each scope + scope_data.
    pub latest: bool,
}

/// Published, not withdrawn packages matching `filter`, every version (`filter.latest` is
/// applied by [`finish_list`], after the caller's access has been judged). Reads no
/// questions.
pub async fn list_served(
    db: &DatabaseConnection,
    filter: &ListFilter,
) -> AppResult<Vec<PackageSummary>> {
    let mut query = test_package::Entity::find()
        .filter(test_package::Column::IsPublished.eq(true))
        .filter(test_package::Column::WithdrawnAt.is_null());
    if let Some(scope) = filter.scope {
        query = query.filter(test_package::Column::Scope.eq(scope));
    }
    if let Some(year) = filter.year_id {
        query = query.filter(test_package::Column::YearId.eq(year));
    }
    if let Some(block) = filter.block_id {
        query = query.filter(test_package::Column::BlockId.eq(block));
    }
    if let Some(theme) = filter.theme_id {
        query = query.filter(test_package::Column::ThemeId.eq(theme));
    }
    Ok(query
        .order_by_desc(test_package::Column::PublishedAt)
        .order_by_desc(test_package::Column::Version)
        .into_partial_model::<PackageSummary>()
        .all(db)
        .await?)
}

/// Keeps the newest version of each scope + scope_data when `latest`, and orders newest
/// `published_at` first.
pub fn finish_list(mut rows: Vec<PackageSummary>, latest: bool) -> Vec<PackageSummary> {
    if latest {
        let mut newest: HashMap<(PackageScope, String), i32> = HashMap::new();
        for row in &rows {
            let entry = newest
                .entry((row.scope, row.scope_key.clone()))
                .or_insert(row.version);
            *entry = (*entry).max(row.version);
        }
        rows.retain(|row| newest.get(&(row.scope, row.scope_key.clone())) == Some(&row.version));
    }
    // The same order on every backend, whatever its timestamp text compares like.
    rows.sort_by(|a, b| {
        b.published_at
            .cmp(&a.published_at)
            .then(b.version.cmp(&a.version))
            .then(a.id.cmp(&b.id))
    });
    rows
}

/// Published, not withdrawn packages matching `filter`, newest first, for a caller who may
/// read every package (admins, `EXAMSYNC_ACCESS=open`, the CLI).
pub async fn list_published(
    db: &DatabaseConnection,
    filter: &ListFilter,
) -> AppResult<Vec<PackageSummary>> {
    Ok(finish_list(list_served(db, filter).await?, filter.latest))
}

/// One package without its questions (published or not).
pub async fn find_summary(
    db: &impl ConnectionTrait,
    id: PackageId,
) -> AppResult<Option<PackageSummary>> {
    Ok(test_package::Entity::find_by_id(id)
        .into_partial_model::<PackageSummary>()
        .one(db)
        .await?)
}

/// The stored questions (`questions_json`) of some packages, by id.
pub async fn load_questions_json(
    db: &impl ConnectionTrait,
    ids: &[PackageId],
) -> AppResult<HashMap<PackageId, String>> {
    let rows: Vec<(PackageId, String)> = test_package::Entity::find()
        .select_only()
        .column(test_package::Column::Id)
        .column(test_package::Column::QuestionsJson)
        .filter(test_package::Column::Id.is_in(ids.iter().copied()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// The REST download body, with the stored canonical `questions` spliced in verbatim: the
/// bytes the package store caches, in the shape of
/// [`PackageDownload`](crate::http::packages::wire::PackageDownload).
pub fn download_body(package: &test_package::Model) -> AppResult<Vec<u8>> {
    #[derive(Serialize)]
    struct Head<'a> {
        package_id: PackageId,
        name: &'a str,
        description: Option<&'a str>,
        scope: PackageScope,
        scope_data: Value,
        version: i32,
        version_hash: &'a str,
    }
    #[derive(Serialize)]
    struct Tail {
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        published_at: Option<DateTime<Utc>>,
    }
    let head = serde_json::to_vec(&Head {
        package_id: package.id,
        name: &package.name,
        description: package.description.as_deref(),
        scope: package.scope,
        scope_data: PackageSummary::from(package).rest_scope_data(),
        version: package.version,
        version_hash: package.version_hash.as_str(),
    })
    .map_err(|e| AppError::internal(e.to_string()))?;
    let tail = serde_json::to_vec(&Tail {
        created_at: package.created_at,
        updated_at: package.updated_at,
        published_at: package.published_at,
    })
    .map_err(|e| AppError::internal(e.to_string()))?;
    // head = `{…}`, tail = `{…}`: `{head…,"questions":[…],tail…}`.
    let mut body = Vec::with_capacity(head.len() + tail.len() + package.questions_json.len() + 16);
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"questions\":");
    body.extend_from_slice(package.questions_json.as_bytes());
    body.push(b',');
    body.extend_from_slice(&tail[1..]);
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        questions: Vec<Value>,
        canonical: String,
        version_hash: String,
    }

    #[test]
    fn vector_hashes_as_specified() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/version_hash.json");
        let Ok(text) = std::fs::read_to_string(path) else {
            panic!("test vectors missing at {path}");
        };
        let vector: Vector = serde_json::from_str(&text).unwrap();
        let snapshots: Vec<Snapshot> = vector
            .questions
            .into_iter()
            .map(|q| serde_json::from_value(q).unwrap())
            .collect();
        let (canonical, hash) = canonical_questions(snapshots).unwrap();
        assert_eq!(canonical, vector.canonical);
        assert_eq!(hash, vector.version_hash);
    }

    #[test]
    fn scope_ids_are_validated() {
        assert!(ScopeIds::new(PackageScope::Program, None, None, None).is_ok());
        assert!(ScopeIds::new(PackageScope::Program, Some(1), None, None).is_err());
        assert!(ScopeIds::new(PackageScope::Year, None, None, None).is_err());
        assert!(ScopeIds::new(PackageScope::Year, Some(1), Some(2), None).is_err());
        assert!(ScopeIds::new(PackageScope::Block, Some(1), None, None).is_err());
        assert!(ScopeIds::new(PackageScope::Theme, None, None, None).is_err());
        let theme = ScopeIds::new(PackageScope::Theme, Some(1), None, Some(7)).unwrap();
        assert_eq!(theme.scope_key().unwrap(), r#"{"theme_id":7,"year_id":1}"#);
        let program = ScopeIds::new(PackageScope::Program, None, None, None).unwrap();
        assert_eq!(program.scope_key().unwrap(), "{}");
        let year = ScopeIds::new(PackageScope::Year, Some(0), None, None).unwrap();
        assert_eq!(year.scope_data(), json!({"year_id": 0}));
    }

    #[test]
    fn scopes_parse_case_insensitively() {
        assert_eq!(PackageScope::parse("year"), Some(PackageScope::Year));
        assert_eq!(PackageScope::parse(" THEME "), Some(PackageScope::Theme));
        assert!(PackageScope::parse("COURSE").is_none());
        let err = parse_scope("COURSE").unwrap_err();
        assert!(
            err.to_string().contains("PROGRAM, YEAR, BLOCK, THEME"),
            "{err}"
        );
    }

    #[test]
    fn download_body_splices_the_stored_questions() {
        let at = Utc::now().trunc_subsecs(6);
        let package = test_package::Model {
            id: PackageId::nil(),
            name: "N".into(),
            description: None,
            scope: PackageScope::Year,
            scope_data: json!({"year_id": 1}),
            scope_key: r#"{"year_id":1}"#.into(),
            year_id: Some(1),
            block_id: None,
            theme_id: None,
            version: 3,
            version_hash: VersionHash::from_digest([0; 32]),
            questions_json: r#"[{"b":1,"a":2}]"#.into(),
            question_count: 1,
            media_count: 0,
            media_bytes: 0,
            is_published: true,
            published_at: Some(at),
            created_by: None,
            created_at: at,
            updated_at: at,
            withdrawn_at: None,
            withdrawn_reason: None,
        };
        let body = download_body(&package).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains(r#","questions":[{"b":1,"a":2}],"created_at":"#),
            "{text}"
        );
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["scope_data"],
            json!({"year_id": 1, "block_id": null, "theme_id": null})
        );
        assert_eq!(value["version"], 3);
        assert_eq!(value["package_id"], PackageId::nil().to_string());
    }
}

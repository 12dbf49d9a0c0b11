//! GraphQL of test packages: `packages`, `package`, `packageDelta`, `buildPackage`,
//! `publishPackage`, `withdrawPackage`.
//!
//! `TestPackage` resolvers hold a package without its questions; the snapshots are read
//! (batched by `loaders::PackageQuestionsLoader`) only when `questions` is selected.
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::PackageId;
use serde_json::Value;
use uuid::Uuid;

use super::{loaders::Loaders, require_admin, require_user, state};
use crate::{
    access::{self, AccessError},
    error::AppError,
    http::packages::wire,
    media::{self, MediaPlacement},
    packages::{
        self, BuildRequest, ListFilter, PackageScope, PackageSummary, Snapshot, SnapshotMedia,
    },
};
use entity::test_package;

/// Filters of `packages`; a value of 0 is a filter like any other.
#[derive(Clone, Debug, Default, InputObject)]
pub struct PackageFilter {
    pub scope: Option<PackageScope>,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    /// Only the newest published version of each scope + scope data.
    pub latest: Option<bool>,
}

impl From<PackageFilter> for ListFilter {
    fn from(f: PackageFilter) -> Self {
        ListFilter {
            scope: f.scope,
            year_id: f.year_id,
            block_id: f.block_id,
            theme_id: f.theme_id,
            latest: f.latest.unwrap_or(false),
        }
    }
}

#[derive(Clone, Debug, InputObject)]
pub struct BuildPackageInput {
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    #[graphql(default_with = "Some(false)")]
    pub publish: Option<bool>,
}

/// A question as frozen in a package.
#[derive(Clone, Debug, SimpleObject)]
pub struct QuestionSnapshot {
    /// `<packageId>:<questionId>`: one cache entry per package version.
    pub id: ID,
    pub question_id: Uuid,
    pub stem: String,
    pub options: Vec<String>,
    pub correct_index: i32,
    pub explanation_md: Option<String>,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub cognitive_level: Option<String>,
    pub difficulty: Option<String>,
    /// The media the question shows, in its order; `[]` when none.
    pub media: Vec<MediaRef>,
}

/// A question's reference to a media object, with where to fetch it.
#[derive(Clone, Debug, SimpleObject)]
pub struct MediaRef {
    /// Lowercase hex SHA-256 of the bytes: verify them against it.
    pub sha256: String,
    pub content_type: String,
    /// Size in bytes (bounded by `EXAMSYNC_MEDIA_MAX_BYTES`, so an `Int`).
    pub bytes: i32,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub placement: MediaPlacement,
    pub alt: Option<String>,
    /// The REST path of the object.
    pub url: String,
}

impl From<&SnapshotMedia> for MediaRef {
    fn from(m: &SnapshotMedia) -> Self {
        MediaRef {
            sha256: m.sha256.hex(),
            content_type: m.content_type.as_str().to_owned(),
            bytes: i32::try_from(m.bytes).unwrap_or(i32::MAX),
            width: m.width,
            height: m.height,
            placement: m.placement,
            alt: m.alt.clone(),
            url: media::object_path(&m.sha256),
        }
    }
}

impl QuestionSnapshot {
    fn new(package_id: PackageId, s: &Snapshot) -> Self {
        QuestionSnapshot {
            id: ID(format!("{package_id}:{}", s.question_id)),
            question_id: s.question_id.into(),
            stem: s.stem.clone(),
            options: s.options(),
            correct_index: s.correct_index,
            explanation_md: s.explanation_md.clone(),
            year_id: Some(s.year_id),
            block_id: s.block_id,
            theme_id: s.theme_id,
            cognitive_level: s.cognitive_level.clone(),
            difficulty: s.difficulty.clone(),
            media: s.media.iter().map(MediaRef::from).collect(),
        }
    }
}

/// A test package (without its questions until `questions` is asked for).
pub struct TestPackage {
    summary: PackageSummary,
    /// The stored questions when already at hand (right after a build).
    questions_json: Option<Arc<String>>,
}

impl From<PackageSummary> for TestPackage {
    fn from(summary: PackageSummary) -> Self {
        TestPackage {
            summary,
            questions_json: None,
        }
    }
}

impl From<test_package::Model> for TestPackage {
    fn from(model: test_package::Model) -> Self {
        TestPackage {
            summary: PackageSummary::from(&model),
            questions_json: Some(Arc::new(model.questions_json)),
        }
    }
}

#[Object]
impl TestPackage {
    async fn id(&self) -> Uuid {
        self.summary.id.into()
    }

    async fn name(&self) -> &str {
        &self.summary.name
    }

    async fn description(&self) -> Option<&str> {
        self.summary.description.as_deref()
    }

    async fn scope(&self) -> PackageScope {
        self.summary.scope
    }

    /// The scope's ids, e.g. `{"year_id": 1}` (`{}` for PROGRAM).
    async fn scope_data(&self) -> Json<Value> {
        Json(self.summary.scope_data.clone())
    }

    async fn version(&self) -> i32 {
        self.summary.version
    }

    /// SHA-256 of the RFC 8785 JSON of the REST `questions` array; the REST ETag.
    async fn version_hash(&self) -> &str {
        self.summary.version_hash.as_str()
    }

    async fn question_count(&self) -> i32 {
        self.summary.question_count
    }

    async fn is_published(&self) -> bool {
        self.summary.is_published
    }

    async fn published_at(&self) -> Option<DateTime<Utc>> {
        self.summary.published_at
    }

    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        Some(self.summary.updated_at)
    }

    /// The frozen snapshots, ordered by question id.
    async fn questions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<QuestionSnapshot>> {
        let id = self.summary.id;
        let snapshots = match &self.questions_json {
            Some(json) => Arc::new(packages::parse_snapshots(json)?),
            None => ctx
                .data_unchecked::<Loaders>()
                .package_questions
                .load_one(id)
                .await
                .map_err(AppError::from)?
                .unwrap_or_default(),
        };
        Ok(snapshots
            .iter()
            .map(|s| QuestionSnapshot::new(id, s))
            .collect())
    }

    /// The REST path that downloads this package.
    async fn download_path(&self) -> String {
        wire::download_path(self.summary.id.into())
    }

    /// Distinct media objects the snapshots refer to (what the bundle holds).
    async fn media_count(&self) -> i32 {
        self.summary.media_count
    }

    /// Their total size in bytes. An `Int` (32 bits): a package past 2 GiB of media shows
    /// the largest `Int`; REST's `media_bytes` is exact.
    async fn media_bytes(&self) -> i32 {
        i32::try_from(self.summary.media_bytes).unwrap_or(i32::MAX)
    }

    /// The REST path of the media bundle (one ZIP of every object).
    async fn media_bundle_path(&self) -> String {
        wire::media_bundle_path(self.summary.id.into())
    }

    /// When an admin withdrew the package (null: served).
    async fn withdrawn_at(&self) -> Option<DateTime<Utc>> {
        self.summary.withdrawn_at
    }

    /// Why it was withdrawn: for admins only (null for others).
    async fn withdrawn_reason(&self, ctx: &Context<'_>) -> Option<&str> {
        let admin = require_user(ctx).is_ok_and(|u| u.is_admin());
        admin
            .then_some(self.summary.withdrawn_reason.as_deref())
            .flatten()
    }
}

/// What changed from one published version of a scope to another (docs/api.md §5.5).
pub struct PackageDelta {
    package: PackageSummary,
    from: PackageSummary,
    delta: packages::delta::Delta,
}

#[Object]
impl PackageDelta {
    /// The package the delta leads to.
    async fn package(&self) -> TestPackage {
        self.package.clone().into()
    }

    /// The package the phone holds.
    async fn from(&self) -> TestPackage {
        self.from.clone().into()
    }

    /// Snapshots of `package` that `from` lacks or holds differently, by question id.
    async fn upserted(&self) -> Vec<QuestionSnapshot> {
        self.delta
            .upserted
            .iter()
            .map(|s| QuestionSnapshot::new(self.package.id, s))
            .collect()
    }

    /// Question ids of `from` that `package` lacks, ascending.
    async fn removed(&self) -> Vec<Uuid> {
        self.delta.removed.iter().map(|&id| id.into()).collect()
    }
}

#[derive(Default)]
pub struct PackageQuery;

#[Object]
impl PackageQuery {
    /// Published packages, newest `publishedAt` first.
    async fn packages(
        &self,
        ctx: &Context<'_>,
        filter: Option<PackageFilter>,
    ) -> async_graphql::Result<Vec<TestPackage>> {
        let user = require_user(ctx)?;
        let filter = ListFilter::from(filter.unwrap_or_default());
        let rows = access::gate::list_readable(state(ctx), &user, &filter).await?;
        Ok(rows.into_iter().map(TestPackage::from).collect())
    }

    /// A package; an unpublished or withdrawn one only for admins (others get null); one
    /// the caller's grants do not cover is `FORBIDDEN`.
    async fn package(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<TestPackage>> {
        let id = PackageId::from(id);
        let user = require_user(ctx)?;
        let app = state(ctx);
        let Some(summary) = packages::find_summary(&app.db, id).await? else {
            return Ok(None);
        };
        if user.is_admin() {
            return Ok(Some(summary.into()));
        }
        match access::may_read_package(app, &user, id).await {
            Ok(()) => Ok(Some(summary.into())),
            Err(AccessError::NotFound(_) | AccessError::Withdrawn(_)) => Ok(None),
            Err(e) => Err(AppError::from(e).into()),
        }
    }

    /// The delta from published package `from` to published package `id` (same scope
    /// and scope data): null when either is unknown or unpublished, or `id` withdrawn;
    /// `FORBIDDEN` when the caller's grants do not cover both.
    async fn package_delta(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        from: Uuid,
    ) -> async_graphql::Result<Option<PackageDelta>> {
        let (id, from) = (PackageId::from(id), PackageId::from(from));
        let user = require_user(ctx)?;
        let app = state(ctx);
        match access::may_read_delta(app, &user, id, from).await {
            Ok(()) => {}
            Err(AccessError::NotFound(_) | AccessError::Withdrawn(_)) => return Ok(None),
            Err(e) => return Err(AppError::from(e).into()),
        }
        let found = packages::package_delta(&app.db, id, from).await?;
        Ok(found.map(|(package, from, delta)| PackageDelta {
            package,
            from,
            delta,
        }))
    }
}

#[derive(Default)]
pub struct PackageMutation;

#[Object]
impl PackageMutation {
    /// Snapshots the published questions of a scope (admin). An unchanged question set
    /// returns the newest version (published when `publish`); a changed one makes N+1.
    async fn build_package(
        &self,
        ctx: &Context<'_>,
        input: BuildPackageInput,
    ) -> async_graphql::Result<TestPackage> {
        let user = require_admin(ctx)?;
        let request = BuildRequest {
            name: input.name,
            description: input.description,
            scope: input.scope,
            year_id: input.year_id,
            block_id: input.block_id,
            theme_id: input.theme_id,
            publish: input.publish.unwrap_or(false),
            created_by: Some(user.id),
        };
        let app = state(ctx);
        let model = packages::build_package(&app.db, request).await?;
        if model.is_published {
            published(app, model.id);
        }
        Ok(model.into())
    }

    /// Publishes a package (admin); publishing a published package changes nothing.
    async fn publish_package(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<TestPackage> {
        let id = PackageId::from(id);
        require_admin(ctx)?;
        let app = state(ctx);
        let summary = packages::publish_package(&app.db, id).await?;
        published(app, id);
        Ok(summary.into())
    }

    /// Withdraws a published package (admin): it leaves every list and its download
    /// answers `410`; deltas from it still work. Withdrawing again changes nothing.
    async fn withdraw_package(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
    ) -> async_graphql::Result<TestPackage> {
        let id = PackageId::from(id);
        require_admin(ctx)?;
        let app = state(ctx);
        let summary = packages::withdraw_package(&app.db, id, &reason).await?;
        app.access.forget_package(id);
        Ok(summary.into())
    }
}

/// After a publish: the node limit's totals are counted again, and the delta from the
/// previous version of the scope is built now, so phones do not wait for it.
fn published(app: &crate::app::AppState, id: PackageId) {
    app.packages.published_changed();
    app.packages.prebuild_delta_from_previous(&app.db, id);
}

//! In-process caches of published packages. A published package never changes (the
//! database refuses updates), so what is derived from it — its validators, its
//! serialized body in each encoding, its scoring keys — is computed once per process and
//! kept, within size bounds (`moka` caches, each bounded on its own, by bytes where
//! values vary in size). Unpublished packages
//! are never cached: they may be published (by another instance) at any moment.
//!
//! - `published_meta`: id → ETag, so a revalidation that ends in `304` reads nothing once
//!   warm (and only three small columns when cold);
//! - `published_bodies`: id → the download body as identity, gzip and br bytes;
//! - `scoring_for`: id → scoring keys of the snapshots, for sync;
//! - `delta_bodies`: (package, held package) → the delta body in each encoding;
//! - `dcz_body`: (package, dictionary package) → the RFC 9842 `dcz` body;
//! - dictionaries: SHA-256 of a download's identity bytes → package id. Every instance
//!   that builds a download's bodies records that digest in `package_dictionaries` (and
//!   here), so a digest a client got from any instance is found by a primary-key read.
//!
//! Bodies, deltas and `dcz` bodies are built once per key even under a burst of requests
//! (`single_flight`): the others wait for the first build, then read it here. A build runs
//! detached from the request that started it, so a client that gives up never makes the
//! work go to waste, and at most one cold build per core runs at a time.
use std::{
    collections::HashMap,
    hash::Hash,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::http::HeaderValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::{PackageId, QuestionId, VersionHash};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sha2::{Digest, Sha256};

use super::{PackageScope, encoding::Encoding, single_flight::Flights};
use crate::{
    error::{AppError, AppResult},
    metrics::{self, PackageBuild},
};
use entity::{package_dictionary, test_package};

/// How to score an answer to one question of a package: the snapshot's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoringKey {
    pub option_count: usize,
    pub correct_index: i32,
}

/// The scoring keys of one published package, by question id.
#[derive(Debug, Default)]
pub struct PackageScoring {
    pub questions: HashMap<QuestionId, ScoringKey>,
}

/// What a revalidation needs of a published package.
#[derive(Debug)]
pub struct PublishedMeta {
    pub version_hash: VersionHash,
    /// `W/"<version_hash>"`, ready to send.
    pub etag: HeaderValue,
    /// `published_at` as an HTTP-date, ready to send (and compared with `If-Range`).
    pub last_modified: HeaderValue,
    pub published_at: DateTime<Utc>,
    pub scope: PackageScope,
    pub scope_key: String,
    pub version: i32,
    /// The headers of a `304` for this package, made once by the HTTP layer and cloned.
    pub not_modified: std::sync::OnceLock<axum::http::HeaderMap>,
}

impl PublishedMeta {
    pub fn new(
        version_hash: VersionHash,
        published_at: DateTime<Utc>,
        scope: PackageScope,
        scope_key: String,
        version: i32,
    ) -> AppResult<PublishedMeta> {
        let etag = HeaderValue::try_from(format!("W/\"{version_hash}\""))
            .map_err(|_| AppError::internal("version hash is not a valid header value"))?;
        Ok(PublishedMeta {
            version_hash,
            etag,
            last_modified: http_date(published_at),
            published_at,
            scope,
            scope_key,
            version,
            not_modified: std::sync::OnceLock::new(),
        })
    }

    fn of(package: &test_package::Model) -> AppResult<PublishedMeta> {
        let published_at = package
            .published_at
            .ok_or_else(|| AppError::internal("a published package without published_at"))?;
        PublishedMeta::new(
            package.version_hash.clone(),
            published_at,
            package.scope,
            package.scope_key.clone(),
            package.version,
        )
    }
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(at: DateTime<Utc>) -> HeaderValue {
    let text = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    // The format only ever yields visible ASCII.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A body in each content coding served (identity, gzip, br), compressed once.
#[derive(Debug)]
pub struct Encoded {
    pub identity: Bytes,
    pub gzip: Bytes,
    pub br: Bytes,
    /// The headers of a whole `200` of each body (identity, gzip, br), made once by the HTTP
    /// layer and cloned.
    whole_headers: [std::sync::OnceLock<axum::http::HeaderMap>; 3],
}

/// Brotli quality of a full download: 9 compresses megabytes in about a second; 11 would
/// take several times that for a few percent fewer bytes.
const DOWNLOAD_BROTLI_QUALITY: u32 = 9;
/// Brotli quality of a delta: deltas are small (a few percent of a download), built once
/// per pair and fetched by every phone of the scope, so the slowest, smallest setting pays:
/// fewer bytes for every phone against more CPU once per pair (the trade is measured in
/// docs/benchmarks.md).
const DELTA_BROTLI_QUALITY: u32 = 11;

impl Encoded {
    /// Compresses (CPU-bound: call on a blocking thread). gzip and brotli are
    /// deterministic for given settings, so every instance makes the same bytes.
    pub fn new(identity: Vec<u8>, brotli_quality: u32) -> AppResult<Encoded> {
        let gzip = gzip(&identity)?;
        let br = brotli(&identity, brotli_quality)?;
        Ok(Encoded {
            identity: Bytes::from(identity),
            gzip: Bytes::from(gzip),
            br: Bytes::from(br),
            whole_headers: Default::default(),
        })
    }

    /// Where the headers of a whole `200` of the body in `encoding` are kept.
    pub fn whole_headers(&self, encoding: Encoding) -> &std::sync::OnceLock<axum::http::HeaderMap> {
        &self.whole_headers[match encoding {
            Encoding::Identity => 0,
            Encoding::Gzip => 1,
            Encoding::Brotli => 2,
        }]
    }

    pub fn get(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Identity => &self.identity,
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.br,
        }
    }

    fn weight(&self) -> usize {
        self.identity.len() + self.gzip.len() + self.br.len() + 256
    }
}

/// A delta between two published packages, ready to serve.
#[derive(Debug)]
pub struct DeltaBodies {
    /// `W/"<from version_hash>.<version_hash>"`: the same on every instance.
    pub etag: HeaderValue,
    /// The later `published_at` of the two.
    pub last_modified: HeaderValue,
    pub bodies: Encoded,
}

/// The delta validator, from the two version hashes alone (a `304` computes nothing).
pub fn delta_etag(from_hash: &str, to_hash: &str) -> AppResult<HeaderValue> {
    HeaderValue::try_from(format!("W/\"{from_hash}.{to_hash}\""))
        .map_err(|_| AppError::internal("version hash is not a valid header value"))
}

/// The download body of a published package in every encoding served.
#[derive(Debug)]
pub struct PackageBodies {
    pub meta: Arc<PublishedMeta>,
    pub bodies: Encoded,
    /// SHA-256 of the identity bytes: the RFC 9842 dictionary id of this download.
    pub sha256: [u8; 32],
}

impl PackageBodies {
    pub fn get(&self, encoding: Encoding) -> &Bytes {
        self.bodies.get(encoding)
    }

    fn weight(&self) -> usize {
        self.bodies.weight()
    }

    /// Serializes and compresses (CPU-bound: call on a blocking thread).
    pub fn build(package: &test_package::Model) -> AppResult<PackageBodies> {
        let meta = Arc::new(PublishedMeta::of(package)?);
        let identity = super::download_body(package)?;
        let sha256: [u8; 32] = Sha256::digest(&identity).into();
        Ok(PackageBodies {
            meta,
            bodies: Encoded::new(identity, DOWNLOAD_BROTLI_QUALITY)?,
            sha256,
        })
    }
}

fn gzip(data: &[u8]) -> AppResult<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::best(),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map_err(|e| AppError::internal(format!("gzip: {e}")))
}

fn brotli(data: &[u8], quality: u32) -> AppResult<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 5);
    let params = brotli::enc::BrotliEncoderParams {
        quality: quality as i32,
        lgwin: 22,
        size_hint: data.len(),
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params)
        .map_err(|e| AppError::internal(format!("brotli: {e}")))?;
    Ok(out)
}

/// Size bounds of the store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Bytes of download bodies (all encodings together); deltas and `dcz` bodies get a
    /// quarter of it each.
    pub body_bytes: u64,
    pub meta_entries: u64,
    /// Scoring keys (questions) over all packages.
    pub scoring_questions: u64,
    /// Cold builds running at once; the others wait their turn.
    pub concurrent_builds: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            body_bytes: 256 * 1024 * 1024,
            meta_entries: 100_000,
            scoring_questions: 2_000_000,
            concurrent_builds: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// How many packages are published and how many questions they hold (the GraphQL node
/// limit's list sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishedTotals {
    pub packages: u64,
    pub questions: u64,
    pub max_questions: u64,
}

/// How long the published totals are reused: a publish on another instance is seen
/// within it (one instance's publishes are seen at once).
const TOTALS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// A cache bounded by the total weight of its values.
type Weighted<K, V> = moka::sync::Cache<K, Arc<V>>;

fn weighted<K, V>(max_weight: u64, weight: fn(&V) -> usize) -> Weighted<K, V>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(max_weight)
        .weigher(move |_, value: &Arc<V>| u32::try_from(weight(value)).unwrap_or(u32::MAX))
        .build()
}

/// The package store; cheap to clone (its builds run detached and need their own handle).
#[derive(Clone)]
pub struct PackageStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// Read by every revalidation: a `quick_cache` read costs a fraction of a `moka` one.
    meta: quick_cache::sync::Cache<PackageId, Arc<PublishedMeta>>,
    bodies: Weighted<PackageId, PackageBodies>,
    scoring: Weighted<PackageId, PackageScoring>,
    deltas: Weighted<(PackageId, PackageId), DeltaBodies>,
    dcz: Weighted<(PackageId, PackageId), Bytes>,
    /// Dictionary digest → package id (a positive answer never changes: packages are
    /// immutable, so their download bytes are too).
    dictionaries: Weighted<[u8; 32], PackageId>,
    /// The totals of the published packages, kept a few seconds (one entry).
    totals: moka::sync::Cache<(), PublishedTotals>,
    builds: Flights<BuildKey>,
    /// Cold builds are CPU-bound: at most one per core runs, the rest wait here.
    build_slots: Arc<tokio::sync::Semaphore>,
    /// Builds started, by `PackageBuild` (also counted in `/metrics`, which is per process).
    built: [AtomicU64; 3],
}

/// What is being built, for `single_flight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum BuildKey {
    Bodies(PackageId),
    /// (package, held package).
    Delta(PackageId, PackageId),
    /// (package, dictionary package).
    Dcz(PackageId, PackageId),
}

impl Default for PackageStore {
    fn default() -> Self {
        PackageStore::new(StoreLimits::default())
    }
}

impl PackageStore {
    pub fn new(limits: StoreLimits) -> PackageStore {
        PackageStore {
            inner: Arc::new(StoreInner {
                meta: quick_cache::sync::Cache::new(
                    usize::try_from(limits.meta_entries).unwrap_or(usize::MAX),
                ),
                bodies: weighted(limits.body_bytes, PackageBodies::weight),
                scoring: weighted(limits.scoring_questions, |s: &PackageScoring| {
                    s.questions.len().max(1)
                }),
                deltas: weighted(limits.body_bytes / 4, |d: &DeltaBodies| d.bodies.weight()),
                dcz: weighted(limits.body_bytes / 4, |b: &Bytes| b.len() + 64),
                dictionaries: weighted(limits.meta_entries, |_| 1),
                totals: moka::sync::Cache::builder()
                    .max_capacity(1)
                    .time_to_live(TOTALS_TTL)
                    .build(),
                builds: Flights::default(),
                build_slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrent_builds.max(1))),
                built: Default::default(),
            }),
        }
    }

    /// Runs `build` detached from the request: a client that disconnects or runs out of
    /// its budget drops only its wait, and the result still reaches the cache for the
    /// retry. One build per key at a time (`single_flight`); `cached` is read again once
    /// the key is ours, since the previous holder has usually just filled it.
    async fn detached<T, C, B, F>(&self, key: BuildKey, cached: C, build: B) -> AppResult<T>
    where
        T: Send + 'static,
        C: Fn(&StoreInner) -> Option<T> + Send + 'static,
        B: FnOnce(PackageStore) -> F + Send + 'static,
        F: Future<Output = AppResult<T>> + Send + 'static,
    {
        let store = self.clone();
        tokio::spawn(async move {
            let _flight = store.inner.builds.enter(key).await;
            if let Some(found) = cached(&store.inner) {
                return Ok(found);
            }
            build(store.clone()).await
        })
        .await
        .map_err(|e| AppError::internal(format!("a package build failed: {e}")))?
    }

    /// Runs CPU-bound work on a blocking thread once a build slot is free.
    async fn cpu<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> AppResult<T> + Send + 'static,
    ) -> AppResult<T> {
        let _slot = self
            .inner
            .build_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AppError::internal("build slots closed"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AppError::internal(format!("a package build failed: {e}")))?
    }

    /// The validators of a published package when they are in memory (no database read).
    pub fn cached_meta(&self, id: PackageId) -> Option<Arc<PublishedMeta>> {
        self.inner.meta.get(&id)
    }

    /// The validators of a published package (`None`: unknown or unpublished).
    pub async fn published_meta(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
    ) -> AppResult<Option<Arc<PublishedMeta>>> {
        if let Some(meta) = self.cached_meta(id) {
            return Ok(Some(meta));
        }
        type Row = (
            VersionHash,
            bool,
            Option<DateTime<Utc>>,
            PackageScope,
            String,
            i32,
        );
        let row: Option<Row> = test_package::Entity::find_by_id(id)
            .select_only()
            .column(test_package::Column::VersionHash)
            .column(test_package::Column::IsPublished)
            .column(test_package::Column::PublishedAt)
            .column(test_package::Column::Scope)
            .column(test_package::Column::ScopeKey)
            .column(test_package::Column::Version)
            .into_tuple()
            .one(db)
            .await?;
        match row {
            Some((version_hash, true, Some(published_at), scope, scope_key, version)) => {
                let meta = Arc::new(PublishedMeta::new(
                    version_hash,
                    published_at,
                    scope,
                    scope_key,
                    version,
                )?);
                Ok(Some(insert_meta(&self.inner.meta, id, meta)))
            }
            _ => Ok(None),
        }
    }

    /// The download bodies of a published package (`None`: unknown or unpublished).
    pub async fn published_bodies(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
    ) -> AppResult<Option<Arc<PackageBodies>>> {
        if let Some(bodies) = self.inner.bodies.get(&id) {
            return Ok(Some(bodies));
        }
        let db = db.clone();
        self.detached(
            BuildKey::Bodies(id),
            move |inner| inner.bodies.get(&id).map(Some),
            move |store| async move {
                let Some(package) = test_package::Entity::find_by_id(id)
                    .filter(test_package::Column::IsPublished.eq(true))
                    .one(&db)
                    .await?
                else {
                    return Ok(None);
                };
                store.started(PackageBuild::Download);
                let bodies = Arc::new(store.cpu(move || PackageBodies::build(&package)).await?);
                insert_meta(&store.inner.meta, id, bodies.meta.clone());
                store.record_dictionary(&db, bodies.sha256, id).await;
                Ok(Some(insert(&store.inner.bodies, id, bodies)))
            },
        )
        .await
    }

    /// Records the dictionary digest of a download (here and for every instance).
    async fn record_dictionary(&self, db: &DatabaseConnection, sha256: [u8; 32], id: PackageId) {
        insert(&self.inner.dictionaries, sha256, Arc::new(id));
        let row = package_dictionary::ActiveModel {
            sha256: Set(hex::encode(sha256)),
            package_id: Set(id),
        };
        let inserted = package_dictionary::Entity::insert(row)
            .on_conflict_do_nothing_on([package_dictionary::Column::Sha256])
            .exec(db)
            .await;
        if let Err(err) = inserted {
            // Not fatal: this download is served; another instance asked for this digest
            // answers with br instead of dcz until an instance records it.
            tracing::warn!(package_id = %id, error = %err, "could not record a dictionary digest");
        }
    }

    /// The published package whose download's identity bytes have this SHA-256.
    pub async fn dictionary(
        &self,
        db: &DatabaseConnection,
        sha256: &[u8; 32],
    ) -> AppResult<Option<PackageId>> {
        if let Some(id) = self.inner.dictionaries.get(sha256) {
            return Ok(Some(*id));
        }
        let row = package_dictionary::Entity::find_by_id(hex::encode(sha256))
            .one(db)
            .await?;
        Ok(row.map(|r| *insert(&self.inner.dictionaries, *sha256, Arc::new(r.package_id))))
    }

    /// The `dcz` body of package `id` with package `dictionary`'s download as the
    /// dictionary, computed once per pair.
    pub async fn dcz_body(
        &self,
        target: &Arc<PackageBodies>,
        id: PackageId,
        dictionary: &Arc<PackageBodies>,
        dictionary_id: PackageId,
    ) -> AppResult<Bytes> {
        let key = (id, dictionary_id);
        if let Some(body) = self.inner.dcz.get(&key) {
            return Ok((*body).clone());
        }
        let (target, dictionary) = (target.clone(), dictionary.clone());
        self.detached(
            BuildKey::Dcz(id, dictionary_id),
            move |inner| inner.dcz.get(&key).map(|b| (*b).clone()),
            move |store| async move {
                store.started(PackageBuild::Dcz);
                let body = store
                    .cpu(move || {
                        super::dcz::encode(
                            &dictionary.bodies.identity,
                            &dictionary.sha256,
                            &target.bodies.identity,
                        )
                        .map_err(|e| AppError::internal(format!("dcz: {e}")))
                    })
                    .await?;
                Ok((*insert(&store.inner.dcz, key, Arc::new(Bytes::from(body)))).clone())
            },
        )
        .await
    }

    /// The delta from `from` to `id` when it is in memory (nothing read or built).
    pub fn cached_delta(&self, id: PackageId, from: PackageId) -> Option<Arc<DeltaBodies>> {
        self.inner.deltas.get(&(id, from))
    }

    /// The delta from `from` to `id`, both published, computed once per pair (`None`: either
    /// package is unknown or unpublished).
    /// `DELTA_SCOPE_MISMATCH` when they are of different scopes or scope data.
    pub async fn delta_bodies(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
        from: PackageId,
    ) -> AppResult<Option<Arc<DeltaBodies>>> {
        if let Some(bodies) = self.cached_delta(id, from) {
            return Ok(Some(bodies));
        }
        let db = db.clone();
        self.detached(
            BuildKey::Delta(id, from),
            move |inner| inner.deltas.get(&(id, from)).map(Some),
            move |store| async move { store.build_delta(&db, id, from).await },
        )
        .await
    }

    async fn build_delta(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
        from: PackageId,
    ) -> AppResult<Option<Arc<DeltaBodies>>> {
        let Some((to_meta, from_meta)) = self.delta_ends(db, id, from).await? else {
            return Ok(None);
        };
        let Some((to_json, from_json)) = super::load_delta_json(db, id, from).await? else {
            return Ok(None);
        };
        self.started(PackageBuild::Delta);
        let built = self
            .cpu(move || -> AppResult<DeltaBodies> {
                let (to, delta) = super::diff_stored(&from_json, &to_json)?;
                let ends = super::delta::DeltaEnds {
                    package_id: id,
                    version: to_meta.version,
                    version_hash: to_meta.version_hash.as_str(),
                    question_count: i32::try_from(to.len())
                        .map_err(|_| AppError::internal("question count"))?,
                    from_package_id: from,
                    from_version: from_meta.version,
                    from_version_hash: from_meta.version_hash.as_str(),
                };
                let identity = super::delta::delta_body_bytes(ends, &delta)
                    .map_err(|e| AppError::internal(format!("delta body: {e}")))?;
                Ok(DeltaBodies {
                    etag: delta_etag(
                        from_meta.version_hash.as_str(),
                        to_meta.version_hash.as_str(),
                    )?,
                    last_modified: http_date(to_meta.published_at.max(from_meta.published_at)),
                    bodies: Encoded::new(identity, DELTA_BROTLI_QUALITY)?,
                })
            })
            .await?;
        Ok(Some(insert(
            &self.inner.deltas,
            (id, from),
            Arc::new(built),
        )))
    }

    /// Both ends of a delta, checked: `None` when either is unknown or unpublished,
    /// `DELTA_SCOPE_MISMATCH` when they are of different lines of versions.
    pub async fn delta_ends(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
        from: PackageId,
    ) -> AppResult<Option<(Arc<PublishedMeta>, Arc<PublishedMeta>)>> {
        let Some(to_meta) = self.published_meta(db, id).await? else {
            return Ok(None);
        };
        let Some(from_meta) = self.published_meta(db, from).await? else {
            return Ok(None);
        };
        super::check_delta_scope(
            (to_meta.scope, &to_meta.scope_key),
            (from_meta.scope, &from_meta.scope_key),
        )?;
        Ok(Some((to_meta, from_meta)))
    }

    /// Starts building, detached, the delta from the previous published version of
    /// `id`'s scope to `id`, so phones that ask for it right after a publish find it built.
    pub fn prebuild_delta_from_previous(&self, db: &DatabaseConnection, id: PackageId) {
        let (store, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            let previous = async {
                let Some(meta) = store.published_meta(&db, id).await? else {
                    return Ok(None);
                };
                let previous: Option<PackageId> = test_package::Entity::find()
                    .select_only()
                    .column(test_package::Column::Id)
                    .filter(test_package::Column::IsPublished.eq(true))
                    .filter(test_package::Column::Scope.eq(meta.scope))
                    .filter(test_package::Column::ScopeKey.eq(meta.scope_key.clone()))
                    .filter(test_package::Column::Id.ne(id))
                    .filter(test_package::Column::PublishedAt.lte(meta.published_at))
                    .order_by_desc(test_package::Column::PublishedAt)
                    .order_by_desc(test_package::Column::Version)
                    .into_tuple()
                    .one(&db)
                    .await?;
                AppResult::Ok(previous)
            };
            let result = match previous.await {
                Ok(Some(from)) => store.delta_bodies(&db, id, from).await.map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(err) = result {
                // Not fatal: the first phone to ask builds it.
                tracing::warn!(package_id = %id, error = %err, "could not prebuild the delta of a publish");
            }
        });
    }

    /// The published packages' totals, counted at most once per `TOTALS_TTL`.
    pub async fn published_totals(&self, db: &DatabaseConnection) -> AppResult<PublishedTotals> {
        if let Some(totals) = self.inner.totals.get(&()) {
            return Ok(totals);
        }
        use sea_orm::sea_query::Expr;
        let row: Option<(i64, Option<i64>, Option<i32>)> = test_package::Entity::find()
            .select_only()
            .column_as(test_package::Column::Id.count(), "packages")
            .column_as(
                Expr::cust("CAST(COALESCE(SUM(question_count), 0) AS BIGINT)"),
                "questions",
            )
            .column_as(test_package::Column::QuestionCount.max(), "max_questions")
            .filter(test_package::Column::IsPublished.eq(true))
            .into_tuple()
            .one(db)
            .await?;
        let (packages, questions, max_questions) = row.unwrap_or((0, None, None));
        let totals = PublishedTotals {
            packages: packages.max(0) as u64,
            questions: questions.unwrap_or(0).max(0) as u64,
            max_questions: max_questions.unwrap_or(0).max(0) as u64,
        };
        self.inner.totals.insert((), totals);
        Ok(totals)
    }

    /// Forgets the published totals (this instance just published a package).
    pub fn published_changed(&self) {
        self.inner.totals.invalidate_all();
    }

    /// Scoring keys of the given packages that exist and are published (others are absent).
    pub async fn scoring_for(
        &self,
        db: &DatabaseConnection,
        ids: &[PackageId],
    ) -> AppResult<HashMap<PackageId, Arc<PackageScoring>>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &id in ids {
            if found.contains_key(&id) || missing.contains(&id) {
                continue;
            }
            match self.inner.scoring.get(&id) {
                Some(scoring) => {
                    found.insert(id, scoring);
                }
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let rows: Vec<(PackageId, String)> = test_package::Entity::find()
            .select_only()
            .column(test_package::Column::Id)
            .column(test_package::Column::QuestionsJson)
            .filter(test_package::Column::Id.is_in(missing))
            .filter(test_package::Column::IsPublished.eq(true))
            .into_tuple()
            .all(db)
            .await?;
        for (id, questions_json) in rows {
            let snapshots = super::parse_snapshots(&questions_json)?;
            let scoring = PackageScoring {
                questions: snapshots
                    .iter()
                    .map(|s| (s.question_id, s.scoring_key()))
                    .collect(),
            };
            found.insert(id, insert(&self.inner.scoring, id, Arc::new(scoring)));
        }
        Ok(found)
    }

    fn started(&self, kind: PackageBuild) {
        self.inner.built[kind as usize].fetch_add(1, Ordering::Relaxed);
        metrics::package_build(kind);
    }

    /// Builds this store has started of `kind`, for tests and diagnostics.
    pub fn build_count(&self, kind: PackageBuild) -> u64 {
        self.inner.built[kind as usize].load(Ordering::Relaxed)
    }

    /// Entries currently cached (meta, bodies, scoring), for tests and diagnostics.
    pub fn cached_counts(&self) -> (u64, u64, u64) {
        self.inner.bodies.run_pending_tasks();
        self.inner.scoring.run_pending_tasks();
        (
            self.inner.meta.len() as u64,
            self.inner.bodies.entry_count(),
            self.inner.scoring.entry_count(),
        )
    }
}

/// Inserts unless present; returns the cached value (the existing one if any).
fn insert_meta(
    cache: &quick_cache::sync::Cache<PackageId, Arc<PublishedMeta>>,
    id: PackageId,
    meta: Arc<PublishedMeta>,
) -> Arc<PublishedMeta> {
    cache
        .get_or_insert_with(&id, || Ok::<_, std::convert::Infallible>(meta))
        .unwrap_or_else(|never| match never {})
}

/// Inserts unless present; returns the cached value (the existing one if any).
fn insert<K, V>(cache: &Weighted<K, V>, key: K, value: Arc<V>) -> Arc<V>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    cache.entry(key).or_insert(value).into_value()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_to_the_identity_body() {
        let data =
            br#"{"questions":[{"stem":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]}"#.repeat(50);
        let gz = gzip(&data).unwrap();
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, data);
        for quality in [DOWNLOAD_BROTLI_QUALITY, DELTA_BROTLI_QUALITY] {
            let br = brotli(&data, quality).unwrap();
            let mut decoded = Vec::new();
            brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
            assert_eq!(decoded, data);
            assert!(br.len() < data.len());
        }
        assert!(gz.len() < data.len());
    }
}

//! In-process caches of published packages. A published package never changes (the
//! database refuses updates), so what is derived from it — its validators, its
//! serialized body in each encoding, its scoring keys — is computed once per process and
//! kept, within size bounds (least recently used entries go first). Unpublished packages
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
//! (`single_flight`): the others wait for the first build, then read it here.
use std::{
    collections::HashMap,
    hash::Hash,
    io::Write,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::http::HeaderValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, Set};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{PackageScope, etag::Encoding, single_flight::Flights};
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
    pub questions: HashMap<Uuid, ScoringKey>,
}

/// What a revalidation needs of a published package.
#[derive(Debug)]
pub struct PublishedMeta {
    pub version_hash: String,
    /// `W/"<version_hash>"`, ready to send.
    pub etag: HeaderValue,
    /// `published_at` as an HTTP-date, ready to send (and compared with `If-Range`).
    pub last_modified: HeaderValue,
    pub published_at: DateTime<Utc>,
    pub scope: PackageScope,
    pub scope_key: String,
    pub version: i32,
}

impl PublishedMeta {
    pub fn new(
        version_hash: String,
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
}

/// Brotli quality of a full download: 9 compresses megabytes in about a second; 11 would
/// take several times that for a few percent fewer bytes.
const DOWNLOAD_BROTLI_QUALITY: u32 = 9;
/// Brotli quality of a delta: deltas are small (a few percent of a download), built once
/// per pair and fetched by every phone of the scope, so the slowest, smallest setting pays:
/// about 7% fewer bytes than quality 9 for about 0.3 s more CPU once per pair
/// (docs/benchmarks.md).
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
        })
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

/// What a delta request finds.
#[derive(Debug)]
pub enum DeltaLookup<T> {
    /// Either package is unknown or unpublished.
    NotFound,
    Found(T),
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
    /// Bytes of bodies (all encodings together).
    pub body_bytes: usize,
    pub body_entries: usize,
    pub meta_entries: usize,
    /// Scoring keys (questions) over all packages.
    pub scoring_questions: usize,
    pub scoring_entries: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            body_bytes: 256 * 1024 * 1024,
            body_entries: 1024,
            meta_entries: 100_000,
            scoring_questions: 2_000_000,
            scoring_entries: 4096,
        }
    }
}

pub struct PackageStore {
    meta: Bounded<Uuid, PublishedMeta>,
    bodies: Bounded<Uuid, PackageBodies>,
    scoring: Bounded<Uuid, PackageScoring>,
    deltas: Bounded<(Uuid, Uuid), DeltaBodies>,
    dcz: Bounded<(Uuid, Uuid), Bytes>,
    /// Dictionary digest → package id (a positive answer never changes: packages are
    /// immutable, so their download bytes are too).
    dictionaries: Bounded<[u8; 32], Uuid>,
    builds: Flights<BuildKey>,
    /// Builds started, by `PackageBuild` (also counted in `/metrics`, which is per process).
    built: [AtomicU64; 3],
}

/// What is being built, for `single_flight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum BuildKey {
    Bodies(Uuid),
    /// (package, held package).
    Delta(Uuid, Uuid),
    /// (package, dictionary package).
    Dcz(Uuid, Uuid),
}

impl Default for PackageStore {
    fn default() -> Self {
        PackageStore::new(StoreLimits::default())
    }
}

impl PackageStore {
    pub fn new(limits: StoreLimits) -> PackageStore {
        PackageStore {
            meta: Bounded::new(limits.meta_entries, limits.meta_entries),
            bodies: Bounded::new(limits.body_bytes, limits.body_entries),
            scoring: Bounded::new(limits.scoring_questions, limits.scoring_entries),
            deltas: Bounded::new(limits.body_bytes / 4, limits.body_entries * 4),
            dcz: Bounded::new(limits.body_bytes / 4, limits.body_entries * 4),
            dictionaries: Bounded::new(limits.meta_entries, limits.meta_entries),
            builds: Flights::default(),
            built: Default::default(),
        }
    }

    /// The validators of a published package (`None`: unknown or unpublished).
    pub async fn published_meta(
        &self,
        db: &DatabaseConnection,
        id: Uuid,
    ) -> AppResult<Option<Arc<PublishedMeta>>> {
        if let Some(meta) = self.meta.get(&id) {
            return Ok(Some(meta));
        }
        type Row = (
            String,
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
                Ok(Some(self.meta.insert(id, meta, 1)))
            }
            _ => Ok(None),
        }
    }

    /// The download bodies of a published package (`None`: unknown or unpublished).
    pub async fn published_bodies(
        &self,
        db: &DatabaseConnection,
        id: Uuid,
    ) -> AppResult<Option<Arc<PackageBodies>>> {
        if let Some(bodies) = self.bodies.get(&id) {
            return Ok(Some(bodies));
        }
        let _build = self.builds.enter(BuildKey::Bodies(id)).await;
        if let Some(bodies) = self.bodies.get(&id) {
            return Ok(Some(bodies));
        }
        let Some(package) = test_package::Entity::find_by_id(id)
            .filter(test_package::Column::IsPublished.eq(true))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        self.started(PackageBuild::Download);
        let bodies = tokio::task::spawn_blocking(move || PackageBodies::build(&package))
            .await
            .map_err(|e| AppError::internal(format!("building a package body: {e}")))??;
        let bodies = Arc::new(bodies);
        self.meta.insert(id, bodies.meta.clone(), 1);
        self.record_dictionary(db, bodies.sha256, id).await;
        let weight = bodies.weight();
        Ok(Some(self.bodies.insert(id, bodies, weight)))
    }

    /// Records the dictionary digest of a download (here and for every instance).
    async fn record_dictionary(&self, db: &DatabaseConnection, sha256: [u8; 32], id: Uuid) {
        self.dictionaries.insert(sha256, Arc::new(id), 1);
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
    ) -> AppResult<Option<Uuid>> {
        if let Some(id) = self.dictionaries.get(sha256) {
            return Ok(Some(*id));
        }
        let row = package_dictionary::Entity::find_by_id(hex::encode(sha256))
            .one(db)
            .await?;
        Ok(row.map(|r| *self.dictionaries.insert(*sha256, Arc::new(r.package_id), 1)))
    }

    /// The `dcz` body of package `id` with package `dictionary`'s download as the
    /// dictionary, computed once per pair.
    pub async fn dcz_body(
        &self,
        target: &Arc<PackageBodies>,
        id: Uuid,
        dictionary: &Arc<PackageBodies>,
        dictionary_id: Uuid,
    ) -> AppResult<Bytes> {
        if let Some(body) = self.dcz.get(&(id, dictionary_id)) {
            return Ok((*body).clone());
        }
        let _build = self.builds.enter(BuildKey::Dcz(id, dictionary_id)).await;
        if let Some(body) = self.dcz.get(&(id, dictionary_id)) {
            return Ok((*body).clone());
        }
        self.started(PackageBuild::Dcz);
        let (target, dictionary) = (target.clone(), dictionary.clone());
        let body = tokio::task::spawn_blocking(move || {
            super::dcz::encode(
                &dictionary.bodies.identity,
                &dictionary.sha256,
                &target.bodies.identity,
            )
        })
        .await
        .map_err(|e| AppError::internal(format!("dcz: {e}")))?
        .map_err(|e| AppError::internal(format!("dcz: {e}")))?;
        let body = Bytes::from(body);
        let weight = body.len() + 64;
        Ok((*self.dcz.insert((id, dictionary_id), Arc::new(body), weight)).clone())
    }

    /// The delta from `from` to `id`, both published, computed once per pair.
    /// `DELTA_SCOPE_MISMATCH` when they are of different scopes or scope data.
    pub async fn delta_bodies(
        &self,
        db: &DatabaseConnection,
        id: Uuid,
        from: Uuid,
    ) -> AppResult<DeltaLookup<Arc<DeltaBodies>>> {
        if let Some(bodies) = self.deltas.get(&(id, from)) {
            return Ok(DeltaLookup::Found(bodies));
        }
        let _build = self.builds.enter(BuildKey::Delta(id, from)).await;
        if let Some(bodies) = self.deltas.get(&(id, from)) {
            return Ok(DeltaLookup::Found(bodies));
        }
        let Some((to_meta, from_meta)) = self.delta_ends(db, id, from).await? else {
            return Ok(DeltaLookup::NotFound);
        };
        let mut json = super::load_questions_json(db, &[id, from]).await?;
        let to_json = json.remove(&id);
        // `from == id` (an empty delta): the map holds one entry.
        let from_json = if from == id {
            to_json.clone()
        } else {
            json.remove(&from)
        };
        let (Some(to_json), Some(from_json)) = (to_json, from_json) else {
            return Ok(DeltaLookup::NotFound);
        };
        self.started(PackageBuild::Delta);
        let built = tokio::task::spawn_blocking(move || -> AppResult<DeltaBodies> {
            let to = super::parse_snapshots(&to_json)?;
            let held = super::parse_snapshots(&from_json)?;
            let delta = super::delta::diff(&held, &to);
            let ends = super::delta::DeltaEnds {
                package_id: id,
                version: to_meta.version,
                version_hash: &to_meta.version_hash,
                question_count: i32::try_from(to.len())
                    .map_err(|_| AppError::internal("question count"))?,
                from_package_id: from,
                from_version: from_meta.version,
                from_version_hash: &from_meta.version_hash,
            };
            let identity = super::delta::delta_body_bytes(ends, &delta)
                .map_err(|e| AppError::internal(format!("delta body: {e}")))?;
            Ok(DeltaBodies {
                etag: delta_etag(&from_meta.version_hash, &to_meta.version_hash)?,
                last_modified: http_date(to_meta.published_at.max(from_meta.published_at)),
                bodies: Encoded::new(identity, DELTA_BROTLI_QUALITY)?,
            })
        })
        .await
        .map_err(|e| AppError::internal(format!("building a delta: {e}")))??;
        let weight = built.bodies.weight();
        Ok(DeltaLookup::Found(self.deltas.insert(
            (id, from),
            Arc::new(built),
            weight,
        )))
    }

    /// Both ends of a delta, checked: `None` when either is unknown or unpublished,
    /// `DELTA_SCOPE_MISMATCH` when they are of different lines of versions.
    pub async fn delta_ends(
        &self,
        db: &DatabaseConnection,
        id: Uuid,
        from: Uuid,
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

    /// Scoring keys of the given packages that exist and are published (others are absent).
    pub async fn scoring_for(
        &self,
        db: &DatabaseConnection,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, Arc<PackageScoring>>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &id in ids {
            if found.contains_key(&id) || missing.contains(&id) {
                continue;
            }
            match self.scoring.get(&id) {
                Some(scoring) => {
                    found.insert(id, scoring);
                }
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let rows: Vec<(Uuid, String)> = test_package::Entity::find()
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
            let weight = scoring.questions.len().max(1);
            found.insert(id, self.scoring.insert(id, Arc::new(scoring), weight));
        }
        Ok(found)
    }

    fn started(&self, kind: PackageBuild) {
        self.built[kind as usize].fetch_add(1, Ordering::Relaxed);
        metrics::package_build(kind);
    }

    /// Builds this store has started of `kind`, for tests and diagnostics.
    pub fn build_count(&self, kind: PackageBuild) -> u64 {
        self.built[kind as usize].load(Ordering::Relaxed)
    }

    /// Entries currently cached (meta, bodies, scoring), for tests and diagnostics.
    pub fn cached_counts(&self) -> (usize, usize, usize) {
        (self.meta.len(), self.bodies.len(), self.scoring.len())
    }
}

/// A map bounded by total weight and entry count; when full, the least recently used
/// entries are evicted. Reads take a shared lock and bump an atomic clock.
struct Bounded<K, V> {
    inner: RwLock<BoundedInner<K, V>>,
    clock: AtomicU64,
    max_weight: usize,
    max_entries: usize,
}

struct BoundedInner<K, V> {
    map: HashMap<K, Slot<V>>,
    weight: usize,
}

struct Slot<V> {
    value: Arc<V>,
    weight: usize,
    used: AtomicU64,
}

impl<K: Copy + Eq + Hash, V> Bounded<K, V> {
    fn new(max_weight: usize, max_entries: usize) -> Self {
        Bounded {
            inner: RwLock::new(BoundedInner {
                map: HashMap::new(),
                weight: 0,
            }),
            clock: AtomicU64::new(0),
            max_weight,
            max_entries: max_entries.max(1),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn get(&self, id: &K) -> Option<Arc<V>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.map.get(id).map(|slot| {
            slot.used.store(self.tick(), Ordering::Relaxed);
            slot.value.clone()
        })
    }

    fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Inserts unless present; returns the cached value (the existing one if any). A value
    /// heavier than the whole budget is returned without being cached.
    fn insert(&self, id: K, value: Arc<V>, weight: usize) -> Arc<V> {
        if weight > self.max_weight {
            return value;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = inner.map.get(&id) {
            existing.used.store(self.tick(), Ordering::Relaxed);
            return existing.value.clone();
        }
        while !inner.map.is_empty()
            && (inner.weight + weight > self.max_weight || inner.map.len() >= self.max_entries)
        {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, slot)| slot.used.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match oldest.and_then(|id| inner.map.remove(&id)) {
                Some(slot) => inner.weight -= slot.weight,
                None => break,
            }
        }
        inner.weight += weight;
        inner.map.insert(
            id,
            Slot {
                value: value.clone(),
                weight,
                used: AtomicU64::new(self.tick()),
            },
        );
        value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn bounded_evicts_least_recently_used_by_weight() {
        let cache: Bounded<Uuid, u32> = Bounded::new(10, 100);
        cache.insert(id(1), Arc::new(1), 4);
        cache.insert(id(2), Arc::new(2), 4);
        assert_eq!(cache.get(&id(1)).as_deref(), Some(&1)); // 1 is now newer than 2
        cache.insert(id(3), Arc::new(3), 4); // over 10: evicts 2
        assert!(cache.get(&id(2)).is_none());
        assert!(cache.get(&id(1)).is_some());
        assert!(cache.get(&id(3)).is_some());
        assert_eq!(cache.len(), 2);
        // Heavier than the budget: returned, not cached.
        assert_eq!(*cache.insert(id(4), Arc::new(4), 11), 4);
        assert!(cache.get(&id(4)).is_none());
        // Present: the cached value wins.
        assert_eq!(*cache.insert(id(1), Arc::new(99), 1), 1);
    }

    #[test]
    fn bounded_evicts_by_count() {
        let cache: Bounded<Uuid, u32> = Bounded::new(1000, 3);
        for n in 0..10 {
            cache.insert(id(n), Arc::new(n as u32), 1);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&id(9)).is_some());
        assert!(cache.get(&id(0)).is_none());
    }

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

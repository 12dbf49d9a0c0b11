//! In-process caches of published packages. A published package never changes (the
//! database refuses updates), so what is derived from it — its validators, its
//! serialized body in each encoding, its scoring keys — is computed once per process and
//! kept, within size bounds (least recently used entries go first). Unpublished packages
//! are never cached: they may be published (by another instance) at any moment.
//!
//! - `published_meta`: id → ETag, so a revalidation that ends in `304` reads nothing once
//!   warm (and only three small columns when cold);
//! - `published_bodies`: id → the download body as identity, gzip and br bytes;
//! - `scoring_for`: id → scoring keys of the snapshots, for sync.
use std::{
    collections::HashMap,
    io::Write,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::http::HeaderValue;
use bytes::Bytes;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::etag::Encoding;
use crate::error::{AppError, AppResult};
use entity::test_package;

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
}

impl PublishedMeta {
    pub fn new(version_hash: String) -> AppResult<PublishedMeta> {
        let etag = HeaderValue::try_from(format!("W/\"{version_hash}\""))
            .map_err(|_| AppError::internal("version hash is not a valid header value"))?;
        Ok(PublishedMeta { version_hash, etag })
    }
}

/// The download body of a published package in every encoding served.
#[derive(Debug)]
pub struct PackageBodies {
    pub meta: Arc<PublishedMeta>,
    pub identity: Bytes,
    pub gzip: Bytes,
    pub br: Bytes,
}

impl PackageBodies {
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

    /// Serializes and compresses (CPU-bound: call on a blocking thread).
    pub fn build(package: &test_package::Model) -> AppResult<PackageBodies> {
        let meta = Arc::new(PublishedMeta::new(package.version_hash.clone())?);
        let identity = super::download_body(package)?;
        let gzip = gzip(&identity)?;
        let br = brotli(&identity)?;
        Ok(PackageBodies {
            meta,
            identity: Bytes::from(identity),
            gzip: Bytes::from(gzip),
            br: Bytes::from(br),
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

fn brotli(data: &[u8]) -> AppResult<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 5);
    let params = brotli::enc::BrotliEncoderParams {
        quality: 9,
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
    meta: Bounded<PublishedMeta>,
    bodies: Bounded<PackageBodies>,
    scoring: Bounded<PackageScoring>,
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
        let row: Option<(String, bool)> = test_package::Entity::find_by_id(id)
            .select_only()
            .column(test_package::Column::VersionHash)
            .column(test_package::Column::IsPublished)
            .into_tuple()
            .one(db)
            .await?;
        match row {
            Some((version_hash, true)) => {
                let meta = Arc::new(PublishedMeta::new(version_hash)?);
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
        let Some(package) = test_package::Entity::find_by_id(id)
            .filter(test_package::Column::IsPublished.eq(true))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        let bodies = tokio::task::spawn_blocking(move || PackageBodies::build(&package))
            .await
            .map_err(|e| AppError::internal(format!("building a package body: {e}")))??;
        let bodies = Arc::new(bodies);
        self.meta.insert(id, bodies.meta.clone(), 1);
        let weight = bodies.weight();
        Ok(Some(self.bodies.insert(id, bodies, weight)))
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

    /// Entries currently cached (meta, bodies, scoring), for tests and diagnostics.
    pub fn cached_counts(&self) -> (usize, usize, usize) {
        (self.meta.len(), self.bodies.len(), self.scoring.len())
    }
}

/// A map bounded by total weight and entry count; when full, the least recently used
/// entries are evicted. Reads take a shared lock and bump an atomic clock.
struct Bounded<V> {
    inner: RwLock<BoundedInner<V>>,
    clock: AtomicU64,
    max_weight: usize,
    max_entries: usize,
}

struct BoundedInner<V> {
    map: HashMap<Uuid, Slot<V>>,
    weight: usize,
}

struct Slot<V> {
    value: Arc<V>,
    weight: usize,
    used: AtomicU64,
}

impl<V> Bounded<V> {
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

    fn get(&self, id: &Uuid) -> Option<Arc<V>> {
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
    fn insert(&self, id: Uuid, value: Arc<V>, weight: usize) -> Arc<V> {
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
        let cache: Bounded<u32> = Bounded::new(10, 100);
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
        let cache: Bounded<u32> = Bounded::new(1000, 3);
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
        let br = brotli(&data).unwrap();
        let mut decoded = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
        assert_eq!(decoded, data);
        assert!(gz.len() < data.len() && br.len() < data.len());
    }
}

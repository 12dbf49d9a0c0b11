//! What the object route keeps in memory so that its steady state asks the database
//! nothing: each object's metadata and bytes (immutable: the hash names them), and which
//! published packages refer to an object, and the layout of each bundle asked for (a
//! published package's objects never change, so neither does its bundle). Only what does
//! not depend on the caller is kept; the caller's decision is taken on every request by
//! `may_read_package`.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::sync::Cache;

use chrono::{DateTime, Utc};
use entity::PackageId;

use super::{MediaMeta, MediaSha256, bundle::Layout};
use crate::packages::PackageSummary;

/// The default bound of the bytes cache (`MediaCache::new`): a few hundred typical images,
/// small beside the server's memory budget in docs/operations.md.
pub const DEFAULT_DATA_BYTES: u64 = 64 * 1024 * 1024;

/// An object larger than this share of the bytes cache is served from the store each time,
/// so one radiograph cannot push out everything else.
const LARGEST_SHARE: u64 = 8;

/// How many objects' metadata and referring packages are kept (entries are small).
const ENTRIES: usize = 100_000;

/// The bound of the bundle layouts kept (their central directories, about a hundred bytes an
/// object): every bundle a busy deployment serves, many times over.
const BUNDLE_LAYOUT_BYTES: u64 = 16 * 1024 * 1024;

/// A bundle as the route serves it: where each byte comes from, and the package's
/// publication time (its `Last-Modified`).
pub struct Bundle {
    pub layout: Layout,
    pub published_at: Option<DateTime<Utc>>,
}

/// A package's bundle, or the part of it that a held package (`?from=`) lacks.
pub type BundleKey = (PackageId, Option<PackageId>);

/// How long the referring packages of an object are trusted. A package published since is
/// seen at once (a negative answer always asks the database again), and a withdrawn one is
/// refused by `may_read_package` itself; this only bounds how long a list is kept unread.
pub const REFERRING_TTL: Duration = Duration::from_secs(30);

/// Metadata and referring packages are read on every request (`quick_cache`: a cheap
/// read); the bytes are weighed, which `moka` does.
pub struct MediaCache {
    meta: quick_cache::sync::Cache<MediaSha256, MediaMeta>,
    data: Cache<MediaSha256, Bytes>,
    /// With when they were read: kept for [`REFERRING_TTL`].
    referring: quick_cache::sync::Cache<MediaSha256, (Instant, Arc<[PackageSummary]>)>,
    bundles: Cache<BundleKey, Arc<Bundle>>,
    data_bytes: u64,
}

impl Default for MediaCache {
    fn default() -> Self {
        MediaCache::new(DEFAULT_DATA_BYTES)
    }
}

impl MediaCache {
    /// A cache holding at most `data_bytes` of object bytes (0: bytes are never kept).
    pub fn new(data_bytes: u64) -> MediaCache {
        MediaCache {
            meta: quick_cache::sync::Cache::new(ENTRIES),
            data: Cache::builder()
                .max_capacity(data_bytes)
                .weigher(|_, data: &Bytes| u32::try_from(data.len()).unwrap_or(u32::MAX))
                .build(),
            referring: quick_cache::sync::Cache::new(ENTRIES),
            bundles: Cache::builder()
                .max_capacity(BUNDLE_LAYOUT_BYTES)
                .weigher(|_, bundle: &Arc<Bundle>| {
                    u32::try_from(bundle.layout.weight()).unwrap_or(u32::MAX)
                })
                .build(),
            data_bytes,
        }
    }

    pub fn bundle(&self, key: &BundleKey) -> Option<Arc<Bundle>> {
        self.bundles.get(key)
    }

    pub fn put_bundle(&self, key: BundleKey, bundle: Arc<Bundle>) {
        self.bundles.insert(key, bundle);
    }

    pub fn meta(&self, sha: &MediaSha256) -> Option<MediaMeta> {
        self.meta.get(sha)
    }

    pub fn put_meta(&self, meta: MediaMeta) {
        self.meta.insert(meta.sha256, meta);
    }

    pub fn data(&self, sha: &MediaSha256) -> Option<Bytes> {
        self.data.get(sha)
    }

    pub fn put_data(&self, sha: MediaSha256, data: Bytes) {
        if (data.len() as u64).saturating_mul(LARGEST_SHARE) <= self.data_bytes {
            self.data.insert(sha, data);
        }
    }

    pub fn referring(&self, sha: &MediaSha256) -> Option<Arc<[PackageSummary]>> {
        self.referring
            .get(sha)
            .filter(|(read, _)| read.elapsed() < REFERRING_TTL)
            .map(|(_, packages)| packages)
    }

    pub fn put_referring(&self, sha: MediaSha256, packages: Arc<[PackageSummary]>) {
        if packages.is_empty() {
            self.referring.remove(&sha);
        } else {
            self.referring.insert(sha, (Instant::now(), packages));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_bounded_and_large_objects_skipped() {
        let cache = MediaCache::new(80);
        let small = MediaSha256::of(b"small");
        cache.put_data(small, Bytes::from_static(&[1; 10]));
        assert_eq!(cache.data(&small).unwrap().len(), 10);
        let large = MediaSha256::of(b"large");
        cache.put_data(large, Bytes::from(vec![2; 11]));
        assert!(cache.data(&large).is_none());
    }
}

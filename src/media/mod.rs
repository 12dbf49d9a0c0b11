//! Media objects (docs/api.md §4.1): content-addressed images and sounds that questions
//! refer to. This module holds the rules (what may be stored, who may read what) and the
//! storage; `http::media` only parses and renders, and `bundle` lays out the ZIP of a
//! package's objects.
pub mod bundle;
pub mod cache;
pub mod draw;
pub mod import;
pub mod sniff;

use std::{collections::HashMap, fmt, sync::Arc};

use bytes::Bytes;

use chrono::{SubsecRound, Utc};
use entity::{MediaHash, PackageId, QuestionId};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    QueryTrait, Set, sea_query::OnConflict,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

use crate::{
    access::{self, AccessError},
    app::AppState,
    auth::AuthUser,
    error::{AppError, AppResult, ErrorCode},
    packages::{self, PackageSummary, SnapshotMedia},
};
use entity::{media_object, package_media, question, question_media, test_package};

pub use entity::{MediaContentType, MediaPlacement};
pub use sniff::{Sniffed, sniff};

/// The default of `EXAMSYNC_MEDIA_MAX_BYTES`: large enough for a radiograph, small enough
/// that one upload cannot take a phone's whole download budget.
pub const DEFAULT_MAX_BYTES: usize = 10 * 1024 * 1024;

/// How many media references one question may carry.
pub const MAX_REFERENCES: usize = 16;

/// The identity of a media object: the SHA-256 of its bytes. Parsed once at the edge (path,
/// input), so everything past it holds a well-formed hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaSha256([u8; 32]);

impl MediaSha256 {
    /// Exactly 64 lowercase hex digits (the form every URL and snapshot uses, so one object
    /// has one name).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(MediaSha256(digest))
    }

    /// The `400` a malformed hash gets, naming the field.
    pub fn parse_field(text: &str, field: &str) -> AppResult<Self> {
        Self::parse(text).ok_or_else(|| {
            AppError::bad_request_with(
                ErrorCode::ValidationError,
                format!("{field} must be 64 lowercase hex digits (a SHA-256)"),
                json!({"field": field, "value": text.chars().take(80).collect::<String>()}),
            )
        })
    }

    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        MediaSha256(sha2::Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The strong entity tag of the object, `"<64 hex digits>"`, formatted on the stack.
    pub fn etag(&self) -> axum::http::HeaderValue {
        let mut text = [b'"'; 66];
        // 64 digits for 32 bytes: the slice has the exact length, so this cannot fail.
        let _ = hex::encode_to_slice(self.0, &mut text[1..65]);
        axum::http::HeaderValue::from_bytes(&text)
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("\"\""))
    }
}

impl fmt::Display for MediaSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for MediaSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaSha256({})", self.hex())
    }
}

impl Serialize for MediaSha256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for MediaSha256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MediaSha256::parse(&text)
            .ok_or_else(|| serde::de::Error::custom("not 64 lowercase hex digits"))
    }
}

/// The stored column's type and this one hold the same 32 bytes: both are valid by
/// construction, so converting either way cannot fail.
impl From<MediaSha256> for MediaHash {
    fn from(sha: MediaSha256) -> Self {
        MediaHash::from_digest(sha.0)
    }
}

impl From<&MediaHash> for MediaSha256 {
    fn from(hash: &MediaHash) -> Self {
        MediaSha256(hash.to_bytes())
    }
}

/// What is known of a stored object without its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaMeta {
    pub sha256: MediaSha256,
    pub content_type: MediaContentType,
    pub bytes: u64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub crc32: u32,
}

impl MediaMeta {
    pub fn body(&self) -> MediaObjectBody {
        MediaObjectBody {
            sha256: self.sha256,
            content_type: self.content_type,
            bytes: self.bytes as i64,
            width: self.width,
            height: self.height,
        }
    }

    /// The REST path of the object.
    pub fn url(&self) -> String {
        object_path(&self.sha256)
    }
}

pub fn object_path(sha256: &MediaSha256) -> String {
    format!("/api/v1/media/{sha256}")
}

/// The body of `PUT /api/v1/media/{sha256}` (and a line of `examsync media import`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MediaObjectBody {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub sha256: MediaSha256,
    pub content_type: MediaContentType,
    pub bytes: i64,
    /// Images only.
    pub width: Option<i32>,
    pub height: Option<i32>,
}

/// A stored object as the rows read it: metadata only, the bytes are never selected here.
type MetaRow = (
    MediaHash,
    MediaContentType,
    i64,
    Option<i32>,
    Option<i32>,
    i64,
);

fn meta_of(row: MetaRow) -> AppResult<MediaMeta> {
    let (sha, content_type, bytes, width, height, crc32) = row;
    Ok(MediaMeta {
        sha256: MediaSha256::from(&sha),
        content_type,
        bytes: u64::try_from(bytes).map_err(|_| AppError::internal("negative media size"))?,
        width,
        height,
        crc32: u32::try_from(crc32).map_err(|_| AppError::internal("stored CRC-32 overflows"))?,
    })
}

/// Metadata of the stored objects among `shas` (absent ones are simply missing).
pub async fn load_meta(
    db: &impl ConnectionTrait,
    shas: &[MediaSha256],
) -> AppResult<HashMap<MediaSha256, MediaMeta>> {
    let mut found = HashMap::with_capacity(shas.len());
    for chunk in shas.chunks(500) {
        let rows: Vec<MetaRow> = media_object::Entity::find()
            .select_only()
            .column(media_object::Column::Sha256)
            .column(media_object::Column::ContentType)
            .column(media_object::Column::Bytes)
            .column(media_object::Column::Width)
            .column(media_object::Column::Height)
            .column(media_object::Column::Crc32)
            .filter(
                media_object::Column::Sha256.is_in(chunk.iter().map(|&sha| MediaHash::from(sha))),
            )
            .into_tuple()
            .all(db)
            .await?;
        for row in rows {
            let meta = meta_of(row)?;
            found.insert(meta.sha256, meta);
        }
    }
    Ok(found)
}

/// The bytes of one stored object.
pub async fn load_data(db: &impl ConnectionTrait, sha: &MediaSha256) -> AppResult<Option<Vec<u8>>> {
    Ok(media_object::Entity::find_by_id(MediaHash::from(*sha))
        .select_only()
        .column(media_object::Column::Data)
        .into_tuple::<Vec<u8>>()
        .one(db)
        .await?)
}

/// Checks `data` against every upload rule without storing it: size, then the hash the
/// uploader named, then the type sniffed from the bytes.
pub fn check_upload(
    expected: Option<MediaSha256>,
    data: &[u8],
    max_bytes: usize,
) -> AppResult<(MediaSha256, Sniffed)> {
    if data.len() > max_bytes {
        return Err(AppError::PayloadTooLarge { limit: max_bytes });
    }
    let actual = MediaSha256::of(data);
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(AppError::bad_request_with(
            ErrorCode::MediaHashMismatch,
            format!("the bytes hash to {actual}, not {expected}; nothing was stored"),
            json!({"expected": expected, "actual": actual}),
        ));
    }
    let sniffed = sniff(data).map_err(|e| AppError::MediaTypeNotAllowed(e.to_string()))?;
    Ok((actual, sniffed))
}

/// Stores an object (idempotent). Returns its metadata and whether it is new.
pub async fn store_object(
    db: &DatabaseConnection,
    expected: Option<MediaSha256>,
    data: Vec<u8>,
    max_bytes: usize,
) -> AppResult<(MediaMeta, bool)> {
    let (sha, sniffed) = check_upload(expected, &data, max_bytes)?;
    // Present already: the same bytes (same hash), so nothing to write.
    if let Some(meta) = load_meta(db, &[sha]).await?.remove(&sha) {
        return Ok((meta, false));
    }
    let meta = MediaMeta {
        sha256: sha,
        content_type: sniffed.content_type,
        bytes: data.len() as u64,
        width: sniffed.width,
        height: sniffed.height,
        crc32: crc32fast::hash(&data),
    };
    let row = media_object::ActiveModel {
        sha256: Set(MediaHash::from(sha)),
        content_type: Set(meta.content_type),
        bytes: Set(meta.bytes as i64),
        width: Set(meta.width),
        height: Set(meta.height),
        crc32: Set(i64::from(meta.crc32)),
        data: Set(data),
        created_at: Set(Utc::now().trunc_subsecs(6)),
    };
    // Two uploaders of the same bytes race harmlessly: the loser writes nothing.
    let written = media_object::Entity::insert(row)
        .on_conflict(
            OnConflict::column(media_object::Column::Sha256)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok((meta, written > 0))
}

/// The media of the questions going into a package: each question's references, the
/// distinct objects, and their totals.
#[derive(Debug, Default)]
pub struct PackageMediaSet {
    pub references: HashMap<QuestionId, Vec<SnapshotMedia>>,
    /// Distinct, sorted by hash.
    pub objects: Vec<MediaMeta>,
}

impl PackageMediaSet {
    pub fn count(&self) -> i32 {
        // Bounded by the questions' references (16 a question).
        i32::try_from(self.objects.len()).unwrap_or(i32::MAX)
    }

    pub fn total_bytes(&self) -> i64 {
        self.objects.iter().map(|m| m.bytes as i64).sum()
    }
}

/// Reads the media references of `questions` (a package being built).
pub async fn question_media(
    db: &impl ConnectionTrait,
    questions: &[question::Model],
) -> AppResult<PackageMediaSet> {
    let mut rows = Vec::new();
    let ids: Vec<QuestionId> = questions.iter().map(|q| q.id).collect();
    for chunk in ids.chunks(500) {
        rows.extend(
            question_media::Entity::find()
                .filter(question_media::Column::QuestionId.is_in(chunk.iter().copied()))
                .all(db)
                .await?,
        );
    }
    if rows.is_empty() {
        return Ok(PackageMediaSet::default());
    }
    rows.sort_by_key(|r| (r.question_id, r.position));
    let mut shas: Vec<MediaSha256> = rows.iter().map(|r| MediaSha256::from(&r.sha256)).collect();
    shas.sort();
    shas.dedup();
    let meta = load_meta(db, &shas).await?;
    let mut set = PackageMediaSet::default();
    for row in rows {
        let found = meta.get(&MediaSha256::from(&row.sha256));
        let Some(found) = found else {
            return Err(AppError::internal(format!(
                "question {} refers to missing media {}",
                row.question_id, row.sha256
            )));
        };
        set.references
            .entry(row.question_id)
            .or_default()
            .push(SnapshotMedia::new(found, row.placement, row.alt));
    }
    set.objects = shas
        .iter()
        .filter_map(|sha| meta.get(sha).copied())
        .collect();
    Ok(set)
}

/// Writes the objects a new package refers to (inside its build transaction).
pub async fn record_package_objects(
    db: &impl ConnectionTrait,
    package_id: PackageId,
    objects: &[MediaMeta],
) -> AppResult<()> {
    for chunk in objects.chunks(500) {
        package_media::Entity::insert_many(chunk.iter().map(|m| package_media::ActiveModel {
            package_id: Set(package_id),
            sha256: Set(MediaHash::from(m.sha256)),
        }))
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// Whether `caller` may read package `package`: published, not withdrawn, and covered by the
/// caller's grants (docs/api.md §3.1). The object route asks it for every package that refers
/// to an object; a refusal there is the object's `404`, never a `403`, so that a hash is never
/// shown to exist.
pub async fn may_read_package(
    state: &AppState,
    caller: &AuthUser,
    package: &PackageSummary,
) -> AppResult<bool> {
    match access::may_read_package(state, caller, package.id).await {
        Ok(()) => Ok(true),
        Err(AccessError::NotFound(_) | AccessError::Withdrawn(_) | AccessError::Denied(_)) => {
            Ok(false)
        }
        Err(AccessError::ScopeMismatch(e) | AccessError::Failed(e)) => Err(e),
    }
}

/// The object `sha`, if `caller` may read it: an admin any stored object; anyone else one
/// that some published package they may read refers to. `None` is a `404` (never a `403`:
/// a hash the caller may not read is not shown to exist).
///
/// The metadata and the referring packages come from `state.media` when it holds them; the
/// decision for this caller is taken anew each time by [`may_read_package`].
pub async fn readable_by(
    state: &AppState,
    caller: &AuthUser,
    sha: &MediaSha256,
) -> AppResult<Option<MediaMeta>> {
    let Some(meta) = object_meta(state, sha).await? else {
        return Ok(None);
    };
    if caller.is_admin() {
        return Ok(Some(meta));
    }
    if let Some(referring) = state.media.referring(sha)
        && may_read_any(state, caller, &referring).await?
    {
        return Ok(Some(meta));
    }
    // Not known yet, or the packages known grant nothing to this caller: one published
    // since may, so the database is asked again.
    let referring: Arc<[PackageSummary]> = referring_packages(&state.db, sha).await?.into();
    state.media.put_referring(*sha, referring.clone());
    Ok(may_read_any(state, caller, &referring)
        .await?
        .then_some(meta))
}

/// [`readable_by`] when everything it rests on is in memory: the object's metadata, the
/// packages referring to it, and a remembered decision that `caller` may read one of them.
/// `None` means "not known without asking", never "refused".
pub fn readable_from_memory(
    state: &AppState,
    caller: &AuthUser,
    sha: &MediaSha256,
) -> Option<MediaMeta> {
    let meta = state.media.meta(sha)?;
    if caller.is_admin() {
        return Some(meta);
    }
    state
        .media
        .referring(sha)?
        .iter()
        .any(|package| access::may_read_package_from_memory(state, caller, package.id))
        .then_some(meta)
}

async fn may_read_any(
    state: &AppState,
    caller: &AuthUser,
    packages: &[PackageSummary],
) -> AppResult<bool> {
    for package in packages {
        if may_read_package(state, caller, package).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The metadata of a stored object, from memory when it is there.
async fn object_meta(state: &AppState, sha: &MediaSha256) -> AppResult<Option<MediaMeta>> {
    if let Some(meta) = state.media.meta(sha) {
        return Ok(Some(meta));
    }
    let meta = load_meta(&state.db, &[*sha]).await?.remove(sha);
    if let Some(meta) = meta {
        state.media.put_meta(meta);
    }
    Ok(meta)
}

/// The bytes of a stored object, from memory when they are there (and kept there when the
/// cache's bound allows).
pub async fn object_data(state: &AppState, sha: &MediaSha256) -> AppResult<Option<Bytes>> {
    if let Some(data) = state.media.data(sha) {
        return Ok(Some(data));
    }
    let Some(data) = load_data(&state.db, sha).await? else {
        return Ok(None);
    };
    let data = Bytes::from(data);
    state.media.put_data(*sha, data.clone());
    Ok(Some(data))
}

/// The published packages that refer to `sha` (one query).
async fn referring_packages(
    db: &DatabaseConnection,
    sha: &MediaSha256,
) -> AppResult<Vec<PackageSummary>> {
    Ok(test_package::Entity::find()
        .filter(
            test_package::Column::Id.in_subquery(
                package_media::Entity::find()
                    .select_only()
                    .column(package_media::Column::PackageId)
                    .filter(package_media::Column::Sha256.eq(MediaHash::from(*sha)))
                    .into_query(),
            ),
        )
        .filter(test_package::Column::IsPublished.eq(true))
        .into_partial_model::<PackageSummary>()
        .all(db)
        .await?)
}

/// The distinct objects a package refers to, sorted by hash.
pub async fn package_objects(
    db: &impl ConnectionTrait,
    package_id: PackageId,
) -> AppResult<Vec<MediaSha256>> {
    let rows: Vec<MediaHash> = package_media::Entity::find()
        .select_only()
        .column(package_media::Column::Sha256)
        .filter(package_media::Column::PackageId.eq(package_id))
        .into_tuple()
        .all(db)
        .await?;
    let mut shas: Vec<MediaSha256> = rows.iter().map(MediaSha256::from).collect();
    shas.sort();
    shas.dedup();
    Ok(shas)
}

/// The bundle of `package_id` (with `from`: of the objects the held package lacks), if
/// `caller` may read it. The access rules answer first, on every request, in the contract's
/// order: 404, 410, 409 (with `from`), 403. The layout itself comes from memory once built:
/// a published package's objects never change. `None`: no such published package.
pub async fn bundle(
    state: &AppState,
    caller: &AuthUser,
    package_id: PackageId,
    from: Option<PackageId>,
) -> AppResult<Option<Arc<cache::Bundle>>> {
    match from {
        Some(from) => access::may_read_delta(state, caller, package_id, from).await?,
        None => access::may_read_package(state, caller, package_id).await?,
    }
    let key = (package_id, from);
    if let Some(bundle) = state.media.bundle(&key) {
        return Ok(Some(bundle));
    }
    let Some(package) = packages::find_summary(&state.db, package_id)
        .await?
        .filter(|p| p.is_published)
    else {
        return Ok(None);
    };
    let mut shas = package_objects(&state.db, package_id).await?;
    if let Some(from) = from {
        let held_shas = package_objects(&state.db, from).await?;
        shas.retain(|sha| held_shas.binary_search(sha).is_err());
    }
    let meta = load_meta(&state.db, &shas).await?;
    let objects = shas
        .iter()
        .map(|sha| {
            meta.get(sha)
                .copied()
                .ok_or_else(|| AppError::internal(format!("package refers to missing {sha}")))
        })
        .collect::<AppResult<Vec<_>>>()?;
    let layout = bundle::Layout::new(objects).map_err(|e| AppError::internal(e.to_string()))?;
    let bundle = Arc::new(cache::Bundle {
        layout,
        published_at: package.published_at,
    });
    state.media.put_bundle(key, bundle.clone());
    Ok(Some(bundle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_only_in_canonical_form() {
        let hex = MediaSha256::of(b"x").hex();
        assert_eq!(MediaSha256::parse(&hex).unwrap().hex(), hex);
        assert!(MediaSha256::parse(&hex.to_uppercase()).is_none());
        assert!(MediaSha256::parse(&hex[1..]).is_none());
        assert!(MediaSha256::parse(&format!("{}g", &hex[1..])).is_none());
        assert!(MediaSha256::parse("").is_none());
        // Non-ASCII of the right byte length is refused, not sliced.
        assert!(MediaSha256::parse(&"é".repeat(32)).is_none());
    }

    #[test]
    fn upload_rules_apply_in_order() {
        let png = sniff::tests::tiny_png(3, 2);
        let (sha, sniffed) = check_upload(Some(MediaSha256::of(&png)), &png, 1 << 20).unwrap();
        assert_eq!(sha, MediaSha256::of(&png));
        assert_eq!((sniffed.width, sniffed.height), (Some(3), Some(2)));
        let too_big = check_upload(None, &png, png.len() - 1).unwrap_err();
        assert_eq!(too_big.rest_code(), ErrorCode::PayloadTooLarge);
        let mismatch = check_upload(Some(MediaSha256::of(b"other")), &png, 1 << 20).unwrap_err();
        assert_eq!(mismatch.rest_code(), ErrorCode::MediaHashMismatch);
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        let refused = check_upload(None, svg, 1 << 20).unwrap_err();
        assert_eq!(refused.rest_code(), ErrorCode::MediaTypeNotAllowed);
    }
}

//! The REST wire types of test packages (docs/api.md section 5) and the conversions that
//! build them from [`PackageSummary`]. One type per wire shape; their names are the OpenAPI
//! schema names.
//!
//! The download body is not serialized from [`PackageDownload`]: the package store caches
//! the bytes [`download_body`](crate::packages::download_body) splices together from the
//! stored canonical questions. A unit test below checks that those bytes are exactly this
//! shape.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::packages::{PackageScope, PackageSummary, Snapshot};

/// The REST path of the download of package `id`.
pub fn download_path(id: Uuid) -> String {
    format!("/api/v1/tests/packages/{id}")
}

/// The REST path of the media bundle of package `id`.
pub fn media_bundle_path(id: Uuid) -> String {
    format!("{}/media", download_path(id))
}

/// REST `scope_data`: all three keys, `null` where absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestScopeData {
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
}

impl From<&PackageSummary> for RestScopeData {
    fn from(summary: &PackageSummary) -> Self {
        RestScopeData {
            year_id: summary.year_id,
            block_id: summary.block_id,
            theme_id: summary.theme_id,
        }
    }
}

/// One item of `GET /api/v1/tests/packages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageListItem {
    pub package_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub scope_data: RestScopeData,
    pub version: i32,
    pub version_hash: String,
    pub question_count: i32,
    /// Distinct media objects the package refers to (what its bundle holds), `0` when none.
    pub media_count: i32,
    /// Their total size in bytes, so a phone can decide before fetching (Wi-Fi only, space).
    pub media_bytes: i64,
    pub published_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<&PackageSummary> for PackageListItem {
    fn from(summary: &PackageSummary) -> Self {
        PackageListItem {
            package_id: summary.id.into(),
            name: summary.name.clone(),
            description: summary.description.clone(),
            scope: summary.scope,
            scope_data: RestScopeData::from(summary),
            version: summary.version,
            version_hash: summary.version_hash.to_string(),
            question_count: summary.question_count,
            media_count: summary.media_count,
            media_bytes: summary.media_bytes,
            published_at: summary.published_at,
            updated_at: summary.updated_at,
        }
    }
}

/// The body of `GET /api/v1/tests/packages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageList {
    pub items: Vec<PackageListItem>,
}

/// The body of `GET /api/v1/tests/packages/{package_id}`. The server splices the stored
/// canonical `questions` into precomputed bytes (`download_body`) instead of serializing
/// this type; a unit test checks that those bytes parse as exactly this shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageDownload {
    pub package_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub scope_data: RestScopeData,
    pub version: i32,
    pub version_hash: String,
    /// Ordered by `question_id`; RFC 8785 form, the bytes `version_hash` is taken over.
    pub questions: Vec<Snapshot>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::SubsecRound;
    use serde_json::{Value, json};

    use super::*;
    use crate::packages::{canonical_questions, download_body};
    use entity::test_package;

    /// The spliced bytes are exactly the documented wire type, field for field.
    #[test]
    fn download_body_is_the_package_download_shape() {
        let at = Utc::now().trunc_subsecs(6);
        let snapshot = Snapshot {
            question_id: Uuid::from_u128(7).into(),
            stem: "Stem “q”".into(),
            option_a: Some("a".into()),
            option_b: Some("b".into()),
            option_c: None,
            option_d: None,
            option_e: None,
            correct_index: 1,
            explanation_md: None,
            year_id: 1,
            block_id: Some(2),
            theme_id: None,
            cognitive_level: None,
            difficulty: Some("EASY".into()),
            media: Vec::new(),
        };
        let (questions_json, version_hash) = canonical_questions(vec![snapshot.clone()]).unwrap();
        let package = test_package::Model {
            id: Uuid::from_u128(1).into(),
            name: "N".into(),
            description: Some("D".into()),
            scope: PackageScope::Block,
            scope_data: json!({"block_id": 2}),
            scope_key: r#"{"block_id":2}"#.into(),
            year_id: None,
            block_id: Some(2),
            theme_id: None,
            version: 1,
            version_hash: version_hash.clone(),
            questions_json,
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
        let typed: PackageDownload = serde_json::from_slice(&body).unwrap();
        assert_eq!(typed.questions, vec![snapshot]);
        assert_eq!(version_hash, typed.version_hash);
        // Nothing more, nothing less: re-serializing the type gives the same JSON value.
        let raw: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), raw);
    }
}

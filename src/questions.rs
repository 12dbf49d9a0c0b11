//! The question bank: validation and all-or-nothing import (CLI `questions import` and
//! GraphQL `importQuestions` both call `import_questions`).
use std::collections::{HashMap, HashSet};

use async_graphql::{InputObject, SimpleObject};
use chrono::Utc;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set, TransactionTrait,
    sea_query::OnConflict,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    error::{AppError, AppResult, ErrorCode},
    media::{self, MediaPlacement, MediaSha256},
};
use entity::{MediaHash, QuestionId, question, question_media};

pub use entity::QuestionStatus;

/// One question to create (no `id`) or upsert (`id` given). camelCase in JSON files too.
#[derive(Clone, Debug, InputObject, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuestionInput {
    pub id: Option<Uuid>,
    pub stem: String,
    pub options: Vec<String>,
    pub correct_index: i32,
    pub explanation_md: Option<String>,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub cognitive_level: Option<String>,
    pub difficulty: Option<String>,
    /// PUBLISHED when absent or null.
    // Nullable with a default, as docs/api.md section 6 writes it.
    #[graphql(default_with = "Some(QuestionStatus::Published)")]
    #[serde(default)]
    pub status: Option<QuestionStatus>,
    /// 0 to 16 media references, in the order the question shows them. An upsert replaces
    /// the question's references with these (absent: none).
    #[serde(default)]
    pub media: Option<Vec<QuestionMediaInput>>,
}

/// A question's reference to an uploaded media object.
#[derive(Clone, Debug, InputObject, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuestionMediaInput {
    /// Lowercase hex SHA-256 of an object uploaded with `PUT /api/v1/media/{sha256}`.
    pub sha256: String,
    /// `OPTION_A` … `OPTION_E` must name an option the question has.
    pub placement: MediaPlacement,
    pub alt: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, SimpleObject, Serialize)]
pub struct ImportQuestionsPayload {
    pub created: i32,
    pub updated: i32,
    /// The question ids, in input order.
    pub ids: Vec<Uuid>,
}

/// Rows per INSERT statement (well under SQLite's bound-parameter limit).
const INSERT_CHUNK: usize = 500;

/// Why one item is invalid, or `None`.
fn item_problem(item: &QuestionInput) -> Option<String> {
    if item.stem.trim().is_empty() {
        return Some("stem must not be empty".into());
    }
    if !(2..=5).contains(&item.options.len()) {
        return Some(format!(
            "options must have 2 to 5 entries, got {}",
            item.options.len()
        ));
    }
    if item.options.iter().any(|o| o.trim().is_empty()) {
        return Some("options must not be empty strings".into());
    }
    if item.correct_index < 0 || item.correct_index as usize >= item.options.len() {
        return Some(format!(
            "correctIndex {} is outside the {} options",
            item.correct_index,
            item.options.len()
        ));
    }
    let references = item.media.as_deref().unwrap_or_default();
    if references.len() > media::MAX_REFERENCES {
        return Some(format!(
            "media must have at most {} entries, got {}",
            media::MAX_REFERENCES,
            references.len()
        ));
    }
    for (position, reference) in references.iter().enumerate() {
        if MediaSha256::parse(&reference.sha256).is_none() {
            return Some(format!(
                "media {position}: sha256 must be 64 lowercase hex digits"
            ));
        }
        if let Some(option) = reference.placement.option_index()
            && option >= item.options.len()
        {
            return Some(format!(
                "media {position}: placement {} names an option the question lacks ({} options)",
                reference.placement.as_str(),
                item.options.len()
            ));
        }
    }
    None
}

/// Refuses an import whose media references name objects that were never uploaded,
/// naming the first such item.
async fn check_media_exist(db: &DatabaseConnection, items: &[QuestionInput]) -> AppResult<()> {
    let mut wanted: Vec<MediaSha256> = items
        .iter()
        .flat_map(|item| item.media.iter().flatten())
        .filter_map(|r| MediaSha256::parse(&r.sha256))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    wanted.sort();
    wanted.dedup();
    let stored = media::load_meta(db, &wanted).await?;
    for (index, item) in items.iter().enumerate() {
        for (position, reference) in item.media.iter().flatten().enumerate() {
            let known =
                MediaSha256::parse(&reference.sha256).is_some_and(|s| stored.contains_key(&s));
            if !known {
                return Err(AppError::bad_request_with(
                    ErrorCode::ValidationError,
                    format!(
                        "{}: media {position}: no uploaded object {}",
                        item_label(index, item.id),
                        reference.sha256
                    ),
                    json!([{"index": index, "id": item.id, "media": position, "sha256": reference.sha256}]),
                ));
            }
        }
    }
    Ok(())
}

fn item_label(index: usize, id: Option<Uuid>) -> String {
    match id {
        Some(id) => format!("item {index} (id {id})"),
        None => format!("item {index}"),
    }
}

/// Checks every item; the error names each bad item by 0-based index (and id if given).
pub fn validate(items: &[QuestionInput]) -> AppResult<()> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        let mut problem = item_problem(item);
        if problem.is_none()
            && let Some(id) = item.id
            && !seen.insert(id)
        {
            problem = Some("the same id appears earlier in the input".into());
        }
        if let Some(problem) = problem {
            problems.push(json!({"index": index, "id": item.id, "message": problem}));
        }
    }
    if items.is_empty() {
        return Err(AppError::bad_request("the import holds no questions"));
    }
    match problems.first() {
        None => Ok(()),
        Some(first) => {
            let index = first["index"].as_u64().unwrap_or_default() as usize;
            let id = first["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
            let message = format!(
                "{}: {}{}",
                item_label(index, id),
                first["message"].as_str().unwrap_or_default(),
                if problems.len() > 1 {
                    format!(" (and {} more invalid items)", problems.len() - 1)
                } else {
                    String::new()
                }
            );
            Err(AppError::bad_request_with(
                ErrorCode::ValidationError,
                message,
                Value::Array(problems),
            ))
        }
    }
}

/// Parses a JSON import file (an array of `QuestionInput` objects), naming the bad item.
pub fn parse_import_file(text: &str) -> AppResult<Vec<QuestionInput>> {
    let values: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| AppError::bad_request(format!("the file is not a JSON array: {e}")))?;
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let id = value
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            serde_json::from_value::<QuestionInput>(value)
                .map_err(|e| AppError::bad_request(format!("{}: {e}", item_label(index, id))))
        })
        .collect()
}

/// Validates, then upserts every item in one transaction (all or nothing).
pub async fn import_questions(
    db: &DatabaseConnection,
    items: Vec<QuestionInput>,
) -> AppResult<ImportQuestionsPayload> {
    validate(&items)?;
    check_media_exist(db, &items).await?;
    let now = Utc::now();
    let ids: Vec<QuestionId> = items
        .iter()
        .map(|item| item.id.map_or_else(QuestionId::new_v4, QuestionId::from))
        .collect();
    let given: Vec<QuestionId> = items
        .iter()
        .filter_map(|item| item.id.map(QuestionId::from))
        .collect();

    let txn = db.begin().await?;
    let existing = created_at_of(&txn, &given).await?;
    let references = media_rows(&items, &ids)?;
    let rows = question_rows(items, &ids, &existing, now);
    upsert_questions(&txn, rows).await?;
    // An upsert replaces the references of the questions that existed.
    let existing_ids: Vec<QuestionId> = existing.keys().copied().collect();
    replace_media(&txn, &existing_ids, references).await?;
    txn.commit().await?;
    let updated = existing.len() as i32;
    Ok(ImportQuestionsPayload {
        created: ids.len() as i32 - updated,
        updated,
        ids: ids.into_iter().map(QuestionId::into_uuid).collect(),
    })
}

/// The creation times of the questions among `ids` that exist already (an update keeps it).
async fn created_at_of(
    txn: &sea_orm::DatabaseTransaction,
    ids: &[QuestionId],
) -> AppResult<HashMap<QuestionId, chrono::DateTime<Utc>>> {
    let mut existing = HashMap::new();
    for chunk in ids.chunks(INSERT_CHUNK) {
        let rows = question::Entity::find()
            .filter(question::Column::Id.is_in(chunk.iter().copied()))
            .all(txn)
            .await?;
        existing.extend(rows.into_iter().map(|row| (row.id, row.created_at)));
    }
    Ok(existing)
}

/// The media references of the imported questions, in their given order.
fn media_rows(
    items: &[QuestionInput],
    ids: &[QuestionId],
) -> AppResult<Vec<question_media::ActiveModel>> {
    items
        .iter()
        .zip(ids)
        .flat_map(|(item, id)| {
            item.media
                .iter()
                .flatten()
                .enumerate()
                .map(|(position, r)| {
                    // Checked by `validate`: a malformed hash never gets here.
                    let sha256 = MediaHash::parse(&r.sha256)
                        .map_err(|_| AppError::internal("unvalidated media sha256"))?;
                    Ok(question_media::ActiveModel {
                        question_id: Set(*id),
                        // At most `MAX_REFERENCES`, checked by `validate`.
                        position: Set(position as i32),
                        sha256: Set(sha256),
                        placement: Set(r.placement),
                        alt: Set(r.alt.clone()),
                    })
                })
        })
        .collect()
}

fn question_rows(
    items: Vec<QuestionInput>,
    ids: &[QuestionId],
    existing: &HashMap<QuestionId, chrono::DateTime<Utc>>,
    now: chrono::DateTime<Utc>,
) -> Vec<question::ActiveModel> {
    items
        .into_iter()
        .zip(ids)
        .map(|(item, id)| question::ActiveModel {
            id: Set(*id),
            stem: Set(item.stem),
            options: Set(json!(item.options)),
            correct_index: Set(item.correct_index),
            explanation_md: Set(item.explanation_md),
            year_id: Set(item.year_id),
            block_id: Set(item.block_id),
            theme_id: Set(item.theme_id),
            cognitive_level: Set(item.cognitive_level),
            difficulty: Set(item.difficulty),
            status: Set(item.status.unwrap_or_default()),
            created_at: Set(existing.get(id).copied().unwrap_or(now)),
            updated_at: Set(now),
        })
        .collect()
}

/// Inserts or updates the questions, in chunks under the bind-parameter limit.
async fn upsert_questions(
    txn: &sea_orm::DatabaseTransaction,
    rows: Vec<question::ActiveModel>,
) -> AppResult<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
        question::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::column(question::Column::Id)
                    .update_columns([
                        question::Column::Stem,
                        question::Column::Options,
                        question::Column::CorrectIndex,
                        question::Column::ExplanationMd,
                        question::Column::YearId,
                        question::Column::BlockId,
                        question::Column::ThemeId,
                        question::Column::CognitiveLevel,
                        question::Column::Difficulty,
                        question::Column::Status,
                        question::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Drops the old references of `existing` questions and inserts `references`.
async fn replace_media(
    txn: &sea_orm::DatabaseTransaction,
    existing: &[QuestionId],
    references: Vec<question_media::ActiveModel>,
) -> AppResult<()> {
    for chunk in existing.chunks(INSERT_CHUNK) {
        question_media::Entity::delete_many()
            .filter(question_media::Column::QuestionId.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    let mut references = references.into_iter().peekable();
    while references.peek().is_some() {
        let chunk: Vec<_> = references.by_ref().take(INSERT_CHUNK).collect();
        question_media::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The options of a stored question (a JSON array of strings).
pub fn options_of(question: &question::Model) -> Vec<String> {
    serde_json::from_value(question.options.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(options: usize, correct: i32) -> QuestionInput {
        QuestionInput {
            id: None,
            stem: "Stem".into(),
            options: (0..options).map(|i| format!("opt {i}")).collect(),
            correct_index: correct,
            explanation_md: None,
            year_id: 1,
            block_id: None,
            theme_id: None,
            cognitive_level: None,
            difficulty: None,
            status: Some(QuestionStatus::Published),
            media: None,
        }
    }

    #[test]
    fn validation_names_the_item() {
        assert!(validate(&[item(2, 1), item(5, 4)]).is_ok());
        let err = validate(&[item(2, 0), item(6, 0)]).unwrap_err();
        assert!(err.to_string().starts_with("item 1: options"), "{err}");
        let err = validate(&[item(3, 3)]).unwrap_err();
        assert!(err.to_string().contains("correctIndex 3"), "{err}");
        let mut blank = item(2, 0);
        blank.stem = "  ".into();
        blank.id = Some(Uuid::nil());
        let err = validate(&[blank]).unwrap_err();
        assert!(err.to_string().contains("id 00000000"), "{err}");
    }

    #[test]
    fn import_file_errors_name_the_item() {
        let err = parse_import_file(
            r#"[{"stem":"a","options":["x","y"],"correctIndex":0,"yearId":1},{"stem":"b"}]"#,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("item 1:"), "{err}");
    }
}

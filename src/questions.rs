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

use crate::error::{AppError, AppResult, ErrorCode};
use entity::question;

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
    None
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
    let now = Utc::now();
    let ids: Vec<Uuid> = items
        .iter()
        .map(|item| item.id.unwrap_or_else(Uuid::new_v4))
        .collect();
    let given: Vec<Uuid> = items.iter().filter_map(|item| item.id).collect();

    let txn = db.begin().await?;
    let mut existing: HashMap<Uuid, chrono::DateTime<Utc>> = HashMap::new();
    for chunk in given.chunks(INSERT_CHUNK) {
        let rows = question::Entity::find()
            .filter(question::Column::Id.is_in(chunk.iter().copied()))
            .all(&txn)
            .await?;
        existing.extend(rows.into_iter().map(|row| (row.id, row.created_at)));
    }
    let rows: Vec<question::ActiveModel> = items
        .into_iter()
        .zip(&ids)
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
        .collect();
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
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    let updated = existing.len() as i32;
    Ok(ImportQuestionsPayload {
        created: ids.len() as i32 - updated,
        updated,
        ids,
    })
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

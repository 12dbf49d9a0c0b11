//! A single-best-answer question of the bank.
use sea_orm::entity::prelude::*;

use crate::ids::QuestionId;

use crate::enums::QuestionStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "questions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: QuestionId,
    #[sea_orm(column_type = "Text")]
    pub stem: String,
    /// JSON array of 2–5 option strings (A–E).
    pub options: Json,
    pub correct_index: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub explanation_md: Option<String>,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub cognitive_level: Option<String>,
    pub difficulty: Option<String>,
    pub status: QuestionStatus,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

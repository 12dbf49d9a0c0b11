//! The media a question refers to, in the question's order (`position`).
use sea_orm::entity::prelude::*;

use crate::ids::{MediaHash, QuestionId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "question_media")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub question_id: QuestionId,
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub sha256: MediaHash,
    pub placement: crate::enums::MediaPlacement,
    #[sea_orm(column_type = "Text", nullable)]
    pub alt: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

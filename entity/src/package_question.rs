//! Question → package index: one row per question a package holds, with the question's
//! ids as snapshotted in it. Written with the package; like the package, never changed.
use sea_orm::entity::prelude::*;

use crate::ids::{PackageId, QuestionId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "package_questions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub package_id: PackageId,
    #[sea_orm(primary_key, auto_increment = false)]
    pub question_id: QuestionId,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

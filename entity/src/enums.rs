//! The states stored as text columns, typed end to end: the database value, the Rust value
//! and (with the `graphql` feature) the GraphQL enum value are one and the same name, so an
//! unknown stored value is a read error, never a silent default.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// How a study session runs. Sync creates TUTOR sessions.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionMode {
    #[sea_orm(string_value = "TUTOR")]
    Tutor,
    #[sea_orm(string_value = "EXAM")]
    Exam,
}

/// Where a study session is in its life: only ACTIVE sessions take new answers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "SUBMITTED")]
    Submitted,
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
}

/// Editorial state of a question: only PUBLISHED questions go into new packages.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuestionStatus {
    #[sea_orm(string_value = "DRAFT")]
    Draft,
    #[sea_orm(string_value = "IN_REVIEW")]
    InReview,
    #[sea_orm(string_value = "APPROVED")]
    Approved,
    #[default]
    #[sea_orm(string_value = "PUBLISHED")]
    Published,
}

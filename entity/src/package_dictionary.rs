//! RFC 9842 dictionary index: the SHA-256 of a published package's download (its exact
//! identity bytes) → that package. A primary-key read answers `Available-Dictionary`
//! without scanning packages. Rows are written by whichever instance first builds a
//! download's bytes; since the bytes of a published package never change, neither does
//! its row.
use sea_orm::entity::prelude::*;

use crate::ids::PackageId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "package_dictionaries")]
pub struct Model {
    /// Lowercase hex SHA-256 of the download's identity bytes.
    #[sea_orm(primary_key, auto_increment = false)]
    pub sha256: String,
    pub package_id: PackageId,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

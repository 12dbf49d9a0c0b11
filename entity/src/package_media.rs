//! The distinct media objects a package's snapshots refer to, written with the package
//! (so never changed): what its bundle holds and what makes an object readable.
use sea_orm::entity::prelude::*;

use crate::ids::{MediaHash, PackageId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "package_media")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub package_id: PackageId,
    #[sea_orm(primary_key, auto_increment = false)]
    pub sha256: MediaHash,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

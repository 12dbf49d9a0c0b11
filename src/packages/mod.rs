//! Test packages: build from the bank, version, publish, list and serve (SPEC sections 4–6).
//! Both REST and GraphQL call these functions; each rule lives here once.
pub mod store;

pub use store::{PackageScoring, PackageStore, ScoringKey};

use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::error::{AppError, AppResult};

/// The scope of a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, async_graphql::Enum)]
#[graphql(name = "PackageScope")]
pub enum PackageScope {
    Program,
    Year,
    Block,
    Theme,
}

/// What an admin asks to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub name: String,
    pub description: Option<String>,
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub publish: bool,
    pub created_by: Option<Uuid>,
}

/// Builds (or finds) the package of a scope. Placeholder until packages land.
pub async fn build_package(
    _db: &DatabaseConnection,
    _request: BuildRequest,
) -> AppResult<entity::test_package::Model> {
    Err(AppError::internal(
        "package building is not implemented yet",
    ))
}

//! GraphQL of test packages (placeholder until packages land).
use async_graphql::{Context, Object};

#[derive(Default)]
pub struct PackageQuery;

#[Object]
impl PackageQuery {
    /// Published packages.
    async fn packages(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        super::require_user(ctx)?;
        Ok(Vec::new())
    }
}

#[derive(Default)]
pub struct PackageMutation;

#[Object]
impl PackageMutation {
    /// Builds a package (admin).
    async fn build_package(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        super::require_admin(ctx)?;
        Ok(false)
    }
}

//! GraphQL of grants (docs/api.md section 3.1): `myAccess`, and for admins
//! `accessGrants`, `grantAccess`, `revokeAccess`. The rules live in `crate::access`.
use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{require_admin, require_user, state};
use crate::access::{
    Grant, GrantId, PackageScope,
    grants::{self, NewGrant},
};

/// A stored grant.
#[derive(Clone, Debug, SimpleObject)]
pub struct AccessGrant {
    pub id: Uuid,
    pub user_id: Uuid,
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<Grant> for AccessGrant {
    fn from(g: Grant) -> Self {
        let (year_id, block_id, theme_id) = g.target.ids();
        AccessGrant {
            id: g.id.into(),
            user_id: g.user_id.into(),
            scope: g.target.scope(),
            year_id,
            block_id,
            theme_id,
            valid_from: g.window.valid_from,
            valid_until: g.window.valid_until,
            revoked_at: g.window.revoked_at,
            created_at: g.created_at,
        }
    }
}

#[derive(Clone, Debug, InputObject)]
pub struct GrantAccessInput {
    pub user_id: Uuid,
    pub scope: PackageScope,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct AccessQuery;

#[Object]
impl AccessQuery {
    /// The caller's stored grants in force now (token grants are not listed).
    async fn my_access(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AccessGrant>> {
        let user = require_user(ctx)?;
        let rows = grants::in_force(&state(ctx).db, user.id).await?;
        Ok(rows.into_iter().map(AccessGrant::from).collect())
    }

    /// Every stored grant of a user, revoked and expired ones included (admin).
    async fn access_grants(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
    ) -> async_graphql::Result<Vec<AccessGrant>> {
        require_admin(ctx)?;
        let rows = grants::list(&state(ctx).db, user_id.into()).await?;
        Ok(rows.into_iter().map(AccessGrant::from).collect())
    }
}

#[derive(Default)]
pub struct AccessMutation;

#[Object]
impl AccessMutation {
    /// Grants access (admin). A grant equal to one in force returns that one.
    async fn grant_access(
        &self,
        ctx: &Context<'_>,
        input: GrantAccessInput,
    ) -> async_graphql::Result<AccessGrant> {
        require_admin(ctx)?;
        let app = state(ctx);
        let new = NewGrant::new(
            input.user_id.into(),
            input.scope,
            input.year_id,
            input.block_id,
            input.theme_id,
            input.valid_from,
            input.valid_until,
        )?;
        let grant = grants::grant(&app.db, new).await?;
        app.access.forget_user(grant.user_id);
        Ok(grant.into())
    }

    /// Revokes a grant now (admin); a revoked grant is returned unchanged.
    async fn revoke_access(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<AccessGrant> {
        require_admin(ctx)?;
        let app = state(ctx);
        let grant = grants::revoke(&app.db, GrantId::from(id)).await?;
        app.access.forget_user(grant.user_id);
        Ok(grant.into())
    }
}

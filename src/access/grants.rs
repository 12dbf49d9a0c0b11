//! Stored grants: record, revoke, list, import (admin GraphQL and the CLI call these).
use chrono::{DateTime, SubsecRound, Utc};
use entity::UserId;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait, sea_query::Expr,
};
use serde_json::json;

use super::{Grant, GrantId, GrantTarget, PackageScope, Window};
use crate::error::{AppError, AppResult, ErrorCode};
use entity::access_grant;

/// A grant to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewGrant {
    pub user_id: UserId,
    pub target: GrantTarget,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl NewGrant {
    /// Checks the ids against the scope and the window's order (`BAD_USER_INPUT`).
    pub fn new(
        user_id: UserId,
        scope: PackageScope,
        year_id: Option<i32>,
        block_id: Option<i32>,
        theme_id: Option<i32>,
        valid_from: Option<DateTime<Utc>>,
        valid_until: Option<DateTime<Utc>>,
    ) -> AppResult<NewGrant> {
        let target = GrantTarget::new(scope, year_id, block_id, theme_id).map_err(|e| {
            AppError::bad_request_with(ErrorCode::ValidationError, e.0, json!({"field": "scope"}))
        })?;
        if let (Some(from), Some(until)) = (valid_from, valid_until)
            && until <= from
        {
            return Err(AppError::bad_request_with(
                ErrorCode::ValidationError,
                "validUntil must be after validFrom",
                json!({"field": "validUntil"}),
            ));
        }
        Ok(NewGrant {
            user_id,
            target,
            // Stored with microseconds: what is returned equals what a later read gives.
            valid_from: valid_from.map(|t| t.trunc_subsecs(6)),
            valid_until: valid_until.map(|t| t.trunc_subsecs(6)),
        })
    }

    fn same_target(&self, g: &Grant) -> bool {
        g.user_id == self.user_id && g.target == self.target
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn to_grants(rows: Vec<access_grant::Model>) -> Vec<Grant> {
    rows.into_iter().filter_map(Grant::from_row).collect()
}

/// Every stored grant of a user, revoked and expired ones included, oldest first.
pub async fn list(db: &impl ConnectionTrait, user_id: UserId) -> AppResult<Vec<Grant>> {
    let rows = access_grant::Entity::find()
        .filter(access_grant::Column::UserId.eq(user_id))
        .order_by_asc(access_grant::Column::CreatedAt)
        .order_by_asc(access_grant::Column::Id)
        .all(db)
        .await?;
    Ok(to_grants(rows))
}

/// The user's stored grants in force now (`myAccess`).
pub async fn in_force(db: &impl ConnectionTrait, user_id: UserId) -> AppResult<Vec<Grant>> {
    let at = Utc::now();
    Ok(list(db, user_id)
        .await?
        .into_iter()
        .filter(|g| g.window.in_force_at(at))
        .collect())
}

async fn insert(db: &impl ConnectionTrait, new: &NewGrant) -> AppResult<Grant> {
    let (year_id, block_id, theme_id) = new.target.ids();
    let row = access_grant::ActiveModel {
        id: Set(GrantId::new_v4()),
        user_id: Set(new.user_id),
        scope: Set(new.target.scope()),
        year_id: Set(year_id),
        block_id: Set(block_id),
        theme_id: Set(theme_id),
        valid_from: Set(new.valid_from),
        valid_until: Set(new.valid_until),
        revoked_at: Set(None),
        created_at: Set(now()),
    };
    let model = access_grant::Entity::insert(row)
        .exec_with_returning(db)
        .await?;
    Grant::from_row(model).ok_or_else(|| AppError::internal("a stored grant does not read back"))
}

/// Records a grant. A grant equal to one in force (same user, scope, id and
/// `valid_until`) returns that one.
pub async fn grant(db: &DatabaseConnection, new: NewGrant) -> AppResult<Grant> {
    let at = Utc::now();
    if let Some(existing) = list(db, new.user_id).await?.into_iter().find(|g| {
        new.same_target(g) && g.window.valid_until == new.valid_until && g.window.in_force_at(at)
    }) {
        return Ok(existing);
    }
    let grant = insert(db, &new).await?;
    tracing::info!(
        grant_id = %grant.id,
        user_id = %grant.user_id,
        scope = grant.target.scope().as_str(),
        "granted access"
    );
    Ok(grant)
}

/// Revokes a grant now; a revoked grant is returned unchanged.
pub async fn revoke(db: &DatabaseConnection, id: GrantId) -> AppResult<Grant> {
    access_grant::Entity::update_many()
        .col_expr(access_grant::Column::RevokedAt, Expr::value(Some(now())))
        .filter(access_grant::Column::Id.eq(id))
        .filter(access_grant::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    let row = access_grant::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no grant {id}")))?;
    let grant = Grant::from_row(row)
        .ok_or_else(|| AppError::internal("a stored grant does not read back"))?;
    tracing::info!(grant_id = %grant.id, user_id = %grant.user_id, "revoked access");
    Ok(grant)
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    pub created: usize,
    pub unchanged: usize,
}

/// Records every grant of an import in one transaction. A grant already stored with the
/// same user, scope, id and window (and not revoked) is left as it is, so importing the
/// same file twice changes nothing.
pub async fn import(db: &DatabaseConnection, grants: &[NewGrant]) -> AppResult<ImportOutcome> {
    let txn = db.begin().await?;
    let mut outcome = ImportOutcome::default();
    let mut by_user: std::collections::HashMap<UserId, Vec<Grant>> = Default::default();
    for new in grants {
        let stored = match by_user.entry(new.user_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(list(&txn, new.user_id).await?)
            }
        };
        let window = Window {
            valid_from: new.valid_from,
            valid_until: new.valid_until,
            revoked_at: None,
        };
        if stored
            .iter()
            .any(|g| new.same_target(g) && g.window == window)
        {
            outcome.unchanged += 1;
            continue;
        }
        stored.push(insert(&txn, new).await?);
        outcome.created += 1;
    }
    txn.commit().await?;
    Ok(outcome)
}

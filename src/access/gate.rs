//! Applies the access rules to requests, cheaply enough for the package hot path.
//!
//! Two in-process caches:
//! - per package: its scope, whether it is withdrawn (looked up again after
//!   [`WITHDRAWAL_TTL`]) and the distinct scopes of its questions (immutable, from the
//!   question → package index);
//! - per user: their stored grants (trusted for [`GRANTS_TTL`]) and the packages they were
//!   found to read meanwhile.
//!
//! A positive decision may come from the cache, so a revocation or an expiry takes effect
//! within [`GRANTS_TTL`]. A negative one never does: the grants are read again from the
//! database before anything is refused or left out of a list, so a grant made on any
//! instance works at once everywhere.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::Utc;
use entity::{PackageId, UserId};
use sea_orm::{DatabaseConnection, EntityTrait, QuerySelect};

use super::{AccessMode, Coverage, Grant, GrantTarget, QuestionScope, grants, index};
use crate::{
    app::App,
    auth::AuthUser,
    error::{AppError, AppResult, ErrorCode},
    packages::{self, ListFilter, PackageScope, PackageSummary},
};
use entity::test_package;

/// How long loaded grants (and the decisions made with them) are trusted: below the bound
/// docs/api.md section 3.1 sets on how late a revocation may take effect elsewhere.
pub const GRANTS_TTL: Duration = Duration::from_secs(20);
/// How long a package found not withdrawn is trusted to stay so on this instance.
pub const WITHDRAWAL_TTL: Duration = Duration::from_secs(20);
/// Users, packages and package scopes each remembered at once; past it the least used
/// are read again from the database when they return.
const CACHE_CAP: usize = 100_000;

/// Why a package may not be read, in the order the checks run.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no published package {0}")]
    NotFound(PackageId),
    #[error("package {0} has been withdrawn")]
    Withdrawn(PackageId),
    /// A delta between packages of two scopes (`409 DELTA_SCOPE_MISMATCH`).
    #[error("{0}")]
    ScopeMismatch(AppError),
    #[error("your access does not cover package {0}")]
    Denied(PackageId),
    #[error("{0}")]
    Failed(#[from] AppError),
}

impl From<sea_orm::DbErr> for AccessError {
    fn from(e: sea_orm::DbErr) -> Self {
        AccessError::Failed(e.into())
    }
}

impl From<AccessError> for AppError {
    fn from(e: AccessError) -> AppError {
        match e {
            AccessError::NotFound(_) => AppError::NotFound(e.to_string()),
            AccessError::Withdrawn(_) => AppError::Gone {
                code: ErrorCode::PackageWithdrawn,
                message: e.to_string(),
            },
            AccessError::Denied(_) => AppError::AccessDenied(e.to_string()),
            AccessError::ScopeMismatch(e) | AccessError::Failed(e) => e,
        }
    }
}

/// What the access rules need of a published package.
#[derive(Debug)]
pub struct PackageFacts {
    pub scope: PackageScope,
    pub scope_key: String,
    pub withdrawn: bool,
    checked: Instant,
    pub question_scopes: Arc<[QuestionScope]>,
}

struct UserGrants {
    loaded: Instant,
    grants: Vec<Grant>,
    /// Packages these grants were found to cover.
    readable: RwLock<HashSet<PackageId, foldhash::fast::RandomState>>,
}

/// The access caches of one instance.
pub struct AccessCache {
    mode: AccessMode,
    users: quick_cache::sync::Cache<UserId, Arc<UserGrants>>,
    packages: quick_cache::sync::Cache<PackageId, Arc<PackageFacts>>,
    /// Question scopes of packages (immutable): also for packages only ever listed.
    scopes: quick_cache::sync::Cache<PackageId, Arc<[QuestionScope]>>,
    /// Reads allowed lately, the answer to what a phone asks most (revalidating what it
    /// holds). Key: (user, package, the held package of a delta or nil). Value: until when
    /// the decision holds (no later than the facts and grants it rests on would be read
    /// again) and under which generation. One lookup instead of the facts, grants and
    /// coverage.
    allowed: quick_cache::sync::Cache<(UserId, PackageId, PackageId), (Instant, u64)>,
    /// Bumped whenever this instance forgets a user or a package (a grant changed, a
    /// package withdrawn): every remembered decision made before is void at once.
    generation: std::sync::atomic::AtomicU64,
}

impl AccessCache {
    pub fn new(mode: AccessMode) -> AccessCache {
        AccessCache {
            mode,
            users: quick_cache::sync::Cache::new(CACHE_CAP),
            packages: quick_cache::sync::Cache::new(CACHE_CAP),
            scopes: quick_cache::sync::Cache::new(CACHE_CAP),
            allowed: quick_cache::sync::Cache::new(CACHE_CAP),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// Whether grants limit what `user` reads (students and reviewers under `grants`).
    pub fn restricts(&self, user: &AuthUser) -> bool {
        self.mode == AccessMode::Grants && !user.is_admin()
    }

    /// Drops what this instance knows of a user's grants (after it changed them).
    pub fn forget_user(&self, user_id: UserId) {
        self.users.remove(&user_id);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops what this instance knows of a package (after it withdrew it).
    pub fn forget_package(&self, id: PackageId) {
        self.packages.remove(&id);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `user` was allowed to read `package` by a decision that still holds, with
    /// nothing forgotten since.
    fn allowed_lately(&self, user: UserId, package: PackageId, held: PackageId) -> bool {
        self.allowed
            .get(&(user, package, held))
            .is_some_and(|(until, generation)| {
                Instant::now() < until
                    && generation == self.generation.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// Remembers that `user` may read the package of `facts`, for as long as what the
    /// decision rests on is trusted: the facts' withdrawal check and, for a user whose
    /// grants limit them, the stored grants. A decision that needed the token's own
    /// grants is not remembered (another token of the same user may carry others).
    fn remember_allowed(
        &self,
        user: &AuthUser,
        (package, held): (PackageId, PackageId),
        checked: Instant,
        grants_loaded: Option<Instant>,
        generation: u64,
    ) {
        let mut until = checked + WITHDRAWAL_TTL;
        if self.restricts(user) {
            if user.access.as_deref().is_some_and(|a| !a.is_empty()) {
                return;
            }
            match grants_loaded {
                Some(loaded) => until = until.min(loaded + GRANTS_TTL),
                None => return,
            }
        }
        self.allowed
            .insert((user.id, package, held), (until, generation));
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A published package's facts, `None` when unknown or unpublished.
    pub async fn package_facts(
        &self,
        db: &DatabaseConnection,
        id: PackageId,
    ) -> AppResult<Option<Arc<PackageFacts>>> {
        let cached = self.packages.get(&id);
        if let Some(facts) = &cached
            && (facts.withdrawn || facts.checked.elapsed() < WITHDRAWAL_TTL)
        {
            return Ok(cached);
        }
        let row: Option<(PackageScope, String, bool, Option<chrono::DateTime<Utc>>)> =
            test_package::Entity::find_by_id(id)
                .select_only()
                .column(test_package::Column::Scope)
                .column(test_package::Column::ScopeKey)
                .column(test_package::Column::IsPublished)
                .column(test_package::Column::WithdrawnAt)
                .into_tuple()
                .one(db)
                .await?;
        let Some((scope, scope_key, true, withdrawn_at)) = row else {
            return Ok(None);
        };
        let question_scopes = match cached {
            Some(facts) => facts.question_scopes.clone(),
            None => self
                .question_scopes(db, &[id])
                .await?
                .remove(&id)
                .unwrap_or_else(|| Arc::from(Vec::new())),
        };
        let facts = Arc::new(PackageFacts {
            scope,
            scope_key,
            withdrawn: withdrawn_at.is_some(),
            checked: Instant::now(),
            question_scopes,
        });
        self.packages.insert(id, facts.clone());
        Ok(Some(facts))
    }

    /// The question scopes of some packages, from the cache or in one read.
    async fn question_scopes(
        &self,
        db: &DatabaseConnection,
        ids: &[PackageId],
    ) -> AppResult<HashMap<PackageId, Arc<[QuestionScope]>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.scopes.get(id) {
                Some(s) => {
                    out.insert(*id, s);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            let mut loaded = index::question_scopes(db, &missing).await?;
            for id in missing {
                // No index rows: a package built by an older binary. Index it now rather
                // than judge it by an empty question list (which every grant would cover).
                let scopes = match loaded.remove(&id) {
                    Some(scopes) => scopes,
                    None => {
                        let mut scopes: Vec<QuestionScope> = index::index_package(db, id)
                            .await?
                            .iter()
                            .map(|r| QuestionScope {
                                year_id: r.year_id,
                                block_id: r.block_id,
                                theme_id: r.theme_id,
                            })
                            .collect();
                        scopes.sort_unstable();
                        scopes.dedup();
                        scopes
                    }
                };
                let scopes: Arc<[QuestionScope]> = Arc::from(scopes);
                self.scopes.insert(id, scopes.clone());
                out.insert(id, scopes);
            }
        }
        Ok(out)
    }

    /// The user's stored grants: cached ones unless `fresh` or too old.
    async fn user_grants(
        &self,
        db: &DatabaseConnection,
        user_id: UserId,
        fresh: bool,
    ) -> AppResult<(Arc<UserGrants>, bool)> {
        if !fresh
            && let Some(entry) = self.users.get(&user_id)
            && entry.loaded.elapsed() < GRANTS_TTL
        {
            return Ok((entry, false));
        }
        let entry = Arc::new(UserGrants {
            loaded: Instant::now(),
            grants: grants::list(db, user_id).await?,
            readable: RwLock::default(),
        });
        self.users.insert(user_id, entry.clone());
        Ok((entry, true))
    }

    /// Whether `user` may read every package of `ids` (each given by its question scopes).
    /// Reads the grants again from the database before answering no.
    async fn covers(
        &self,
        db: &DatabaseConnection,
        user: &AuthUser,
        packages: &[(PackageId, &[QuestionScope])],
    ) -> AppResult<Vec<bool>> {
        Ok(self.covers_since(db, user, packages).await?.0)
    }

    /// [`Self::covers`], with when the stored grants it judged by were read (`None`: the
    /// user's grants do not limit them).
    async fn covers_since(
        &self,
        db: &DatabaseConnection,
        user: &AuthUser,
        packages: &[(PackageId, &[QuestionScope])],
    ) -> AppResult<(Vec<bool>, Option<Instant>)> {
        if !self.restricts(user) {
            return Ok((vec![true; packages.len()], None));
        }
        let token: &[GrantTarget] = user.access.as_deref().unwrap_or(&[]);
        let (mut entry, mut fresh) = self.user_grants(db, user.id, false).await?;
        loop {
            // Read only when a decision is not already remembered.
            let now = std::cell::LazyCell::new(Utc::now);
            let mut stored: Option<Coverage> = None;
            let mut with_token: Option<Coverage> = None;
            let mut newly_readable = Vec::new();
            let decisions: Vec<bool> = {
                let known = entry.readable.read().ok();
                packages
                    .iter()
                    .map(|(id, scopes)| {
                        if known.as_ref().is_some_and(|k| k.contains(id)) {
                            return true;
                        }
                        let stored = stored
                            .get_or_insert_with(|| Coverage::in_force_at(&entry.grants, &[], *now));
                        if stored.covers_package(scopes) {
                            // Only what stored grants cover is remembered: token grants
                            // differ from token to token of the same user.
                            newly_readable.push(*id);
                            return true;
                        }
                        !token.is_empty()
                            && with_token
                                .get_or_insert_with(|| {
                                    Coverage::in_force_at(&entry.grants, token, *now)
                                })
                                .covers_package(scopes)
                    })
                    .collect()
            };
            if !newly_readable.is_empty()
                && let Ok(mut r) = entry.readable.write()
            {
                r.extend(newly_readable);
            }
            if fresh || decisions.iter().all(|d| *d) {
                return Ok((decisions, Some(entry.loaded)));
            }
            (entry, fresh) = self.user_grants(db, user.id, true).await?;
        }
    }
}

/// Whether `user` may read package `id` by a decision this instance remembers and still
/// trusts; `false` means "not known without asking" ([`may_read_package`] asks).
pub fn may_read_package_from_memory(app: &App, user: &AuthUser, id: PackageId) -> bool {
    app.access.allowed_lately(user.id, id, PackageId::nil())
}

/// Whether `user` may read the published package `id`: `404` unknown or unpublished,
/// `410` withdrawn (for admins too), `403` not covered by the caller's grants. The media
/// routes call this too.
pub async fn may_read_package(
    app: &App,
    user: &AuthUser,
    id: PackageId,
) -> Result<(), AccessError> {
    if may_read_package_from_memory(app, user, id) {
        return Ok(());
    }
    let generation = app.access.generation();
    let facts = app
        .access
        .package_facts(&app.db, id)
        .await?
        .ok_or(AccessError::NotFound(id))?;
    if facts.withdrawn {
        return Err(AccessError::Withdrawn(id));
    }
    let (covered, grants_loaded) = app
        .access
        .covers_since(&app.db, user, &[(id, &facts.question_scopes)])
        .await?;
    if covered.first() == Some(&true) {
        app.access.remember_allowed(
            user,
            (id, PackageId::nil()),
            facts.checked,
            grants_loaded,
            generation,
        );
        Ok(())
    } else {
        Err(AccessError::Denied(id))
    }
}

/// Whether `user` may read the delta from `from` to `id` by a decision this instance
/// remembers and still trusts; `false` means "not known without asking" ([`may_read_delta`]).
pub fn may_read_delta_from_memory(
    app: &App,
    user: &AuthUser,
    id: PackageId,
    from: PackageId,
) -> bool {
    app.access.allowed_lately(user.id, id, from)
}

/// Whether `user` may read the delta from `from` to `id` (the media bundle with `?from=`
/// too): `404` either unknown or unpublished, `410` `id` withdrawn (a delta *from* a
/// withdrawn package is how phones leave it), `409` another scope, `403` either not
/// covered.
pub async fn may_read_delta(
    app: &App,
    user: &AuthUser,
    id: PackageId,
    from: PackageId,
) -> Result<(), AccessError> {
    if may_read_delta_from_memory(app, user, id, from) {
        return Ok(());
    }
    let generation = app.access.generation();
    let to = app
        .access
        .package_facts(&app.db, id)
        .await?
        .ok_or(AccessError::NotFound(id))?;
    let held = app
        .access
        .package_facts(&app.db, from)
        .await?
        .ok_or(AccessError::NotFound(from))?;
    if to.withdrawn {
        return Err(AccessError::Withdrawn(id));
    }
    packages::check_delta_scope((to.scope, &to.scope_key), (held.scope, &held.scope_key))
        .map_err(AccessError::ScopeMismatch)?;
    let (covered, grants_loaded) = app
        .access
        .covers_since(
            &app.db,
            user,
            &[(id, &to.question_scopes), (from, &held.question_scopes)],
        )
        .await?;
    match covered.iter().position(|c| !c) {
        None => {
            // The held package's withdrawal does not matter; its facts' age does not either.
            app.access
                .remember_allowed(user, (id, from), to.checked, grants_loaded, generation);
            Ok(())
        }
        Some(0) => Err(AccessError::Denied(id)),
        Some(_) => Err(AccessError::Denied(from)),
    }
}

/// The packages of the list (REST and GraphQL) that `user` may read: published, not
/// withdrawn, covered; `latest` then keeps the newest readable version of each scope.
pub async fn list_readable(
    app: &App,
    user: &AuthUser,
    filter: &ListFilter,
) -> AppResult<Vec<PackageSummary>> {
    let mut rows = packages::list_served(&app.db, filter).await?;
    if app.access.restricts(user) && !rows.is_empty() {
        let ids: Vec<PackageId> = rows.iter().map(|r| r.id).collect();
        let scopes = app.access.question_scopes(&app.db, &ids).await?;
        let empty: Arc<[QuestionScope]> = Arc::from(Vec::new());
        let pairs: Vec<(PackageId, &[QuestionScope])> = ids
            .iter()
            .map(|id| (*id, scopes.get(id).unwrap_or(&empty).as_ref()))
            .collect();
        let decisions = app.access.covers(&app.db, user, &pairs).await?;
        let readable: HashSet<PackageId> = ids
            .iter()
            .zip(decisions)
            .filter_map(|(id, d)| d.then_some(*id))
            .collect();
        rows.retain(|r| readable.contains(&r.id));
    }
    Ok(packages::finish_list(rows, filter.latest))
}

/// What sync needs to judge `ACCESS_DENIED`: `None` when access is not limited.
#[derive(Clone, Debug, Default)]
pub struct SyncAccess {
    /// Every stored grant of the user (judged at each answer's time).
    pub grants: Vec<Grant>,
    /// The token's grants (in force now).
    pub token: Vec<GrantTarget>,
}

impl SyncAccess {
    pub fn covers_at(&self, question: QuestionScope, at: chrono::DateTime<Utc>) -> bool {
        super::covered_at(&self.grants, &self.token, question, at)
    }
}

/// The grants sync judges a batch with, read once per batch from the database (never a
/// cached copy: an answer is refused only on the database's word).
pub async fn sync_access(
    db: &DatabaseConnection,
    cache: &AccessCache,
    user: &AuthUser,
) -> AppResult<Option<SyncAccess>> {
    if !cache.restricts(user) {
        return Ok(None);
    }
    Ok(Some(SyncAccess {
        grants: grants::list(db, user.id).await?,
        token: user.access.as_deref().unwrap_or(&[]).to_vec(),
    }))
}

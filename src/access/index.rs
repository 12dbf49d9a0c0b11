//! The question → package index (`package_questions`): written with each package, filled
//! at start-up for packages built before it existed. It answers which questions a package
//! holds (for coverage) and which packages hold a question (for retired questions in
//! sync) by indexed reads, never by scanning package JSON.
use std::collections::{HashMap, HashSet};

use entity::{PackageId, QuestionId};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
    Set, TransactionTrait,
};

use super::QuestionScope;
use entity::{package_question, test_package};

/// One question of a package, as snapshotted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRow {
    pub question_id: QuestionId,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
}

/// Rows per insert statement: well under both backends' bound-parameter limits.
const INSERT_CHUNK: usize = 1000;

/// Writes a package's index rows (in the caller's transaction).
pub async fn insert(
    db: &impl ConnectionTrait,
    package_id: PackageId,
    rows: &[IndexRow],
) -> Result<(), DbErr> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let models = chunk.iter().map(|r| package_question::ActiveModel {
            package_id: Set(package_id),
            question_id: Set(r.question_id),
            year_id: Set(r.year_id),
            block_id: Set(r.block_id),
            theme_id: Set(r.theme_id),
        });
        package_question::Entity::insert_many(models)
            .on_conflict_do_nothing()
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Indexes every package that has no index rows yet (those built before the index
/// existed), from its stored snapshots. Run at start-up; a no-op once done.
pub async fn backfill(db: &DatabaseConnection) -> Result<usize, DbErr> {
    let indexed: HashSet<PackageId> = package_question::Entity::find()
        .select_only()
        .column(package_question::Column::PackageId)
        .distinct()
        .into_tuple()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let all: Vec<PackageId> = test_package::Entity::find()
        .select_only()
        .column(test_package::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let mut done = 0;
    for id in all.into_iter().filter(|id| !indexed.contains(id)) {
        if !index_package(db, id).await?.is_empty() {
            done += 1;
        }
    }
    if done > 0 {
        tracing::info!(packages = done, "indexed the questions of older packages");
    }
    Ok(done)
}

/// Indexes one package from its stored snapshots (idempotent) and returns its rows; empty
/// for an unknown package. Also how a package built by an older binary during a rolling
/// upgrade gets indexed on first use.
pub async fn index_package(db: &DatabaseConnection, id: PackageId) -> Result<Vec<IndexRow>, DbErr> {
    let Some(json) = crate::packages::load_questions_json(db, &[id])
        .await
        .map_err(|e| DbErr::Custom(e.operator_message()))?
        .remove(&id)
    else {
        return Ok(Vec::new());
    };
    let snapshots = crate::packages::parse_snapshots(&json)
        .map_err(|e| DbErr::Custom(format!("package {id}: {}", e.operator_message())))?;
    let rows: Vec<IndexRow> = snapshots
        .iter()
        .map(|s| IndexRow {
            question_id: s.question_id,
            year_id: s.year_id,
            block_id: s.block_id,
            theme_id: s.theme_id,
        })
        .collect();
    let txn = db.begin().await?;
    insert(&txn, id, &rows).await?;
    txn.commit().await?;
    Ok(rows)
}

/// The distinct scopes of the questions of some packages: all coverage needs to know of
/// a package.
pub async fn question_scopes(
    db: &impl ConnectionTrait,
    package_ids: &[PackageId],
) -> Result<HashMap<PackageId, Vec<QuestionScope>>, DbErr> {
    let mut out: HashMap<PackageId, Vec<QuestionScope>> = HashMap::new();
    for chunk in package_ids.chunks(INSERT_CHUNK) {
        let rows: Vec<(PackageId, i32, Option<i32>, Option<i32>)> =
            package_question::Entity::find()
                .select_only()
                .column(package_question::Column::PackageId)
                .column(package_question::Column::YearId)
                .column(package_question::Column::BlockId)
                .column(package_question::Column::ThemeId)
                .distinct()
                .filter(package_question::Column::PackageId.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(db)
                .await?;
        for (package_id, year_id, block_id, theme_id) in rows {
            out.entry(package_id).or_default().push(QuestionScope {
                year_id,
                block_id,
                theme_id,
            });
        }
    }
    for scopes in out.values_mut() {
        scopes.sort_unstable();
    }
    Ok(out)
}

/// Which of these questions some published package holds (withdrawn ones included: sync
/// still scores against them).
pub async fn in_published_packages(
    db: &impl ConnectionTrait,
    question_ids: &[QuestionId],
) -> Result<HashSet<QuestionId>, DbErr> {
    let mut found = HashSet::new();
    for chunk in question_ids.chunks(INSERT_CHUNK) {
        let published: Vec<QuestionId> = package_question::Entity::find()
            .select_only()
            .column(package_question::Column::QuestionId)
            .distinct()
            .filter(package_question::Column::QuestionId.is_in(chunk.iter().copied()))
            .filter(
                package_question::Column::PackageId.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(test_package::Column::Id)
                        .from(test_package::Entity)
                        .and_where(test_package::Column::IsPublished.eq(true))
                        .to_owned(),
                ),
            )
            .into_tuple()
            .all(db)
            .await?;
        found.extend(published);
    }
    Ok(found)
}

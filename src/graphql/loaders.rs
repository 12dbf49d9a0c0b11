//! DataLoaders: per-item lookups batched into one query per request.
use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::{DataLoader, Loader};
use entity::PackageId;
use sea_orm::DatabaseConnection;

use crate::{
    app::AppState,
    error::AppError,
    packages::{self, Snapshot},
};

/// The loaders of one schema (shared by all requests: they batch within a tick). They
/// keep no cache of their own.
pub struct Loaders {
    pub package_questions: DataLoader<PackageQuestionsLoader>,
}

pub fn loaders(state: &AppState) -> Loaders {
    Loaders {
        package_questions: DataLoader::new(
            PackageQuestionsLoader {
                db: state.db.clone(),
            },
            tokio::spawn,
        ),
    }
}

/// A loader failure, clonable as DataLoader requires; turned back into an `AppError`.
#[derive(Clone, Debug)]
pub struct LoadError {
    transient: bool,
    message: String,
}

impl From<AppError> for LoadError {
    fn from(e: AppError) -> Self {
        LoadError {
            transient: matches!(e, AppError::Unavailable { .. }),
            message: e.to_string(),
        }
    }
}

impl From<LoadError> for AppError {
    fn from(e: LoadError) -> Self {
        if e.transient {
            AppError::unavailable()
        } else {
            AppError::internal(e.message)
        }
    }
}

/// The question snapshots of packages (`TestPackage.questions`): one query for all the
/// packages of a response, and only when `questions` is selected.
pub struct PackageQuestionsLoader {
    db: DatabaseConnection,
}

impl Loader<PackageId> for PackageQuestionsLoader {
    type Value = Arc<Vec<Snapshot>>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[PackageId],
    ) -> Result<HashMap<PackageId, Self::Value>, Self::Error> {
        let stored = packages::load_questions_json(&self.db, keys).await?;
        let mut out = HashMap::with_capacity(stored.len());
        for (id, json) in stored {
            out.insert(id, Arc::new(packages::parse_snapshots(&json)?));
        }
        Ok(out)
    }
}

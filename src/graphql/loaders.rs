//! DataLoaders: per-item lookups batched into one query per request.
use crate::app::AppState;

/// The loaders of one schema (shared by all requests: they batch within a tick).
pub struct Loaders {}

pub fn loaders(_state: &AppState) -> Loaders {
    Loaders {}
}

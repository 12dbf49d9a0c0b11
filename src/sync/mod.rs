//! Attempt sync, exactly once (docs/api.md sections 7 and 8). REST and GraphQL parse into
//! `AttemptInput`s and call `process_batch`; only parsing and rendering differ.
pub mod batch;
pub mod changes;
pub mod heads;
pub mod model;
pub mod payload_hash;
pub mod rules;
pub mod store;
pub mod tally;

pub use batch::process_batch;
pub use model::{AttemptInput, AttemptResult, ParsedAttempt, SyncErrorCode, SyncStatus};
pub use tally::SyncState;

/// Most attempts accepted in one request.
pub const MAX_BATCH: usize = 100;

//! `syncAttempts`: parses into the shared model and calls `sync::process_batch`.
use async_graphql::{Context, InputObject, Object};
use chrono::{DateTime, FixedOffset};
use uuid::Uuid;

use super::{require_user, state, types::SyncAttemptsPayload};
use crate::sync::{self, AttemptInput, ParsedAttempt};

#[derive(InputObject)]
pub struct SyncAttemptsInput {
    pub attempts: Vec<SyncAttemptInput>,
    /// The device clock when the batch was sent (for clock-skew correction).
    pub sent_at: Option<DateTime<FixedOffset>>,
}

#[derive(InputObject)]
pub struct SyncAttemptInput {
    pub client_attempt_id: Uuid,
    pub idempotency_key: Uuid,
    pub offline_session_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub question_id: Uuid,
    pub selected_option_index: i32,
    /// Keeps the client's UTC offset (the legacy payload hash needs it).
    pub answered_at: DateTime<FixedOffset>,
    pub payload_hash: String,
    pub package_id: Option<Uuid>,
}

impl From<SyncAttemptInput> for ParsedAttempt {
    fn from(a: SyncAttemptInput) -> Self {
        ParsedAttempt::Valid(AttemptInput {
            client_attempt_id: a.client_attempt_id.into(),
            idempotency_key: a.idempotency_key.into(),
            offline_session_id: a.offline_session_id.map(Into::into),
            session_id: a.session_id.map(Into::into),
            question_id: a.question_id.into(),
            selected_option_index: i64::from(a.selected_option_index),
            answered_at: a.answered_at,
            payload_hash: a.payload_hash,
            package_id: a.package_id.map(Into::into),
        })
    }
}

#[derive(Default)]
pub struct SyncMutation;

#[Object]
impl SyncMutation {
    /// Applies queued offline attempts exactly once; one result per attempt, in order.
    async fn sync_attempts(
        &self,
        ctx: &Context<'_>,
        input: SyncAttemptsInput,
    ) -> async_graphql::Result<SyncAttemptsPayload> {
        let user = require_user(ctx)?;
        let app = state(ctx);
        let items = input
            .attempts
            .into_iter()
            .map(ParsedAttempt::from)
            .collect();
        let results = sync::process_batch(app, user, input.sent_at, items).await?;
        Ok(SyncAttemptsPayload {
            results: results.into_iter().map(Into::into).collect(),
        })
    }
}

/// Reads a `syncAttempts` `input` given as JSON through the schema's own input types and
/// scalars (what a GraphQL request's variables go through); the fuzz target's entry point.
pub fn parse_input(
    input: serde_json::Value,
) -> Result<(Option<DateTime<FixedOffset>>, Vec<ParsedAttempt>), String> {
    let value = async_graphql::Value::from_json(input).map_err(|e| e.to_string())?;
    let input = <SyncAttemptsInput as async_graphql::InputType>::parse(Some(value))
        .map_err(|e| e.into_server_error(Default::default()).message)?;
    Ok((
        input.sent_at,
        input
            .attempts
            .into_iter()
            .map(ParsedAttempt::from)
            .collect(),
    ))
}

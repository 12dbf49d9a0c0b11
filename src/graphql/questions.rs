//! `importQuestions` (admin): the same validation and transaction as the CLI import.
use async_graphql::{Context, Object};

use super::{require_admin, state};
use crate::questions::{self, ImportQuestionsPayload, QuestionInput};

#[derive(Default)]
pub struct QuestionMutation;

#[Object]
impl QuestionMutation {
    /// Upserts questions, all or nothing; ids come back in input order.
    async fn import_questions(
        &self,
        ctx: &Context<'_>,
        input: Vec<QuestionInput>,
    ) -> async_graphql::Result<ImportQuestionsPayload> {
        require_admin(ctx)?;
        Ok(questions::import_questions(&state(ctx).db, input).await?)
    }
}

//! The GraphQL schema (docs/api.md section 6), independent of the transport (`http::graphql`).
//! Resolvers are thin: they check the caller and call the rule modules.
use async_graphql::{Context, EmptySubscription, MergedObject, Schema, ServerError};

use crate::{
    app::AppState,
    auth::AuthUser,
    error::{AppError, AppResult, ErrorCode},
};

pub mod access;
pub mod changes;
pub mod cost;
pub mod document;
pub mod loaders;
pub mod packages;
pub mod questions;
pub mod sessions;
pub mod sync;
pub mod trusted_documents;
pub mod types;

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct Query(
    packages::PackageQuery,
    sessions::SessionQuery,
    access::AccessQuery,
    changes::ChangesQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct Mutation(
    sync::SyncMutation,
    sessions::SessionMutation,
    questions::QuestionMutation,
    packages::PackageMutation,
    access::AccessMutation,
);

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// The authentication outcome of the current request, put into the request data by the
/// transport: resolvers that need a user turn a failure into `UNAUTHENTICATED`.
#[derive(Clone, Debug)]
pub struct RequestAuth(pub Result<AuthUser, String>);

/// Builds the schema with the configured limits.
pub fn build_schema(state: AppState) -> AppSchema {
    let config = &state.config;
    let mut builder = Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(config.graphql_max_depth as usize)
        .limit_complexity(config.graphql_max_complexity as usize)
        .limit_recursive_depth(64)
        .limit_directives(20)
        .data(loaders::loaders(&state))
        .data(state.clone());
    if !config.introspection() {
        builder = builder.disable_introspection();
    }
    if config.production {
        builder = builder.disable_suggestions();
    }
    builder.finish()
}

/// The schema's SDL, as `schema.graphql` holds it (no server needed).
pub fn sdl() -> String {
    // `@specifiedBy` as introspection reports it (`specifiedByURL`), so the file is the
    // served schema.
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .finish()
        .sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}

/// The application state from the resolver context.
pub fn state<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub fn require_user(ctx: &Context<'_>) -> AppResult<AuthUser> {
    match ctx.data_opt::<RequestAuth>() {
        Some(RequestAuth(Ok(user))) => Ok(user.clone()),
        Some(RequestAuth(Err(reason))) => Err(AppError::Unauthenticated(reason.clone())),
        None => Err(AppError::Unauthenticated("missing bearer token".into())),
    }
}

/// The authenticated caller, who must be an admin (`FORBIDDEN` otherwise).
pub fn require_admin(ctx: &Context<'_>) -> AppResult<AuthUser> {
    let user = require_user(ctx)?;
    user.require_admin()?;
    Ok(user)
}

/// What kind of failure a GraphQL response carries, for the HTTP status.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseKind {
    /// Executed (possibly with field errors): the response has `data`.
    Ok,
    /// Refused before execution (validation, variable coercion): no `data`.
    RequestError,
}

/// Gives every error an `extensions.code`: errors raised by our resolvers already have
/// one; errors without a path come from validation (`GRAPHQL_VALIDATION_FAILED`); errors
/// coercing input values are `BAD_USER_INPUT`; anything else is internal.
pub fn classify_errors(response: &mut async_graphql::Response) -> ResponseKind {
    let mut kind = ResponseKind::Ok;
    let pre_execution = response.data == async_graphql::Value::Null;
    // Errors raised before execution carry no path, and nothing was executed.
    if pre_execution
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
    {
        kind = ResponseKind::RequestError;
    }
    for error in &mut response.errors {
        // Errors raised by our resolvers carry the AppError they came from (`?` keeps it
        // as the error's source): map it to its code here, once.
        if let Some(source) = error.source.clone()
            && let Some(app_error) = source.downcast_ref::<AppError>()
        {
            app_error.log();
            app_error.set_graphql_extensions(error.extensions.get_or_insert_with(Default::default));
            continue;
        }
        if error_code(error).is_some() {
            continue;
        }
        let code = if error.message.starts_with("Failed to parse")
            || error.message.starts_with("Invalid value")
            || error.message.starts_with("Variable ")
        {
            ErrorCode::BadUserInput
        } else if kind == ResponseKind::RequestError {
            ErrorCode::GraphqlValidationFailed
        } else {
            ErrorCode::InternalServerError
        };
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
    kind
}

fn error_code(error: &ServerError) -> Option<&async_graphql::Value> {
    error.extensions.as_ref().and_then(|ext| ext.get("code"))
}

//! GraphQL over HTTP: POST and GET (GET also serves GraphiQL to browsers), bearer auth,
//! the per-user rate limit, automatic persisted queries, and the HTTP status of errors
//! (parse and validation failures are 400).
use std::collections::HashMap;

use axum::{
    Extension,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    app::AppState,
    auth::bearer_token,
    error::{AppError, ErrorCode},
    graphql::{AppSchema, RequestAuth, ResponseKind, classify_errors},
    hashing::sha256_hex,
    http::{extract::parse_json, graphiql, middleware_layer::record_user},
    metrics,
};

/// How long a registered persisted query is kept in the cache.
const APQ_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub async fn graphql_post(
    State(state): State<AppState>,
    Extension(schema): Extension<AppSchema>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::GraphqlParseFailed,
                &e.to_string(),
                false,
            );
        }
    };
    if body.is_array() {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "batched GraphQL requests are not supported; send one operation per request",
            false,
        );
    }
    let fields = RequestFields {
        query: body.get("query").and_then(Value::as_str).map(str::to_owned),
        operation_name: body
            .get("operationName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        variables: body.get("variables").cloned().filter(|v| !v.is_null()),
        extensions: body.get("extensions").cloned().filter(|v| !v.is_null()),
    };
    execute(state, schema, headers, fields, false).await
}

pub async fn graphql_get(
    State(state): State<AppState>,
    Extension(schema): Extension<AppSchema>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && !params.contains_key("query") && !params.contains_key("extensions") {
        return graphiql::graphiql_page().await;
    }
    let parse_param = |name: &str| -> Result<Option<Value>, Box<Response>> {
        match params.get(name) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text).map(Some).map_err(|e| {
                Box::new(graphql_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    &format!("`{name}` is not valid JSON: {e}"),
                    false,
                ))
            }),
        }
    };
    let variables = match parse_param("variables") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let extensions = match parse_param("extensions") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let fields = RequestFields {
        query: params.get("query").cloned(),
        operation_name: params.get("operationName").cloned(),
        variables,
        extensions,
    };
    execute(state, schema, headers, fields, true).await
}

struct RequestFields {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<Value>,
    extensions: Option<Value>,
}

async fn execute(
    state: AppState,
    schema: AppSchema,
    headers: HeaderMap,
    fields: RequestFields,
    is_get: bool,
) -> Response {
    let query = match resolve_persisted_query(&state, &fields).await {
        Ok(query) => query,
        Err(response) => return response,
    };
    let document = match async_graphql::parser::parse_query(&query) {
        Ok(document) => document,
        Err(e) => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::GraphqlParseFailed,
                &e.to_string(),
                false,
            );
        }
    };
    // GET is for queries only: a mutation over GET could be replayed by any cache or link.
    if is_get && selects_mutation(&document, fields.operation_name.as_deref()) {
        return graphql_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "mutations must be sent with POST",
            false,
        );
    }
    if let Err(message) = check_alias_limit(&document, state.config.graphql_max_aliases as usize) {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::GraphqlValidationFailed,
            &message,
            false,
        );
    }

    let auth_header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let auth = match auth_header {
        None => Err("missing bearer token".to_owned()),
        Some(_) => match bearer_token(auth_header).and_then(|t| state.tokens.verify(t)) {
            Ok(user) => match state.users.ensure(&state.db, &user).await {
                Ok(()) => Ok(user),
                Err(e) => return app_error_response(e),
            },
            Err(e) => Err(e.to_string()),
        },
    };
    if let Ok(user) = &auth {
        record_user(user.id);
        if let Err(e) = state
            .rate_limiter
            .check(&state.cache, user.id, "graphql")
            .await
        {
            return app_error_response(e);
        }
    }

    let mut request = async_graphql::Request::new(query).data(RequestAuth(auth));
    if let Some(name) = fields.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = fields.variables {
        request = request.variables(async_graphql::Variables::from_json(variables));
    }
    let mut response = schema.execute(request).await;
    let kind = classify_errors(&mut response);
    let status = if kind == ResponseKind::ValidationFailed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = match serde_json::to_vec(&response) {
        Ok(b) => b,
        Err(e) => return app_error_response(AppError::internal(e.to_string())),
    };
    let cache_control = if is_get && response.errors.is_empty() && auth_header.is_none() {
        "public, max-age=60"
    } else {
        "private, no-store"
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                "application/graphql-response+json; charset=utf-8",
            ),
            (header::CACHE_CONTROL, cache_control),
            (header::VARY, "Accept, Authorization, Accept-Encoding"),
        ],
        body,
    )
        .into_response()
}

/// Automatic persisted queries (Apollo's protocol): a hash alone is looked up; a query
/// with a hash is checked against it and registered for every instance (through Redis).
async fn resolve_persisted_query(
    state: &AppState,
    fields: &RequestFields,
) -> Result<String, Response> {
    let persisted = fields
        .extensions
        .as_ref()
        .and_then(|e| e.get("persistedQuery"))
        .filter(|p| !p.is_null());
    let Some(persisted) = persisted else {
        return fields
            .query
            .clone()
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| {
                graphql_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "the request has no `query`",
                    false,
                )
            });
    };
    let hash = persisted
        .get("sha256Hash")
        .and_then(Value::as_str)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| {
            graphql_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "persistedQuery.sha256Hash must be 64 hex digits",
                false,
            )
        })?;
    if persisted.get("version").and_then(Value::as_i64) != Some(1) {
        return Err(graphql_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "persistedQuery.version must be 1",
            false,
        ));
    }
    let key = state.cache.key("apq", &hash);
    match &fields.query {
        Some(query) => {
            if sha256_hex(query.as_bytes()) != hash {
                return Err(graphql_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "provided sha does not match query",
                    false,
                ));
            }
            if let Err(e) = state.cache.set(&key, query, APQ_TTL).await {
                metrics::cache_fallback("apq_register", e.kind());
            }
            Ok(query.clone())
        }
        None => match state.cache.get(&key).await {
            Ok(Some(query)) => Ok(query),
            Ok(None) => Err(graphql_error(
                StatusCode::OK,
                ErrorCode::PersistedQueryNotFound,
                "PersistedQueryNotFound",
                true,
            )),
            Err(e) => {
                metrics::cache_fallback("apq_lookup", e.kind());
                Err(graphql_error(
                    StatusCode::OK,
                    ErrorCode::PersistedQueryNotFound,
                    "PersistedQueryNotFound",
                    true,
                ))
            }
        },
    }
}

/// True when the operation to run (by name, or the only one) is a mutation.
fn selects_mutation(
    document: &async_graphql::parser::types::ExecutableDocument,
    name: Option<&str>,
) -> bool {
    use async_graphql::parser::types::OperationType;
    document.operations.iter().any(|(op_name, op)| {
        let selected = match (name, op_name) {
            (Some(wanted), Some(actual)) => actual.as_str() == wanted,
            (None, _) => true,
            (Some(_), None) => false,
        };
        selected && op.node.ty == OperationType::Mutation
    })
}

/// Refuses documents with more aliased fields than allowed (cheap amplification guard).
fn check_alias_limit(
    doc: &async_graphql::parser::types::ExecutableDocument,
    max_aliases: usize,
) -> Result<(), String> {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn count(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some()) + count(&f.node.selection_set.node)
                }
                Selection::InlineFragment(f) => count(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let mut aliases: usize = doc
        .operations
        .iter()
        .map(|(_, op)| count(&op.node.selection_set.node))
        .sum();
    aliases += doc
        .fragments
        .values()
        .map(|f| count(&f.node.selection_set.node))
        .sum::<usize>();
    if aliases > max_aliases {
        return Err(format!(
            "the query uses {aliases} aliases; at most {max_aliases} are allowed"
        ));
    }
    Ok(())
}

/// A GraphQL-shaped error response (`{"errors": [...]}`) with an `extensions.code`.
fn graphql_error(status: StatusCode, code: ErrorCode, message: &str, no_store: bool) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": code}}]});
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            "application/graphql-response+json; charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response();
    let cache = if no_store {
        "no-store"
    } else {
        "private, no-store"
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache),
    );
    response
}

/// An application error before execution (rate limit, database down) as a GraphQL error.
pub(crate) fn app_error_response(error: AppError) -> Response {
    let status = match &error {
        AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    let gql = async_graphql::ErrorExtensions::extend(&error);
    let server_error = gql.into_server_error(async_graphql::Pos::default());
    let retry_after = server_error
        .extensions
        .as_ref()
        .and_then(|e| e.get("retryAfter"))
        .map(|v| v.to_string());
    let body = json!({"errors": [server_error]});
    let mut response = (
        status,
        [
            (
                header::CONTENT_TYPE,
                "application/graphql-response+json; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "private, no-store"),
        ],
        body.to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after.and_then(|s| header::HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, secs);
    }
    response
}

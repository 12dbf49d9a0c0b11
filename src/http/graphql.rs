//! GraphQL over HTTP (the GraphQL-over-HTTP specification, September 2026 release): POST
//! and GET (GET also serves GraphiQL to browsers), media-type negotiation, bearer auth,
//! the per-user rate limit, automatic persisted queries or trusted documents, the checks
//! that run before the schema sees a document, and the HTTP status of every outcome.
//!
//! Statuses: a malformed HTTP request (not JSON, parameters of the wrong JSON type, no
//! query) is `400`; a document refused before execution (parse, limits, validation,
//! variable coercion, persisted-query misses, trusted-document refusals) has no `data`
//! and is `400` with `application/graphql-response+json`, `200` with `application/json`
//! (the specification's rule for legacy clients); a response with `data` is `200`.
use std::collections::HashMap;

use axum::{
    Extension,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use crate::{
    app::AppState,
    auth::{AuthUser, bearer_token},
    error::{AppError, ErrorCode},
    graphql::{AppSchema, RequestAuth, ResponseKind, classify_errors, cost, document},
    hashing::sha256_hex,
    http::{
        graphiql,
        middleware_layer::{ClientAddr, check_anonymous, record_user},
    },
    metrics,
};

/// Every response varies with these request headers (the media type with `Accept`).
const VARY: &str = "Accept, Authorization, Accept-Encoding";

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The media type of a GraphQL response, negotiated from `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMedia {
    /// `application/graphql-response+json`: the status tells request errors apart.
    GraphqlResponseJson,
    /// `application/json`: every well-formed GraphQL request gets `200`.
    Json,
}

impl ResponseMedia {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            ResponseMedia::GraphqlResponseJson => {
                "application/graphql-response+json; charset=utf-8"
            }
            ResponseMedia::Json => "application/json; charset=utf-8",
        })
    }

    /// The status of a document refused before execution (the response has no `data`).
    fn request_error_status(self) -> StatusCode {
        match self {
            ResponseMedia::GraphqlResponseJson => StatusCode::BAD_REQUEST,
            ResponseMedia::Json => StatusCode::OK,
        }
    }
}

/// Picks the response media type for an `Accept` header; `None` when neither GraphQL
/// media type is acceptable (`406`).
///
/// The highest `q` wins. On a tie a type named exactly beats one reached through a
/// wildcard, and `application/graphql-response+json` beats `application/json` only when
/// named: `*/*` and a missing `Accept` get `application/json`, which every client reads.
pub fn negotiate(accept: Option<&str>) -> Option<ResponseMedia> {
    let accept = match accept.map(str::trim) {
        None | Some("") => return Some(ResponseMedia::Json),
        Some(a) => a,
    };
    // (q, specificity) of each of our types: 2 exact, 1 `application/*`, 0 `*/*`.
    let mut best: [Option<(f32, u8)>; 2] = [None, None];
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = value.trim().parse().unwrap_or(0.0);
            }
        }
        for (index, ours) in [GRAPHQL_RESPONSE_JSON, JSON].into_iter().enumerate() {
            let specificity = match essence.as_str() {
                e if e == ours => 2,
                "application/*" => 1,
                "*/*" => 0,
                _ => continue,
            };
            // The most specific matching range decides a type's q (RFC 9110 12.5.1).
            if best[index].is_none_or(|(_, s)| specificity > s) {
                best[index] = Some((q, specificity));
            }
        }
    }
    let score = |b: Option<(f32, u8)>| b.filter(|(q, _)| *q > 0.0);
    match (score(best[0]), score(best[1])) {
        (None, None) => None,
        (Some(_), None) => Some(ResponseMedia::GraphqlResponseJson),
        (None, Some(_)) => Some(ResponseMedia::Json),
        (Some((qg, sg)), Some((qj, sj))) => {
            if qg > qj || (qg == qj && sg == 2 && sg >= sj) {
                Some(ResponseMedia::GraphqlResponseJson)
            } else {
                Some(ResponseMedia::Json)
            }
        }
    }
}

/// True for `application/json` with no charset or UTF-8 (the only request encoding).
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    if !parts
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(JSON))
    {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    })
}

fn accept_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ACCEPT)
        .map(|v| v.to_str().unwrap_or("invalid"))
}

pub async fn graphql_post(
    State(state): State<AppState>,
    Extension(schema): Extension<AppSchema>,
    client: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(media) = negotiate(accept_header(&headers)) else {
        return not_acceptable();
    };
    if !is_json_content_type(&headers) {
        return refusal(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the request with `Content-Type: application/json`",
        );
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refusal(
                media,
                StatusCode::BAD_REQUEST,
                ErrorCode::GraphqlParseFailed,
                &format!("the request body is not JSON: {e}"),
            );
        }
    };
    let object = match body {
        Value::Object(object) => object,
        Value::Array(_) => {
            return refusal(
                media,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "batched GraphQL requests are not supported; send one operation per request",
            );
        }
        _ => {
            return refusal(
                media,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "the request body must be a JSON object",
            );
        }
    };
    let fields = match RequestFields::from_post(object) {
        Ok(fields) => fields,
        Err(message) => {
            return refusal(
                media,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &message,
            );
        }
    };
    let client = client.map(|Extension(info)| ClientAddr(info.0.ip()));
    execute(state, schema, headers, client, fields, media, false).await
}

pub async fn graphql_get(
    State(state): State<AppState>,
    Extension(schema): Extension<AppSchema>,
    client: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let accept = accept_header(&headers);
    let wants_html = accept.is_some_and(|v| v.contains("text/html"));
    if wants_html && !params.contains_key("query") && !params.contains_key("extensions") {
        return graphiql::graphiql_page().await;
    }
    let Some(media) = negotiate(accept) else {
        return not_acceptable();
    };
    let fields = match RequestFields::from_get(params) {
        Ok(fields) => fields,
        Err(message) => {
            return refusal(
                media,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &message,
            );
        }
    };
    let client = client.map(|Extension(info)| ClientAddr(info.0.ip()));
    execute(state, schema, headers, client, fields, media, true).await
}

/// The GraphQL request parameters, each of its JSON type.
struct RequestFields {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<Map<String, Value>>,
    extensions: Option<Map<String, Value>>,
}

impl RequestFields {
    /// From a POST body: `query` and `operationName` strings, `variables` and
    /// `extensions` objects; each may be `null` or absent.
    fn from_post(mut body: Map<String, Value>) -> Result<Self, String> {
        let mut string = |name: &str| match body.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{name}` must be a string")),
        };
        let query = string("query")?;
        let operation_name = string("operationName")?;
        let mut object = |name: &str| match body.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(format!("`{name}` must be an object")),
        };
        Ok(RequestFields {
            query,
            operation_name,
            variables: object("variables")?,
            extensions: object("extensions")?,
        })
    }

    /// From GET parameters: `variables` and `extensions` are JSON-encoded objects.
    fn from_get(mut params: HashMap<String, String>) -> Result<Self, String> {
        let mut object = |name: &str| -> Result<Option<Map<String, Value>>, String> {
            match params.remove(name) {
                None => Ok(None),
                Some(text) => match serde_json::from_str(&text) {
                    Ok(Value::Object(o)) => Ok(Some(o)),
                    Ok(Value::Null) => Ok(None),
                    Ok(_) => Err(format!("`{name}` must be a JSON object")),
                    Err(e) => Err(format!("`{name}` is not valid JSON: {e}")),
                },
            }
        };
        let variables = object("variables")?;
        let extensions = object("extensions")?;
        Ok(RequestFields {
            query: params.remove("query"),
            operation_name: params.remove("operationName"),
            variables,
            extensions,
        })
    }
}

/// Where the document text came from, which decides what may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DocumentSource {
    /// No trusted documents configured: any document (APQ included).
    Open,
    /// A trusted document, by id or by its exact text.
    Listed,
    /// Other text while trusted documents are on: only introspection may run.
    Unlisted,
}

/// A refusal before execution: its status, code and message.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// `no-store` (not even private caches): persisted-query misses must never be reused.
    no_store: bool,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadUserInput,
            message: message.into(),
            no_store: false,
        }
    }

    /// A document refused before execution: its status depends on the media type.
    fn document(media: ResponseMedia, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            status: media.request_error_status(),
            code,
            message: message.into(),
            no_store: false,
        }
    }

    fn into_response(self, media: ResponseMedia) -> Response {
        let mut response = refusal(media, self.status, self.code, &self.message);
        if self.no_store {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }
}

/// A document ready to run: its text, parsed, and whether to register it for automatic
/// persisted queries once it has validated for an authenticated caller.
struct Prepared {
    query: String,
    parsed: async_graphql::parser::types::ExecutableDocument,
    register_apq: Option<String>,
}

async fn execute(
    state: AppState,
    schema: AppSchema,
    headers: HeaderMap,
    client: Option<ClientAddr>,
    fields: RequestFields,
    media: ResponseMedia,
    is_get: bool,
) -> Response {
    // A request without a token is counted before its document costs anything; one whose
    // token fails verification is counted once it is verified (`run`).
    if !headers.contains_key(header::AUTHORIZATION)
        && let Err(e) = check_anonymous(&state, client)
    {
        return app_error_response(media, e);
    }
    match prepare(&state, &fields, media, is_get).await {
        Ok(prepared) => {
            run(
                state, schema, headers, client, fields, media, is_get, prepared,
            )
            .await
        }
        Err(Refused::Document(refused)) => {
            metrics::graphql_refused(refused.code.as_str());
            refused.into_response(media)
        }
        Err(Refused::App(error)) => app_error_response(media, error),
    }
}

/// Why a document does not run: refused, or the server could not judge it.
enum Refused {
    Document(Refusal),
    App(AppError),
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused::Document(refusal)
    }
}

/// Everything before authentication: the document's text (persisted or trusted), the
/// nesting scan, parsing, the safelist, GET's no-mutation rule, the alias limit, the
/// node limit and the one-`syncAttempts` rule.
async fn prepare(
    state: &AppState,
    fields: &RequestFields,
    media: ResponseMedia,
    is_get: bool,
) -> Result<Prepared, Refused> {
    let (query, source, register_apq) = resolve_document(state, fields, media).await?;
    // A flat scan first: hostile nesting or size never reaches the recursive parser.
    document::check_size(&query, document::MAX_NESTING, document::MAX_TOKENS)
        .map_err(|message| Refusal::document(media, ErrorCode::GraphqlValidationFailed, message))?;
    let parsed = async_graphql::parser::parse_query(document::strip_comments(&query)).map_err(
        |e| match e {
            // The parser's own depth limit is a limit like the others.
            async_graphql::parser::Error::RecursionLimitExceeded => Refusal::document(
                media,
                ErrorCode::GraphqlValidationFailed,
                "the document nests too deeply",
            ),
            other => Refusal::document(
                media,
                ErrorCode::GraphqlParseFailed,
                parse_error_message(&other),
            ),
        },
    )?;
    if source == DocumentSource::Unlisted
        && !(state.config.introspection()
            && document::is_introspection_only(&parsed, fields.operation_name.as_deref()))
    {
        return Err(Refusal::document(
            media,
            ErrorCode::QueryNotInSafelist,
            "this operation is not in the server's trusted documents",
        )
        .into());
    }
    // GET is for queries only: a mutation over GET could be replayed by any cache or link.
    if is_get && document::selects_mutation(&parsed, fields.operation_name.as_deref()) {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: ErrorCode::BadUserInput,
            message: "mutations must be sent with POST".into(),
            no_store: false,
        }
        .into());
    }
    document::check_alias_limit(&parsed, state.config.graphql_max_aliases as usize)
        .map_err(|message| Refusal::document(media, ErrorCode::GraphqlValidationFailed, message))?;
    let operation = fields.operation_name.as_deref();
    if cost::root_field_keys(&parsed, operation, "syncAttempts") > 1 {
        return Err(Refusal::document(
            media,
            ErrorCode::GraphqlValidationFailed,
            "an operation may select `syncAttempts` once; send one batch per request",
        )
        .into());
    }
    let sizes = if cost::needs_package_sizes(&parsed, operation) {
        let totals = state
            .packages
            .published_totals(&state.db)
            .await
            .map_err(Refused::App)?;
        cost::ListSizes {
            packages: totals.packages,
            total_questions: totals.questions,
            max_questions: totals.max_questions,
        }
    } else {
        cost::ListSizes::default()
    };
    let nodes = cost::node_count(&parsed, operation, &sizes);
    let max_nodes = state.config.graphql_max_nodes;
    if nodes > max_nodes {
        return Err(Refusal::document(
            media,
            ErrorCode::GraphqlValidationFailed,
            format!(
                "the answer could hold {nodes} list items; at most {max_nodes} are allowed \
                 (select fewer packages or questions, or fewer aliases)"
            ),
        )
        .into());
    }
    Ok(Prepared {
        query,
        parsed,
        register_apq,
    })
}

/// A parse error without the document's text: where, not what (a hostile document must
/// not come back in its own error).
fn parse_error_message(error: &async_graphql::parser::Error) -> String {
    match error.positions().next() {
        Some(pos) => format!(
            "the document does not parse (line {}, column {})",
            pos.line, pos.column
        ),
        None => "the document does not parse".to_owned(),
    }
}

/// Most errors one response carries, and the longest message: an error response stays
/// a few kilobytes whatever the document (a message may quote a field name of any length).
const MAX_ERRORS: usize = 10;
const MAX_ERROR_MESSAGE: usize = 300;

/// Cuts the errors of a response to their bounds.
fn bound_errors(errors: &mut Vec<async_graphql::ServerError>) {
    errors.truncate(MAX_ERRORS);
    for error in errors {
        if error.message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !error.message.is_char_boundary(end) {
                end -= 1;
            }
            error.message.truncate(end);
            error.message.push('…');
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: AppState,
    schema: AppSchema,
    headers: HeaderMap,
    client: Option<ClientAddr>,
    fields: RequestFields,
    media: ResponseMedia,
    is_get: bool,
    prepared: Prepared,
) -> Response {
    let Prepared {
        query,
        parsed,
        register_apq,
    } = prepared;
    let auth_header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let auth = match authenticate(&state, auth_header, client).await {
        Ok(auth) => auth,
        Err(e) => return app_error_response(media, e),
    };
    let authenticated = auth.is_ok();
    // Registered only once it has validated, so only the text is needed past this point.
    let apq_text = register_apq.as_ref().map(|_| query.clone());
    let request = graphql_request(query, parsed, fields, auth);
    let mut response = schema.execute(request).await;
    let kind = classify_errors(&mut response);
    bound_errors(&mut response.errors);
    if let (Some(hash), Some(text), true) = (register_apq, apq_text, authenticated)
        && kind == ResponseKind::Ok
    {
        state.cache.apq_register(&hash, &text).await;
    }
    // Only an anonymous, error-free query over GET may be kept by shared caches.
    let shareable = is_get && response.errors.is_empty() && auth_header.is_none();
    render(&response, kind, media, shareable)
}

/// Who is calling: a verified user (known to the database, within the rate limit), or why
/// not (the schema answers `UNAUTHENTICATED` where a field needs a user). A refusal that
/// ends the request (rate limit, a fault) is the error.
async fn authenticate(
    state: &AppState,
    auth_header: Option<&str>,
    client: Option<ClientAddr>,
) -> Result<Result<AuthUser, String>, AppError> {
    let Some(_) = auth_header else {
        return Ok(Err("missing bearer token".to_owned()));
    };
    match bearer_token(auth_header).and_then(|t| state.tokens.verify(t)) {
        Ok(user) => {
            state
                .users
                .ensure(&state.db, &user, state.primary.timeline())
                .await?;
            record_user(user.id.into());
            state
                .rate_limiter
                .check(&state.cache, user.id, "graphql")
                .await?;
            Ok(Ok(user))
        }
        Err(e) => {
            // A token that fails verification counts as a request without one.
            check_anonymous(state, client)?;
            Ok(Err(e.to_string()))
        }
    }
}

/// The request the schema runs: the document parsed once (the checks looked at this very
/// document), its operation, variables and the caller.
fn graphql_request(
    query: String,
    parsed: async_graphql::parser::types::ExecutableDocument,
    fields: RequestFields,
    auth: Result<AuthUser, String>,
) -> async_graphql::Request {
    let mut request = async_graphql::Request::new(query).data(RequestAuth(auth));
    request.set_parsed_query(parsed);
    if let Some(name) = fields.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = fields.variables {
        request = request.variables(async_graphql::Variables::from_json(Value::Object(
            variables,
        )));
    }
    request
}

/// The HTTP response of an executed (or schema-refused) document.
fn render(
    response: &async_graphql::Response,
    kind: ResponseKind,
    media: ResponseMedia,
    shareable: bool,
) -> Response {
    let mut body = match serde_json::to_value(response) {
        Ok(b) => b,
        Err(e) => return app_error_response(media, AppError::internal(e.to_string())),
    };
    let status = if kind == ResponseKind::RequestError {
        if let Some(code) = response
            .errors
            .first()
            .and_then(|e| e.extensions.as_ref())
            .and_then(|ext| ext.get("code"))
            .and_then(|code| match code {
                async_graphql::Value::String(s) => Some(s.as_str()),
                _ => None,
            })
        {
            metrics::graphql_refused(refused_code(code));
        }
        // Nothing was executed: the response has no `data` entry.
        if let Value::Object(object) = &mut body {
            object.remove("data");
        }
        media.request_error_status()
    } else {
        StatusCode::OK
    };
    let cache_control = if shareable {
        "public, max-age=60"
    } else {
        "private, no-store"
    };
    let mut response = (status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, media.content_type());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    response
}

/// The metrics label of a refusal found by the schema (a fixed set).
fn refused_code(code: &str) -> &'static str {
    [ErrorCode::GraphqlValidationFailed, ErrorCode::BadUserInput]
        .into_iter()
        .map(ErrorCode::as_str)
        .find(|known| *known == code)
        .unwrap_or("OTHER")
}

/// The document to run: with trusted documents, a listed one (by id or exact text) or
/// other text that must turn out to be introspection; otherwise the query text or an
/// automatic persisted query.
async fn resolve_document(
    state: &AppState,
    fields: &RequestFields,
    media: ResponseMedia,
) -> Result<(String, DocumentSource, Option<String>), Refusal> {
    let hash = persisted_query_hash(fields)?;
    if let Some(trusted) = &state.trusted_documents {
        return match (&hash, &fields.query) {
            // An id alone: the listed body, or nothing.
            (Some(hash), None) => match trusted.body(hash) {
                Some(body) => Ok((body.to_owned(), DocumentSource::Listed, None)),
                None => Err(Refusal::document(
                    media,
                    ErrorCode::PersistedQueryNotInList,
                    "PersistedQueryNotInList",
                )),
            },
            // Text with its id (an APQ registration): checked, then judged as text, so
            // registration can never add an operation.
            (Some(hash), Some(query)) => {
                if sha256_hex(query.as_bytes()) != *hash {
                    return Err(Refusal::bad_request("provided sha does not match query"));
                }
                let source = if trusted.body(hash).is_some() {
                    DocumentSource::Listed
                } else {
                    DocumentSource::Unlisted
                };
                Ok((query.clone(), source, None))
            }
            (None, Some(query)) if !query.trim().is_empty() => {
                let source = if trusted.contains_body(query) {
                    DocumentSource::Listed
                } else {
                    DocumentSource::Unlisted
                };
                Ok((query.clone(), source, None))
            }
            (None, _) => Err(Refusal::bad_request("the request has no `query`")),
        };
    }
    let Some(hash) = hash else {
        return fields
            .query
            .clone()
            .filter(|q| !q.trim().is_empty())
            .map(|q| (q, DocumentSource::Open, None))
            .ok_or_else(|| Refusal::bad_request("the request has no `query`"));
    };
    // Automatic persisted queries (Apollo's protocol): a hash alone is looked up; a query
    // with a hash is checked against it, and registered for every instance (through
    // Redis) once it has validated for an authenticated caller (`run`).
    match &fields.query {
        Some(query) => {
            if sha256_hex(query.as_bytes()) != hash {
                return Err(Refusal::bad_request("provided sha does not match query"));
            }
            Ok((query.clone(), DocumentSource::Open, Some(hash)))
        }
        None => {
            let found = state.cache.apq_lookup(&hash).await;
            found
                .map(|q| (q, DocumentSource::Open, None))
                .ok_or_else(|| Refusal {
                    no_store: true,
                    ..Refusal::document(
                        media,
                        ErrorCode::PersistedQueryNotFound,
                        "PersistedQueryNotFound",
                    )
                })
        }
    }
}

/// `extensions.persistedQuery.sha256Hash` (lowercased), when the request has one.
fn persisted_query_hash(fields: &RequestFields) -> Result<Option<String>, Refusal> {
    let persisted = fields
        .extensions
        .as_ref()
        .and_then(|e| e.get("persistedQuery"))
        .filter(|p| !p.is_null());
    let Some(persisted) = persisted else {
        return Ok(None);
    };
    let hash = persisted
        .get("sha256Hash")
        .and_then(Value::as_str)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| Refusal::bad_request("persistedQuery.sha256Hash must be 64 hex digits"))?;
    if persisted.get("version").and_then(Value::as_i64) != Some(1) {
        return Err(Refusal::bad_request("persistedQuery.version must be 1"));
    }
    Ok(Some(hash))
}

/// A GraphQL-shaped error response (`{"errors": [...]}`, no `data`) with an
/// `extensions.code`.
fn refusal(media: ResponseMedia, status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": code.as_str()}}]});
    let mut response = (status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, media.content_type());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

/// `406`: the client accepts neither GraphQL media type. The body is plain JSON, the
/// most widely readable choice when the client accepts nothing we serve.
fn not_acceptable() -> Response {
    let mut response = refusal(
        ResponseMedia::Json,
        StatusCode::NOT_ACCEPTABLE,
        ErrorCode::NotAcceptable,
        "accept application/graphql-response+json or application/json",
    );
    metrics::graphql_refused("NOT_ACCEPTABLE");
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static(VARY));
    response
}

/// An application error before execution (rate limit, database down) as a GraphQL
/// error, with that error's HTTP status (the response has no `data`).
pub(crate) fn app_error_response(media: ResponseMedia, error: AppError) -> Response {
    let status = error.status();
    let gql = async_graphql::ErrorExtensions::extend(&error);
    let server_error = gql.into_server_error(async_graphql::Pos::default());
    let retry_after = server_error
        .extensions
        .as_ref()
        .and_then(|e| e.get("retryAfter"))
        .map(|v| v.to_string());
    let body = json!({"errors": [server_error]});
    let mut response = (status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, media.content_type());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    if let Some(secs) = retry_after.and_then(|s| HeaderValue::from_str(&s).ok()) {
        h.insert(header::RETRY_AFTER, secs);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_response_media_type() {
        use ResponseMedia::*;
        assert_eq!(negotiate(None), Some(Json));
        assert_eq!(negotiate(Some("")), Some(Json));
        assert_eq!(negotiate(Some("*/*")), Some(Json));
        assert_eq!(negotiate(Some("application/*")), Some(Json));
        assert_eq!(negotiate(Some("application/json")), Some(Json));
        assert_eq!(
            negotiate(Some("application/graphql-response+json")),
            Some(GraphqlResponseJson)
        );
        // Apollo Client and Apollo Kotlin.
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json,application/json;q=0.9"
            )),
            Some(GraphqlResponseJson)
        );
        assert_eq!(
            negotiate(Some(
                "multipart/mixed;deferSpec=20220824, application/graphql-response+json, application/json"
            )),
            Some(GraphqlResponseJson)
        );
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json;q=0.5, application/json"
            )),
            Some(Json)
        );
        assert_eq!(
            negotiate(Some("application/graphql-response+json, */*;q=0.1")),
            Some(GraphqlResponseJson)
        );
        assert_eq!(
            negotiate(Some("text/html,application/xhtml+xml,*/*;q=0.8")),
            Some(Json)
        );
        // A refused type stays refused even when a wildcard would match it.
        assert_eq!(
            negotiate(Some("application/json;q=0, */*")),
            Some(GraphqlResponseJson)
        );
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("application/xml, text/plain")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
    }

    #[test]
    fn json_content_type_allows_only_utf8() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=UTF-8"));
        assert!(with("application/json; charset=\"utf-8\""));
        assert!(!with("application/json; charset=latin1"));
        assert!(!with("text/plain"));
        assert!(!with("application/graphql"));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn post_parameters_of_the_wrong_type_are_refused() {
        let parse = |v: Value| match v {
            Value::Object(o) => RequestFields::from_post(o),
            _ => unreachable!(),
        };
        assert!(parse(json!({"query": "{ a }", "variables": null, "extensions": null, "operationName": null})).is_ok());
        for bad in [
            json!({"query": 1}),
            json!({"query": "{ a }", "operationName": false}),
            json!({"query": "{ a }", "variables": "x"}),
            json!({"query": "{ a }", "variables": []}),
            json!({"query": "{ a }", "extensions": 0}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        let get = |pairs: &[(&str, &str)]| {
            RequestFields::from_get(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert!(get(&[("query", "{ a }"), ("variables", "{\"x\": 1}")]).is_ok());
        assert!(get(&[("query", "{ a }"), ("variables", "[1]")]).is_err());
        assert!(get(&[("query", "{ a }"), ("extensions", "nope")]).is_err());
    }
}

//! `GET /api/v1/sync/changes?since=&limit=`: the pull feed (`sync::changes`), snake_case.
use std::borrow::Cow;

use axum::{
    body::Body,
    extract::{FromRequestParts, RawQuery, Request, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::AppError,
    sync::{
        changes::{self, Page, PulledAnswer},
        payload_hash::to_iso_string,
    },
};
use entity::{SessionMode, SessionStatus, test_session};

/// The query of the route, as the OpenAPI document describes it (`read_query` reads it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The `cursor` of the previous page; absent or empty: from the beginning (a restore).
    pub since: Option<String>,
    /// Items per page, sessions and answers together (default 500).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// One page of the caller's changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesResponse {
    pub sessions: Vec<PulledSession>,
    pub answers: Vec<PulledAnswerBody>,
    /// Opaque: send it as `since` for the next page, and after the next sync.
    pub cursor: String,
    /// More changes are ready now: ask again with `cursor`.
    pub has_more: bool,
}

/// A session as it is now.
#[derive(Debug, Serialize, ToSchema)]
pub struct PulledSession {
    pub server_session_id: Uuid,
    pub offline_session_id: Option<Uuid>,
    pub mode: SessionMode,
    pub status: SessionStatus,
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub total_questions: i32,
    pub answered_count: i32,
    pub correct_count: i32,
    pub started_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
}

/// The current answer to one question in one session.
#[derive(Debug, Serialize, ToSchema)]
pub struct PulledAnswerBody {
    pub server_session_id: Uuid,
    pub question_id: Uuid,
    pub package_id: Option<Uuid>,
    pub selected_option_index: i32,
    /// The corrected time the server ordered by, UTC, written as the payload hash writes it.
    pub answered_at: String,
    pub is_correct: bool,
    pub changed_count: i32,
    pub server_attempt_id: Uuid,
}

impl From<test_session::Model> for PulledSession {
    fn from(s: test_session::Model) -> Self {
        PulledSession {
            server_session_id: s.id.into(),
            offline_session_id: s.offline_session_id.map(Uuid::from),
            mode: s.mode,
            status: s.status,
            year_id: s.year,
            block_id: s.block_id,
            theme_id: s.theme_id,
            total_questions: s.total_questions,
            answered_count: s.answered_count,
            correct_count: s.correct_count,
            started_at: s.started_at,
            submitted_at: s.submitted_at,
        }
    }
}

impl From<PulledAnswer> for PulledAnswerBody {
    fn from(p: PulledAnswer) -> Self {
        let a = p.answer;
        PulledAnswerBody {
            server_session_id: a.session_id.into(),
            question_id: a.question_id.into(),
            package_id: p.package_id.map(Uuid::from),
            selected_option_index: a.selected_option_index,
            answered_at: to_iso_string(&a.answered_at),
            is_correct: a.is_correct,
            changed_count: a.changed_count,
            server_attempt_id: a.attempt_id.into(),
        }
    }
}

impl From<Page> for ChangesResponse {
    fn from(page: Page) -> Self {
        ChangesResponse {
            sessions: page.sessions.into_iter().map(Into::into).collect(),
            answers: page.answers.into_iter().map(Into::into).collect(),
            cursor: page.cursor,
            has_more: page.has_more,
        }
    }
}

/// Most pulls find nothing: an empty page is this long but for its cursor.
const EMPTY_PAGE_BYTES: usize =
    r#"{"sessions":[],"answers":[],"cursor":"","has_more":false}"#.len();

/// JSON, as axum's `Json` writes it, into a buffer that holds an empty page at once (axum's
/// starts smaller and grows through a writer: a measurable share of a pull that finds
/// nothing, the request every phone makes after every sync).
impl IntoResponse for ChangesResponse {
    fn into_response(self) -> Response {
        let body = match self.empty_page_json() {
            Some(body) => body,
            None => {
                let mut body = Vec::with_capacity(EMPTY_PAGE_BYTES + self.cursor.len());
                if let Err(e) = serde_json::to_writer(&mut body, &self) {
                    return AppError::internal(e.to_string()).into_response();
                }
                body
            }
        };
        let mut response = Response::new(Body::from(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl ChangesResponse {
    /// An empty page written as serde writes it, without serde: the page most pulls get
    /// holds nothing but its cursor, which (base64url, whether minted here or sent back as
    /// `since` and decoded) needs no escaping. `None` for anything else.
    fn empty_page_json(&self) -> Option<Vec<u8>> {
        // Every byte checked, none short-circuiting: a loop the compiler vectorizes.
        let plain = self.cursor.bytes().fold(true, |plain, b| {
            plain & matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_')
        });
        if !self.sessions.is_empty() || !self.answers.is_empty() || self.has_more || !plain {
            return None;
        }
        let mut body = Vec::with_capacity(EMPTY_PAGE_BYTES + self.cursor.len());
        body.extend_from_slice(br#"{"sessions":[],"answers":[],"cursor":""#);
        body.extend_from_slice(self.cursor.as_bytes());
        body.extend_from_slice(br#"","has_more":false}"#);
        Some(body)
    }
}

/// `since` and `limit`, each at most once; `limit` an integer.
fn read_query(query: Option<&str>) -> Result<(Option<String>, Option<i64>), AppError> {
    let query = query.unwrap_or_default();
    if query.contains(['%', '+']) {
        read_pairs(form_urlencoded::parse(query.as_bytes()))
    } else {
        // Nothing to decode (what phones send: a base64url cursor and a number): the pairs
        // are the query's own slices, as `form_urlencoded::parse` would give them.
        read_pairs(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (Cow::Borrowed(name), Cow::Borrowed(value))
                }),
        )
    }
}

fn read_pairs<'a>(
    pairs: impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
) -> Result<(Option<String>, Option<i64>), AppError> {
    let mut since = None;
    let mut limit = None;
    for (name, value) in pairs {
        let slot_taken = match name.as_ref() {
            "since" => since.replace(value.into_owned()).is_some(),
            "limit" => {
                let parsed = value.trim().parse::<i64>().map_err(|_| {
                    AppError::bad_request_with(
                        crate::error::ErrorCode::ValidationError,
                        "limit must be an integer from 1 to 1000",
                        serde_json::json!({"field": "limit"}),
                    )
                })?;
                limit.replace(parsed).is_some()
            }
            _ => false,
        };
        if slot_taken {
            return Err(AppError::bad_request_with(
                crate::error::ErrorCode::ValidationError,
                format!("{name} given twice"),
                serde_json::json!({"field": name}),
            ));
        }
    }
    // `since=` with no value is the same as no `since`: a start from the beginning, which is
    // always safe for a phone (what a client writes for a cursor it does not have yet).
    Ok((since.filter(|s: &String| !s.is_empty()), limit))
}

/// The caller's sessions and current answers changed after `since`, one page.
#[utoipa::path(
    get,
    path = "/api/v1/sync/changes",
    params(ChangesQuery),
    responses(
        (status = 200, description = "One page; while has_more, ask again with cursor", body = ChangesResponse),
        (status = 400, description = "VALIDATION_ERROR: a malformed cursor, or limit outside 1..1000", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "CURSOR_EXPIRED: the cursor predates a database restore; pull again without since", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Transient fault; retry after Retry-After", body = crate::http::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn sync_changes(
    State(state): State<AppState>,
    user: AuthUser,
    RawQuery(query): RawQuery,
) -> Result<ChangesResponse, AppError> {
    page(&state, &user, query.as_deref()).await
}

/// [`sync_changes`] for a request that did not go through the router (`http::front`): the
/// token read by the same extractor, then the same steps.
pub(crate) async fn sync_changes_unrouted(state: AppState, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    match AuthUser::from_request_parts(&mut parts, &state).await {
        Ok(user) => page(&state, &user, parts.uri.query()).await.into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn page(
    state: &AppState,
    user: &AuthUser,
    query: Option<&str>,
) -> Result<ChangesResponse, AppError> {
    state
        .rate_limiter
        .check(&state.cache, user.id, "sync")
        .await?;
    let (since, limit) = read_query(query)?;
    let page = changes::pull(state, user.id, since.as_deref(), limit).await?;
    Ok(page.into())
}

#[cfg(test)]
mod tests {
    use super::{ChangesResponse, read_query};

    /// The empty page written by hand is byte for byte what serde writes; a cursor that
    /// would need escaping goes through serde.
    #[test]
    fn empty_pages_are_written_as_serde_writes_them() {
        for cursor in ["", "MS5lLjUuMS4wMDAwMA", "a-b_c", "with\"quote", "é"] {
            let page = ChangesResponse {
                sessions: Vec::new(),
                answers: Vec::new(),
                cursor: cursor.to_owned(),
                has_more: false,
            };
            let by_serde = serde_json::to_vec(&page).unwrap();
            match page.empty_page_json() {
                Some(by_hand) => assert_eq!(by_hand, by_serde, "{cursor}"),
                None => assert!(cursor.contains(['"', 'é']), "{cursor}"),
            }
        }
        let more = ChangesResponse {
            sessions: Vec::new(),
            answers: Vec::new(),
            cursor: "abc".into(),
            has_more: true,
        };
        assert_eq!(more.empty_page_json(), None);
    }

    #[test]
    fn query_forms() {
        assert_eq!(read_query(None).unwrap(), (None, None));
        assert_eq!(
            read_query(Some("since=abc&limit=20")).unwrap(),
            (Some("abc".into()), Some(20))
        );
        assert!(read_query(Some("limit=ten")).is_err());
        assert!(read_query(Some("limit=1&limit=2")).is_err());
        assert!(read_query(Some("since=a&since=b")).is_err());
        assert_eq!(read_query(Some("other=1")).unwrap(), (None, None));
        // Encoded forms decode as forms do; plain ones read the same either way.
        assert_eq!(
            read_query(Some("since=a%2Db&limit=+20")).unwrap(),
            (Some("a-b".into()), Some(20))
        );
        assert_eq!(
            read_query(Some("&since=&limit=7&&flag")).unwrap(),
            (None, Some(7))
        );
        assert_eq!(read_query(Some("since")).unwrap(), (None, None));
        for query in [
            "since=abc&limit=20",
            "a=1&since=x_y-z&b",
            "limit=3&=&since=q",
        ] {
            let encoded = query.replace('-', "%2D");
            assert_eq!(
                read_query(Some(query)).unwrap(),
                read_query(Some(&encoded)).unwrap(),
                "{query}"
            );
        }
    }
}

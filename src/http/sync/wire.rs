//! The REST body of `POST /api/v1/sync/attempts:batch` (snake_case), parsed item by item:
//! an item that does not parse is `INVALID_ATTEMPT` naming the field, and the rest of the
//! batch still goes through.
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::AppError,
    sync::{
        AttemptInput, AttemptResult, ParsedAttempt, SyncErrorCode, SyncStatus,
        payload_hash::parse_timestamp,
    },
};

/// The REST request body, as read by the handler.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncBatchRequest {
    /// The device clock when the batch was sent (clock-skew correction). RFC 3339 from
    /// 1970-01-01 to 9999-12-31; anything else (an empty string too) refuses the request.
    #[serde(default)]
    // The pattern holds the year to 1970..9999, which `format` alone cannot say.
    #[schema(value_type = Option<String>, format = DateTime, pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub sent_at: Option<Value>,
    /// 1 to 100 items (more or fewer: the request is refused, nothing applied).
    #[schema(min_items = 1, max_items = 100)]
    pub attempts: Vec<SyncItem>,
}

/// One item of `attempts`: an attempt, or anything else. Any JSON value is accepted here,
/// so that one bad item never refuses the batch: an item that does not parse as
/// `SyncAttempt` (even one that is not an object) is answered `rejected` /
/// `INVALID_ATTEMPT` with a message naming the field.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SyncItem {
    Attempt(SyncAttempt),
    Unparsed(Value),
}

/// Documented as `anyOf [SyncAttempt, any value]`, by hand: utoipa writes an untagged enum as
/// `oneOf`, which a well-formed attempt (matching both branches) would violate, and the
/// second branch really is any JSON value.
impl utoipa::PartialSchema for SyncItem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, Object, SchemaType};
        AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("SyncAttempt"))
            .item(Object::with_type(SchemaType::AnyValue))
            .description(Some(
                "An attempt; any other value is accepted too and answered rejected / INVALID_ATTEMPT naming the field",
            ))
            .into()
    }
}

impl ToSchema for SyncItem {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "SyncAttempt".to_owned(),
            <SyncAttempt as utoipa::PartialSchema>::schema(),
        ));
        <SyncAttempt as ToSchema>::schemas(schemas);
    }
}

/// One queued attempt (docs/api.md section 7). Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncAttempt {
    pub client_attempt_id: Uuid,
    pub idempotency_key: Uuid,
    #[serde(default)]
    pub offline_session_id: Option<Uuid>,
    /// Wins over `offline_session_id` when both are given.
    #[serde(default)]
    pub session_id: Option<Uuid>,
    pub question_id: Uuid,
    pub selected_option_index: i32,
    /// RFC 3339 with the client's UTC offset, from 1970-01-01 to 9999-12-31.
    #[schema(value_type = String, format = DateTime)]
    pub answered_at: String,
    /// Lowercase hex SHA-256 (docs/api.md section 8; either form), compared case-insensitively.
    #[schema(min_length = 1)]
    pub payload_hash: String,
    #[serde(default)]
    pub package_id: Option<Uuid>,
}

/// The response of the sync route.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncBatchResponse {
    /// One per attempt, in request order.
    pub results: Vec<SyncResult>,
}

/// The outcome of one item.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncResult {
    /// Absent only for an item too broken to carry one.
    pub client_attempt_id: Option<Uuid>,
    pub status: SyncStatus,
    pub server_attempt_id: Option<Uuid>,
    pub server_session_id: Option<Uuid>,
    /// When rejected.
    pub error_code: Option<SyncErrorCode>,
    pub message: Option<String>,
}

impl From<AttemptResult> for SyncResult {
    fn from(r: AttemptResult) -> Self {
        SyncResult {
            client_attempt_id: r.client_attempt_id.map(Uuid::from),
            status: r.status,
            server_attempt_id: r.server_attempt_id.map(Uuid::from),
            server_session_id: r.server_session_id.map(Uuid::from),
            error_code: r.error_code,
            message: r.message,
        }
    }
}

/// The parsed request: items plus the device clock at send time.
pub struct BatchRequest {
    pub sent_at: Option<DateTime<FixedOffset>>,
    pub attempts: Vec<ParsedAttempt>,
}

impl SyncBatchRequest {
    /// Checks `sent_at` (a bad one refuses the request) and parses each item.
    pub fn into_batch(self) -> Result<BatchRequest, AppError> {
        let refuse = || AppError::bad_request("`sent_at` must be an RFC 3339 timestamp");
        let sent_at = match self.sent_at {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_timestamp(&s).ok_or_else(refuse)?),
            Some(_) => return Err(refuse()),
        };
        let attempts = self
            .attempts
            .into_iter()
            .map(|item| match item {
                SyncItem::Attempt(a) => a.parse(),
                SyncItem::Unparsed(value) => parse_item(&value),
            })
            .collect();
        Ok(BatchRequest { sent_at, attempts })
    }
}

impl SyncAttempt {
    fn parse(self) -> ParsedAttempt {
        let invalid = |message: &str| ParsedAttempt::Invalid {
            client_attempt_id: Some(self.client_attempt_id.into()),
            message: message.to_owned(),
        };
        let Some(answered_at) = parse_timestamp(&self.answered_at) else {
            return invalid("`answered_at` must be an RFC 3339 timestamp with offset");
        };
        if self.payload_hash.is_empty() {
            return invalid("`payload_hash` is required");
        }
        ParsedAttempt::Valid(AttemptInput {
            client_attempt_id: self.client_attempt_id.into(),
            idempotency_key: self.idempotency_key.into(),
            offline_session_id: self.offline_session_id.map(Into::into),
            session_id: self.session_id.map(Into::into),
            question_id: self.question_id.into(),
            selected_option_index: i64::from(self.selected_option_index),
            answered_at,
            payload_hash: self.payload_hash,
            package_id: self.package_id.map(Into::into),
        })
    }
}

/// Parses a whole body given as JSON (the fuzz targets' entry point); the handler reads
/// `SyncBatchRequest` itself.
pub fn parse_body(body: &Value) -> Result<BatchRequest, AppError> {
    // serde reads a struct from a JSON array too (`[null, []]` as `sent_at`, `attempts`);
    // the contract's body is an object.
    if !body.is_object() {
        return Err(AppError::bad_request(
            "the body must be {\"attempts\": [...]}: it is not a JSON object",
        ));
    }
    let request: SyncBatchRequest = serde_json::from_value(body.clone()).map_err(|e| {
        AppError::bad_request(format!("the body must be {{\"attempts\": [...]}}: {e}"))
    })?;
    request.into_batch()
}

/// Why an item that is not a well-formed `SyncAttempt` is rejected, naming the field.
fn parse_item(value: &Value) -> ParsedAttempt {
    let Some(object) = value.as_object() else {
        return ParsedAttempt::Invalid {
            client_attempt_id: None,
            message: "the attempt is not a JSON object".into(),
        };
    };
    let client_attempt_id = uuid_field(object, "client_attempt_id").ok().flatten();
    match parse_fields(object) {
        Ok(input) => ParsedAttempt::Valid(input),
        Err(message) => ParsedAttempt::Invalid {
            client_attempt_id,
            message,
        },
    }
}

fn parse_fields(object: &Map<String, Value>) -> Result<AttemptInput, String> {
    let selected_option_index = match object.get("selected_option_index") {
        None | Some(Value::Null) => return Err("`selected_option_index` is required".into()),
        Some(v) => v
            .as_i64()
            .filter(|i| i32::try_from(*i).is_ok())
            .ok_or("`selected_option_index` must be an integer")?,
    };
    let answered_at = match object.get("answered_at") {
        None | Some(Value::Null) => return Err("`answered_at` is required".into()),
        Some(Value::String(s)) => {
            parse_timestamp(s).ok_or("`answered_at` must be an RFC 3339 timestamp with offset")?
        }
        Some(_) => return Err("`answered_at` must be an RFC 3339 timestamp with offset".into()),
    };
    let payload_hash = match object.get("payload_hash") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err("`payload_hash` is required".into()),
        Some(_) => return Err("`payload_hash` must be a hex string".into()),
    };
    Ok(AttemptInput {
        client_attempt_id: required_uuid(object, "client_attempt_id")?,
        idempotency_key: required_uuid(object, "idempotency_key")?,
        offline_session_id: uuid_field(object, "offline_session_id")?,
        session_id: uuid_field(object, "session_id")?,
        question_id: required_uuid(object, "question_id")?,
        selected_option_index,
        answered_at,
        payload_hash,
        package_id: uuid_field(object, "package_id")?,
    })
}

/// A required UUID field, as the id type it names.
fn required_uuid<T: From<Uuid>>(object: &Map<String, Value>, name: &str) -> Result<T, String> {
    uuid_field(object, name)?.ok_or_else(|| format!("`{name}` is required"))
}

/// An optional UUID field: absent or null → `None`; anything but a UUID string → error.
fn uuid_field<T: From<Uuid>>(object: &Map<String, Value>, name: &str) -> Result<Option<T>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(|id| Some(T::from(id)))
            .map_err(|_| format!("`{name}` is not a valid UUID")),
        Some(_) => Err(format!("`{name}` must be a UUID string")),
    }
}

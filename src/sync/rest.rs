//! The REST body of `POST /api/v1/sync/attempts:batch` (snake_case), parsed item by item:
//! an item that does not parse is `INVALID_ATTEMPT` naming the field, and the rest of the
//! batch still goes through.
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{AttemptInput, AttemptResult, ParsedAttempt, payload_hash::parse_timestamp};
use crate::error::AppError;

/// The parsed request: items plus the device clock at send time.
pub struct BatchRequest {
    pub sent_at: Option<DateTime<FixedOffset>>,
    pub attempts: Vec<ParsedAttempt>,
}

/// Parses the whole body. Only a body without an `attempts` array is refused as a whole.
pub fn parse_body(body: &Value) -> Result<BatchRequest, AppError> {
    let object = body
        .as_object()
        .ok_or_else(|| AppError::bad_request("the body must be a JSON object with `attempts`"))?;
    let attempts = object
        .get("attempts")
        .and_then(Value::as_array)
        .ok_or_else(|| AppError::bad_request("`attempts` must be an array of attempts"))?;
    let sent_at = match object.get("sent_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            parse_timestamp(s)
                .ok_or_else(|| AppError::bad_request("`sent_at` must be an RFC 3339 timestamp"))?,
        ),
        Some(_) => {
            return Err(AppError::bad_request(
                "`sent_at` must be an RFC 3339 timestamp",
            ));
        }
    };
    Ok(BatchRequest {
        sent_at,
        attempts: attempts.iter().map(parse_item).collect(),
    })
}

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
    let required_uuid = |name: &str| -> Result<Uuid, String> {
        uuid_field(object, name)?.ok_or_else(|| format!("`{name}` is required"))
    };
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
        client_attempt_id: required_uuid("client_attempt_id")?,
        idempotency_key: required_uuid("idempotency_key")?,
        offline_session_id: uuid_field(object, "offline_session_id")?,
        session_id: uuid_field(object, "session_id")?,
        question_id: required_uuid("question_id")?,
        selected_option_index,
        answered_at,
        payload_hash,
        package_id: uuid_field(object, "package_id")?,
    })
}

/// An optional UUID field: absent or null → `None`; anything but a UUID string → error.
fn uuid_field(object: &Map<String, Value>, name: &str) -> Result<Option<Uuid>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| format!("`{name}` is not a valid UUID")),
        Some(_) => Err(format!("`{name}` must be a UUID string")),
    }
}

/// Renders results in the previous server's snake_case shape.
pub fn render_results(results: &[AttemptResult]) -> Value {
    let items: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "client_attempt_id": r.client_attempt_id,
                "status": r.status.rest_name(),
                "server_attempt_id": r.server_attempt_id,
                "server_session_id": r.server_session_id,
                "error_code": r.error_code.map(|c| c.as_str()),
                "message": r.message,
            })
        })
        .collect();
    json!({ "results": items })
}

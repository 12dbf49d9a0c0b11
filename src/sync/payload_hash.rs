//! `payload_hash` (docs/api.md section 8): the v1 form (JCS, UTC millisecond `Z` time) and the
//! legacy form the previous Python server computed (`json.dumps(sort_keys=True)` with
//! Python's `isoformat()` and the client's own UTC offset).
use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};
use serde_json::json;
use uuid::Uuid;

use entity::PayloadHash;

use crate::hashing::{canonical_json, sha256, sha256_hex};

/// The v1 canonical payload: RFC 8785 JSON with `answered_at` as JavaScript's `toISOString()`.
pub fn canonical_v1(
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> String {
    let payload = json!({
        "answered_at": to_iso_string(&answered_at.with_timezone(&Utc)),
        "question_id": question_id.hyphenated().to_string(),
        "selected_option_index": selected_option_index,
    });
    // Serializing a json! object of strings and an integer cannot fail.
    canonical_json(&payload).unwrap_or_default()
}

/// What JavaScript's `Date.prototype.toISOString()` prints: milliseconds truncated
/// (59.123456 → 59.123), and for UTC years outside 0..=9999 the expanded `±YYYYYY` year.
pub fn to_iso_string(utc: &DateTime<Utc>) -> String {
    let year = utc.year();
    let rest = utc.format("-%m-%dT%H:%M:%S%.3fZ");
    if (0..=9999).contains(&year) {
        format!("{year:04}{rest}")
    } else {
        let sign = if year < 0 { '-' } else { '+' };
        format!("{sign}{:06}{rest}", year.unsigned_abs())
    }
}

/// Python's `datetime.isoformat()` of an aware datetime: microseconds only when non-zero.
pub fn python_isoformat(answered_at: &DateTime<FixedOffset>) -> String {
    let micros = answered_at.nanosecond() % 1_000_000_000 / 1_000;
    let base = answered_at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let offset_secs = answered_at.offset().local_minus_utc();
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.unsigned_abs();
    let mut offset = format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60);
    if !abs.is_multiple_of(60) {
        offset.push_str(&format!(":{:02}", abs % 60));
    }
    if micros == 0 {
        format!("{base}{offset}")
    } else {
        format!("{base}.{micros:06}{offset}")
    }
}

/// The legacy canonical payload, byte for byte what Python's `json.dumps` printed.
pub fn canonical_legacy(
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> String {
    format!(
        "{{\"answered_at\": \"{}\", \"question_id\": \"{}\", \"selected_option_index\": {}}}",
        python_isoformat(answered_at),
        question_id.hyphenated(),
        selected_option_index
    )
}

pub fn v1_hash(
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> String {
    v1_payload_hash(question_id, selected_option_index, answered_at).into_string()
}

/// The v1 hash as the typed value stored with the attempt.
pub fn v1_payload_hash(
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> PayloadHash {
    PayloadHash::from_digest(sha256(
        canonical_v1(question_id, selected_option_index, answered_at).as_bytes(),
    ))
}

pub fn legacy_hash(
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> String {
    sha256_hex(canonical_legacy(question_id, selected_option_index, answered_at).as_bytes())
}

/// Checks a client's hash against both forms. Returns the v1 hash (the payload's identity
/// for idempotency) when it matches either, `None` otherwise.
pub fn verify(
    given: &str,
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: &DateTime<FixedOffset>,
) -> Option<PayloadHash> {
    let v1 = v1_payload_hash(question_id, selected_option_index, answered_at);
    if given.eq_ignore_ascii_case(v1.as_str())
        || given.eq_ignore_ascii_case(&legacy_hash(
            question_id,
            selected_option_index,
            answered_at,
        ))
    {
        Some(v1)
    } else {
        None
    }
}

/// Parses an RFC 3339 timestamp, keeping the client's UTC offset.
pub fn parse_timestamp(text: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_the_repository_file() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/payload_hash.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            panic!("test vectors missing at {}", path.display());
        };
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vectors = file["vectors"].as_array().unwrap();
        assert!(!vectors.is_empty());
        for v in vectors {
            let q = Uuid::parse_str(v["question_id"].as_str().unwrap()).unwrap();
            let i = v["selected_option_index"].as_i64().unwrap();
            let at = parse_timestamp(v["answered_at"].as_str().unwrap()).unwrap();
            assert_eq!(canonical_v1(q, i, &at), v["canonical"].as_str().unwrap());
            assert_eq!(v1_hash(q, i, &at), v["payload_hash"].as_str().unwrap());
            assert_eq!(
                canonical_legacy(q, i, &at),
                v["legacy_canonical"].as_str().unwrap()
            );
            assert_eq!(
                legacy_hash(q, i, &at),
                v["legacy_payload_hash"].as_str().unwrap()
            );
            let v1 = v["payload_hash"].as_str().unwrap();
            assert_eq!(
                verify(&v1.to_uppercase(), q, i, &at)
                    .as_ref()
                    .map(PayloadHash::as_str),
                Some(v1)
            );
            assert_eq!(
                verify(v["legacy_payload_hash"].as_str().unwrap(), q, i, &at)
                    .as_ref()
                    .map(PayloadHash::as_str),
                Some(v1)
            );
            assert_eq!(verify(&"0".repeat(64), q, i, &at), None);
        }
    }
}

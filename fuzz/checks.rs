//! The checks behind the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (`cargo fuzz`) and
//! `tests/fuzz_regressions.rs` (`cargo test` replays every file of `fuzz/regressions/<target>/`
//! and `fuzz/seeds/<target>/` through the same function). Each `check_*` takes the raw fuzz
//! input and panics when an invariant does not hold.
//!
//! The references below are written by hand from docs/api.md sections 5, 7 and 8, on purpose without
//! chrono's formatting or the JSON canonicalizer the server uses.
#![allow(dead_code)]

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use examsync::http::headers::{
    IfNoneMatch, if_none_match_matches, negotiate_encoding, parse_if_none_match,
};
use examsync::http::sync::wire::parse_body;
use examsync::sync::ParsedAttempt;
use examsync::sync::payload_hash::{
    canonical_legacy, canonical_v1, legacy_hash, parse_timestamp, v1_hash, verify,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// sync_batch_parser: the REST batch body (docs/api.md sections 5 and 7)
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes; when they are JSON, `parse_body` must agree with a reference reading of
/// docs/api.md section 7 (and never panic).
pub fn check_sync_batch_parser(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<Value>(data) {
        check_batch_body(&body);
    }
}

const REQUIRED_UUIDS: [&str; 3] = ["client_attempt_id", "idempotency_key", "question_id"];
const OPTIONAL_UUIDS: [&str; 3] = ["offline_session_id", "session_id", "package_id"];

pub fn check_batch_body(body: &Value) {
    let result = parse_body(body);
    let items = body
        .as_object()
        .and_then(|o| o.get("attempts"))
        .and_then(Value::as_array);
    // `sent_at`: absent or null → None; an RFC 3339 string → Some; anything else refuses the body.
    let sent_at = match body.get("sent_at") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_timestamp(s).map(Some).ok_or(()),
        Some(_) => Err(()),
    };
    let (Some(items), Ok(sent_at)) = (items, sent_at) else {
        match result {
            Ok(_) => panic!("parse_body accepted a body of the wrong shape: {body}"),
            Err(err) => assert_eq!(err.status().as_u16(), 400, "{err:?}"),
        }
        return;
    };
    let batch = match result {
        Ok(batch) => batch,
        Err(err) => panic!("parse_body refused a well-formed body ({err:?}): {body}"),
    };
    assert_eq!(batch.sent_at, sent_at);
    assert_eq!(
        batch.sent_at.map(|t| t.offset().local_minus_utc()),
        sent_at.map(|t| t.offset().local_minus_utc())
    );
    assert_eq!(batch.attempts.len(), items.len(), "one result per attempt");
    for (i, (item, parsed)) in items.iter().zip(&batch.attempts).enumerate() {
        check_item(i, item, parsed);
    }
}

fn uuid_value(value: Option<&Value>) -> Result<Option<Uuid>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::try_parse(s).map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn index_value(value: Option<&Value>) -> Option<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().filter(|i| i32::try_from(*i).is_ok()),
        _ => None,
    }
}

fn timestamp_value(value: Option<&Value>) -> Option<DateTime<FixedOffset>> {
    match value {
        Some(Value::String(s)) => parse_timestamp(s),
        _ => None,
    }
}

fn hash_value(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The fields of `object` that do not hold what docs/api.md section 7 asks for.
fn bad_fields(object: &Map<String, Value>) -> Vec<&'static str> {
    let mut bad = Vec::new();
    for name in REQUIRED_UUIDS {
        if !matches!(uuid_value(object.get(name)), Ok(Some(_))) {
            bad.push(name);
        }
    }
    for name in OPTIONAL_UUIDS {
        if uuid_value(object.get(name)).is_err() {
            bad.push(name);
        }
    }
    if index_value(object.get("selected_option_index")).is_none() {
        bad.push("selected_option_index");
    }
    if timestamp_value(object.get("answered_at")).is_none() {
        bad.push("answered_at");
    }
    if hash_value(object.get("payload_hash")).is_none() {
        bad.push("payload_hash");
    }
    bad
}

fn check_item(i: usize, item: &Value, parsed: &ParsedAttempt) {
    let Some(object) = item.as_object() else {
        match parsed {
            ParsedAttempt::Invalid {
                client_attempt_id: None,
                message,
            } => assert!(!message.is_empty()),
            other => panic!("item {i} is not an object but parsed as {other:?}"),
        }
        return;
    };
    let bad = bad_fields(object);
    match parsed {
        ParsedAttempt::Valid(input) => {
            assert!(
                bad.is_empty(),
                "item {i} accepted with bad fields {bad:?}: {item}"
            );
            let uuid = |name: &str| uuid_value(object.get(name)).ok().flatten();
            assert_eq!(
                Some(input.client_attempt_id.into()),
                uuid("client_attempt_id")
            );
            assert_eq!(Some(input.idempotency_key.into()), uuid("idempotency_key"));
            assert_eq!(Some(input.question_id.into()), uuid("question_id"));
            assert_eq!(
                input.offline_session_id.map(Into::into),
                uuid("offline_session_id")
            );
            assert_eq!(input.session_id.map(Into::into), uuid("session_id"));
            assert_eq!(input.package_id.map(Into::into), uuid("package_id"));
            assert_eq!(
                Some(input.selected_option_index),
                index_value(object.get("selected_option_index"))
            );
            assert!(i32::try_from(input.selected_option_index).is_ok());
            let answered_at = timestamp_value(object.get("answered_at"));
            assert_eq!(Some(input.answered_at), answered_at);
            // DateTime equality ignores the offset; the legacy hash needs it kept.
            assert_eq!(
                Some(input.answered_at.offset().local_minus_utc()),
                answered_at.map(|t| t.offset().local_minus_utc())
            );
            assert!(!input.payload_hash.is_empty());
            assert_eq!(
                Some(input.payload_hash.as_str()),
                hash_value(object.get("payload_hash"))
            );
        }
        ParsedAttempt::Invalid {
            client_attempt_id,
            message,
        } => {
            assert!(
                !bad.is_empty(),
                "item {i} rejected ({message}) though every field is valid: {item}"
            );
            assert!(
                bad.iter().any(|f| message.contains(&format!("`{f}`"))),
                "item {i}: {message:?} names none of the bad fields {bad:?}"
            );
            assert_eq!(
                client_attempt_id.map(Into::into),
                uuid_value(object.get("client_attempt_id")).ok().flatten(),
                "item {i}: the result must carry the client_attempt_id when it parses"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// payload_hash: v1 and legacy canonical forms, verify, parse_timestamp (docs/api.md section 8)
// ---------------------------------------------------------------------------------------------

/// docs/api.md §8 asks for what JavaScript's `toISOString()` prints. For a UTC year outside 0..=9999
/// (reachable from local years 0000 and 9999 with a ±23:59 offset) that is `+010000-…` or
/// `-000001-…`; the server used to print chrono's `+10000-…` / `-0001-…` (found by this
/// target, fixed in `payload_hash::to_iso_string`). `true` would tolerate the old spelling.
pub const ACCEPT_CHRONO_EXTENDED_YEARS: bool = false;

/// A question id and option index used by the raw-text mode.
const RAW_QUESTION: [u8; 16] = [
    0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44, 0x00, 0x00,
];
const RAW_INDEX: i64 = 2;

/// Input layout. First byte `mode`:
/// - odd: raw text mode: the rest of the input (lossy UTF-8) goes to `parse_timestamp`, and the
///   canonical forms are checked when it parses (a seed file is `!` followed by the text);
/// - even: a structured case, see [`PayloadCase::decode`].
pub fn check_payload_hash(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let text = String::from_utf8_lossy(rest);
            check_payload_text(RAW_QUESTION, RAW_INDEX, &text);
        }
        _ => PayloadCase::decode(data).check(),
    }
}

/// A timestamp built from components, written as RFC 3339 text.
#[derive(Clone, Debug, Default)]
pub struct PayloadCase {
    pub question: [u8; 16],
    pub index: i64,
    /// Narrow `index` to the i32 range (what the REST parser lets through).
    pub index_i32: bool,
    /// 1..=9999.
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0..=59, or 60 with `leap_second`.
    pub second: u32,
    pub leap_second: bool,
    /// 0..1e9; only the first `frac_digits` digits are written.
    pub nanos: u32,
    /// 0..=12: digits after the dot (past the 9th, `extra` supplies them; they are ignored).
    pub frac_digits: u8,
    pub extra: u8,
    /// -1439..=1439 (±23:59).
    pub offset_minutes: i32,
    /// How a zero offset is written: `Z`, `z`, `+00:00`, `-00:00`.
    pub zero_style: u8,
    /// `T` (0), `t` (1) or a space (2) between date and time.
    pub separator: u8,
    /// Surround the text with whitespace (`parse_timestamp` trims).
    pub padded: bool,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl PayloadCase {
    /// Layout (missing bytes read as 0): `mode`, question (16), index (8, LE), year (2, LE),
    /// month, day, hour, minute, second, nanos (4, LE), frac_digits, offset minutes (2, LE),
    /// extra. `mode` bits: 1 → i32 index, 2-3 → zero-offset style, 4-5 → separator,
    /// 6 → padded, 7 → leap second.
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader(data);
        let mode = r.byte();
        let question = r.array::<16>();
        let index = i64::from_le_bytes(r.array());
        let year = 1 + i32::from(u16::from_le_bytes(r.array()) % 9999);
        let month = 1 + u32::from(r.byte() % 12);
        let day = 1 + u32::from(r.byte()) % days_in_month(year.into(), month);
        let hour = u32::from(r.byte() % 24);
        let minute = u32::from(r.byte() % 60);
        let second = u32::from(r.byte() % 60);
        let nanos = u32::from_le_bytes(r.array()) % 1_000_000_000;
        let frac_digits = r.byte() % 13;
        let offset_minutes = i32::from(i16::from_le_bytes(r.array())) % 1440;
        let extra = r.byte();
        let leap_second = mode & 0x80 != 0;
        PayloadCase {
            question,
            index,
            index_i32: mode & 0x02 != 0,
            year,
            month,
            day,
            hour,
            minute,
            second: if leap_second { 60 } else { second },
            leap_second,
            nanos,
            frac_digits,
            extra,
            offset_minutes,
            zero_style: (mode >> 2) & 3,
            separator: ((mode >> 4) & 3) % 3,
            padded: mode & 0x40 != 0,
        }
    }

    /// The inverse of [`decode`](Self::decode) for in-range fields (seed inputs).
    pub fn encode(&self) -> Vec<u8> {
        let mode = u8::from(self.index_i32) << 1
            | (self.zero_style & 3) << 2
            | (self.separator % 3) << 4
            | u8::from(self.padded) << 6
            | u8::from(self.leap_second) << 7;
        let mut out = vec![mode];
        out.extend(self.question);
        out.extend(self.index.to_le_bytes());
        out.extend(u16::try_from(self.year - 1).unwrap_or(0).to_le_bytes());
        for v in [
            self.month - 1,
            self.day - 1,
            self.hour,
            self.minute,
            self.second % 60,
        ] {
            out.push(u8::try_from(v).unwrap_or(0));
        }
        out.extend(self.nanos.to_le_bytes());
        out.push(self.frac_digits);
        out.extend(
            i16::try_from(self.offset_minutes)
                .unwrap_or(0)
                .to_le_bytes(),
        );
        out.push(self.extra);
        out
    }

    fn index(&self) -> i64 {
        if self.index_i32 {
            // Truncation on purpose: any i32.
            i64::from(self.index as i32)
        } else {
            self.index
        }
    }

    /// The RFC 3339 text of the case.
    pub fn text(&self) -> String {
        let sep = ["T", "t", " "][usize::from(self.separator % 3)];
        let mut s = format!(
            "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if self.frac_digits > 0 {
            let nine = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(&nine[..usize::from(self.frac_digits.min(9))]);
            for i in 9..self.frac_digits {
                s.push(char::from(b'0' + (self.extra.wrapping_add(i)) % 10));
            }
        }
        if self.offset_minutes == 0 {
            s.push_str(["Z", "z", "+00:00", "-00:00"][usize::from(self.zero_style & 3)]);
        } else {
            let sign = if self.offset_minutes < 0 { '-' } else { '+' };
            let abs = self.offset_minutes.unsigned_abs();
            s.push_str(&format!("{sign}{:02}:{:02}", abs / 60, abs % 60));
        }
        if self.padded {
            s = format!(" \t{s}\r\n ");
        }
        s
    }

    /// The components the text stands for.
    pub fn expected(&self) -> RefTime {
        let keep = 10u32.pow(9 - u32::from(self.frac_digits.min(9)));
        RefTime {
            year: self.year.into(),
            month: self.month,
            day: self.day,
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            nanos: self.nanos / keep * keep,
            offset_minutes: self.offset_minutes,
        }
    }

    pub fn check(&self) {
        let text = self.text();
        assert_eq!(
            reference_parse(&text),
            Some(self.expected()),
            "reference parser vs case, {text:?}"
        );
        assert!(parse_timestamp(&text).is_some(), "refused {text:?}");
        check_payload_text(self.question, self.index(), &text);
    }
}

/// A timestamp as written: local components and the offset (no leap-second folding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0..=60.
    pub second: u32,
    pub nanos: u32,
    pub offset_minutes: i32,
}

/// RFC 3339 `date-time` as `parse_timestamp` takes it: surrounding whitespace trimmed, `T`, `t`
/// or a space between date and time, `Z`/`z` or `±HH:MM`, any number (≥ 1) of fraction digits
/// of which the first nine count, second 60 allowed (a leap second), fields range-checked.
pub fn reference_parse(text: &str) -> Option<RefTime> {
    let s = text.trim().as_bytes();
    let digits = |p: &mut usize, n: usize| -> Option<u32> {
        let d = s.get(*p..*p + n)?;
        *p += n;
        d.iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let two = |p: &mut usize| digits(p, 2);
    let lit = |p: &mut usize, allowed: &[u8]| -> Option<()> {
        let b = *s.get(*p)?;
        *p += 1;
        allowed.contains(&b).then_some(())
    };
    let mut p = 0;
    let year = digits(&mut p, 4)?;
    lit(&mut p, b"-")?;
    let month = two(&mut p)?;
    lit(&mut p, b"-")?;
    let day = two(&mut p)?;
    lit(&mut p, b"Tt ")?;
    let hour = two(&mut p)?;
    lit(&mut p, b":")?;
    let minute = two(&mut p)?;
    lit(&mut p, b":")?;
    let second = two(&mut p)?;
    let mut nanos = 0u32;
    if s.get(p) == Some(&b'.') {
        p += 1;
        let start = p;
        while s.get(p).is_some_and(u8::is_ascii_digit) {
            if p - start < 9 {
                nanos += u32::from(s[p] - b'0') * 10u32.pow(8 - (p - start) as u32);
            }
            p += 1;
        }
        if p == start {
            return None;
        }
    }
    let offset_minutes = match *s.get(p)? {
        b'Z' | b'z' => {
            p += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            p += 1;
            let h = two(&mut p)?;
            lit(&mut p, b":")?;
            let m = two(&mut p)?;
            if h > 23 || m > 59 {
                return None;
            }
            let total = i32::try_from(h * 60 + m).ok()?;
            if sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    if p != s.len() {
        return None;
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(RefTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        nanos,
        offset_minutes,
    })
}

/// `parse_timestamp` and the reference parser agree on `text`; when it parses, the canonical
/// forms and hashes agree with the references.
pub fn check_payload_text(question: [u8; 16], index: i64, text: &str) {
    let parsed = parse_timestamp(text);
    let reference = reference_parse(text);
    let (dt, r) = match (parsed, reference) {
        (None, None) => return,
        (Some(dt), Some(r)) => (dt, r),
        (parsed, reference) => {
            panic!("parse_timestamp({text:?}) = {parsed:?}, reference = {reference:?}")
        }
    };
    // Components and the client's offset survive parsing.
    let (second, nanos) = if r.second == 60 {
        (59, r.nanos + 1_000_000_000) // chrono's leap-second representation
    } else {
        (r.second, r.nanos)
    };
    assert_eq!(
        (
            i64::from(dt.year()),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.nanosecond(),
            dt.offset().local_minus_utc()
        ),
        (
            r.year,
            r.month,
            r.day,
            r.hour,
            r.minute,
            second,
            nanos,
            r.offset_minutes * 60
        ),
        "components of {text:?}"
    );
    check_payload(question, index, &dt, &r);
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Lowercase hyphenated UUID, by hand.
pub fn reference_uuid(bytes: [u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `Date.prototype.toISOString()` of the instant (not for leap seconds, which JS lacks).
/// `js_years`: years outside 0..=9999 as `±YYYYYY` (JavaScript) instead of chrono's `±YYYY`.
pub fn reference_iso(r: &RefTime, js_years: bool) -> String {
    let local = days_from_civil(r.year, r.month, r.day) * 1440
        + i64::from(r.hour) * 60
        + i64::from(r.minute);
    let utc = local - i64::from(r.offset_minutes);
    let (y, m, d) = civil_from_days(utc.div_euclid(1440));
    let minutes = utc.rem_euclid(1440);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else if js_years {
        format!("{}{:06}", if y < 0 { '-' } else { '+' }, y.unsigned_abs())
    } else {
        format!("{y:+05}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        minutes / 60,
        minutes % 60,
        r.second,
        r.nanos / 1_000_000
    )
}

/// An integer as RFC 8785 (and `JSON.stringify`) writes it: through an IEEE 754 double.
pub fn reference_json_number(n: i64) -> String {
    if n.unsigned_abs() <= 1 << 53 {
        return n.to_string();
    }
    // Shortest round-trip digits of the double, then ES `Number::toString` (integral, < 1e21).
    let sci = format!("{:e}", n as f64);
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exponent: usize = exponent.parse().expect("a positive exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    assert!(digits.len() <= exponent + 1, "{sci}");
    format!(
        "{}{digits}{}",
        if negative { "-" } else { "" },
        "0".repeat(exponent + 1 - digits.len())
    )
}

pub fn reference_v1(question: [u8; 16], index: i64, r: &RefTime, js_years: bool) -> String {
    format!(
        "{{\"answered_at\":\"{}\",\"question_id\":\"{}\",\"selected_option_index\":{}}}",
        reference_iso(r, js_years),
        reference_uuid(question),
        reference_json_number(index)
    )
}

/// Python's `json.dumps({...}, sort_keys=True)` with `answered_at.isoformat()`.
pub fn reference_legacy(question: [u8; 16], index: i64, r: &RefTime) -> String {
    let micros = r.nanos / 1000;
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    let sign = if r.offset_minutes < 0 { '-' } else { '+' };
    let abs = r.offset_minutes.unsigned_abs();
    format!(
        "{{\"answered_at\": \"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{sign}{:02}:{:02}\", \
         \"question_id\": \"{}\", \"selected_option_index\": {index}}}",
        r.year,
        r.month,
        r.day,
        r.hour,
        r.minute,
        r.second,
        abs / 60,
        abs % 60,
        reference_uuid(question)
    )
}

fn check_payload(question: [u8; 16], index: i64, dt: &DateTime<FixedOffset>, r: &RefTime) {
    let q = Uuid::from_bytes(question);
    let v1 = canonical_v1(q, index, dt);
    let legacy = canonical_legacy(q, index, dt);
    if r.second == 60 {
        // Neither JavaScript's Date nor Python's datetime has leap seconds: no reference form.
        // The v1 form must still be JSON with the three keys.
        let value: Value = serde_json::from_str(&v1).expect("v1 is JSON");
        let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
        assert_eq!(
            keys,
            ["answered_at", "question_id", "selected_option_index"]
        );
    } else {
        assert_eq!(legacy, reference_legacy(question, index, r), "legacy form");
        let strict = reference_v1(question, index, r, true);
        if v1 != strict {
            let lenient = reference_v1(question, index, r, false);
            assert!(
                ACCEPT_CHRONO_EXTENDED_YEARS && strict != lenient && v1 == lenient,
                "v1 form:\n  got      {v1}\n  expected {strict}"
            );
        }
    }
    let v1_hex = v1_hash(q, index, dt);
    let legacy_hex = legacy_hash(q, index, dt);
    assert_eq!(v1_hex, sha256_hex(&v1));
    assert_eq!(legacy_hex, sha256_hex(&legacy));
    assert_eq!(v1_hex.len(), 64);
    let found = |given: &str| verify(given, q, index, dt).map(|h| h.as_str().to_owned());
    assert_eq!(found(&v1_hex).as_ref(), Some(&v1_hex));
    assert_eq!(found(&v1_hex.to_ascii_uppercase()).as_ref(), Some(&v1_hex));
    assert_eq!(found(&legacy_hex).as_ref(), Some(&v1_hex));
    assert_eq!(
        found(&legacy_hex.to_ascii_uppercase()).as_ref(),
        Some(&v1_hex)
    );
    let mut wrong = v1_hex.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).expect("hex is ASCII");
    assert_eq!(found(&wrong), None);
    assert_eq!(found(""), None);
    assert_eq!(found(&v1_hex[..63]), None);
}

// ---------------------------------------------------------------------------------------------
// if_none_match: src/http/headers.rs (docs/api.md section 5)
// ---------------------------------------------------------------------------------------------

const FIXED_HASH: &str = "fc873d72d04c91ffeaa46adcec080bc90c743feaf188526560aeda94795d11bb";

fn matches(header: &[u8], opaque: &str) -> bool {
    if_none_match_matches([header], opaque)
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Arbitrary bytes as one `If-None-Match` value (and, split at `\n`, as several header lines).
pub fn check_if_none_match(data: &[u8]) {
    let header = data;
    match parse_if_none_match(header) {
        IfNoneMatch::Any => {
            assert!(header.contains(&b'*'));
            assert!(matches(header, FIXED_HASH));
            assert!(matches(header, ""));
        }
        IfNoneMatch::Tags(tags) => {
            let range = header.as_ptr_range();
            for tag in &tags {
                // Opaque parts are pieces of the header, without quotes, and match themselves.
                let piece = tag.opaque.as_ptr_range();
                assert!(range.start <= piece.start && piece.end <= range.end);
                assert!(!tag.opaque.contains(&b'"'));
                if let Ok(opaque) = std::str::from_utf8(tag.opaque) {
                    assert!(matches(header, opaque), "{opaque:?} in {header:?}");
                }
            }
        }
    }
    // A match needs `*` or the tag itself in the header.
    if matches(header, FIXED_HASH) {
        assert!(header.contains(&b'*') || header.windows(64).any(|w| w == FIXED_HASH.as_bytes()));
    }

    // A hex hash the input chooses.
    let h = if data.is_empty() {
        FIXED_HASH.to_string()
    } else {
        hex::encode(&data[..data.len().min(32)])
    };
    let hb = h.as_bytes();
    let weak = joined(&[b"W/\"", hb, b"\""]);
    let strong = joined(&[b"\"", hb, b"\""]);
    for exact in [&weak, &strong] {
        assert!(matches(exact, &h), "{:?}", String::from_utf8_lossy(exact));
        // Garbage list elements after a matching one keep it matching.
        assert!(matches(&joined(&[exact, b", ", data]), &h));
        assert!(matches(&joined(&[exact, b",", data]), &h));
        // So do elements before it that hold no DQUOTE (a DQUOTE may open a tag that runs on).
        let prefix: Vec<u8> = data.iter().copied().filter(|&b| b != b'"').collect();
        assert!(matches(&joined(&[&prefix, b",", exact]), &h));
        assert!(matches(&joined(&[&prefix, b", ", exact, b", ", data]), &h));
        // Several header lines form one list.
        assert!(if_none_match_matches([data, exact.as_slice()], &h));
        assert!(if_none_match_matches([exact.as_slice(), data], &h));
    }
    assert!(matches(&joined(&[b"w/\"", hb, b"\""]), &h));
    assert!(matches(&joined(&[b" \tW/\"", hb, b"\"\t "]), &h));
    assert!(matches(b"*", &h));
    assert!(matches(b" * ", &h));
    assert!(matches(b"*, \"x\"", &h));
    // A different tag does not match: longer, shorter, or another tag in quotes.
    assert!(!matches(&joined(&[b"W/\"", hb, b"0\""]), &h));
    assert!(!matches(&joined(&[b"\"", &hb[..hb.len() - 1], b"\""]), &h));
    assert!(!matches(&joined(&[b"\"x", hb, b"\""]), &h));

    // Header lines: a match in any line is a match.
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    assert_eq!(
        if_none_match_matches(lines.iter().copied(), &h),
        lines.iter().any(|line| matches(line, &h))
    );
    let _ = negotiate_encoding(lines.iter().copied());
    let _ = negotiate_encoding([data]);
}

// ---------------------------------------------------------------------------------------------
// sync_inputs: both surfaces' sync inputs through the rule core (docs/api.md section 7, "Times")
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes; when they are JSON, read as a REST body and as a GraphQL `syncAttempts`
/// input, then through the rule core (skew, range, precheck, checks). Nothing may panic,
/// a `sent_at` outside 1970..=9999 refuses the batch, and corrected times stay in range.
pub fn check_sync_inputs(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_default();
    if let Ok(batch) = parse_body(&body) {
        check_core(now, batch.sent_at, &batch.attempts);
    }
    if let Ok((sent_at, items)) = examsync::graphql::sync::parse_input(body) {
        check_core(now, sent_at, &items);
    }
}

fn check_core(
    now: DateTime<chrono::Utc>,
    sent_at: Option<DateTime<FixedOffset>>,
    items: &[ParsedAttempt],
) {
    use examsync::packages::ScoringKey;
    use examsync::sync::{SyncErrorCode, rules};
    let skew = match rules::skew_of(now, sent_at.as_ref()) {
        Err(_) => {
            let sent_at = sent_at.expect("only a given sent_at is refused");
            assert!(
                !rules::in_range(&sent_at),
                "refused an in-range sent_at {sent_at}"
            );
            return;
        }
        Ok(skew) => skew,
    };
    if let Some(sent_at) = sent_at {
        assert!(rules::in_range(&sent_at), "accepted sent_at {sent_at}");
    }
    for item in items {
        let ParsedAttempt::Valid(input) = item else {
            continue;
        };
        let pre = rules::precheck(input);
        if !rules::in_range(&input.answered_at) {
            assert_eq!(pre.map_err(|e| e.0), Err(SyncErrorCode::InvalidAttempt));
        }
        let corrected = rules::corrected_time(&input.answered_at, skew);
        if let Some(t) = corrected {
            assert!(t >= rules::min_time() && t <= rules::max_time(), "{t}");
        }
        // Facts under which every check but the option index and the time passes.
        let mut facts = rules::Facts::default();
        facts.questions.insert(
            input.question_id,
            rules::QuestionFact {
                key: ScoringKey {
                    option_count: 5,
                    correct_index: 0,
                },
                scope: rules::Scope {
                    year: 1,
                    block: None,
                    theme: None,
                },
                answerable: true,
            },
        );
        if let Some(id) = input.session_id {
            facts.sessions_by_id.insert(
                id,
                rules::SessionFact {
                    id,
                    state: rules::SessionState::Active,
                },
            );
        }
        let mut input = input.clone();
        input.package_id = None;
        if input.session_id.is_none() && input.offline_session_id.is_none() {
            input.offline_session_id = Some(input.client_attempt_id.into_uuid().into());
        }
        match rules::check(&input, &facts, now, skew) {
            Ok(checked) => {
                assert_eq!(Some(checked.effective_at), corrected);
                assert!(checked.effective_at <= now + rules::FUTURE_TOLERANCE);
                assert!((0..5).contains(&input.selected_option_index));
            }
            Err((code, _)) => assert!(
                matches!(
                    code,
                    SyncErrorCode::InvalidOptionIndex
                        | SyncErrorCode::AnsweredAtInFuture
                        | SyncErrorCode::InvalidAttempt
                ),
                "{code:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// media_sniff: what uploaded bytes are (docs/api.md section 4.1)
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as an upload: `sniff` never panics; what it accepts is one of the six
/// allowed types and starts with that format's signature as the format defines it (written
/// here by hand, not taken from `infer`); images have positive dimensions, sounds none; the
/// upload rules agree with it. As text, the hash parser accepts exactly 64 lowercase hex
/// digits and gives them back.
pub fn check_media_sniff(data: &[u8]) {
    use examsync::media::{self, MediaContentType, MediaSha256};
    let upload = media::check_upload(Some(MediaSha256::of(data)), data, usize::MAX);
    match media::sniff(data) {
        Ok(sniffed) => {
            let signed = match sniffed.content_type {
                MediaContentType::Png => data.starts_with(b"\x89PNG\r\n\x1a\n"),
                MediaContentType::Jpeg => data.starts_with(&[0xFF, 0xD8, 0xFF]),
                MediaContentType::Gif => data.starts_with(b"GIF8"),
                MediaContentType::Webp => {
                    data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP"
                }
                MediaContentType::Ogg => data.starts_with(b"OggS"),
                MediaContentType::Mpeg => {
                    data.starts_with(b"ID3")
                        || (data.len() >= 2 && data[0] == 0xFF && data[1] & 0xE0 == 0xE0)
                }
            };
            assert!(signed, "{:?} without its signature", sniffed.content_type);
            if sniffed.content_type.is_image() {
                assert!(sniffed.width.is_some_and(|w| w > 0), "{sniffed:?}");
                assert!(sniffed.height.is_some_and(|h| h > 0), "{sniffed:?}");
            } else {
                assert_eq!((sniffed.width, sniffed.height), (None, None));
            }
            let Ok((sha, again)) = upload else {
                panic!("sniff accepts what the upload rules refuse")
            };
            assert_eq!(again, sniffed);
            assert_eq!(sha, MediaSha256::of(data));
        }
        Err(_) => assert!(
            upload.is_err(),
            "the upload rules accept what sniff refuses"
        ),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let canonical = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match MediaSha256::parse(text) {
            Some(sha) => {
                assert!(canonical, "{text:?} parsed");
                assert_eq!(sha.hex(), text);
            }
            None => assert!(!canonical, "{text:?} refused"),
        }
    }
}

//! Replays the fuzz inputs kept in the repository through the checks the `cargo fuzz` targets
//! run (`fuzz/checks.rs`): every file of `fuzz/regressions/<target>/` (inputs that once
//! failed) and `fuzz/seeds/<target>/` (the seed corpus), plus a few inputs written here so the
//! test never runs empty. `scripts/fuzz.sh` does the fuzzing itself.
#![allow(clippy::unwrap_used)]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use checks::PayloadCase;
use serde_json::json;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("sync_batch_parser", checks::check_sync_batch_parser),
    ("sync_inputs", checks::check_sync_inputs),
    ("payload_hash", checks::check_payload_hash),
    ("if_none_match", checks::check_if_none_match),
    ("media_sniff", checks::check_media_sniff),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The stored inputs of `target`, sorted.
fn stored_inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["regressions", "seeds"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every input; fails naming each input that panicked.
fn replay(target: &str, check: Check, inline: &[Vec<u8>]) {
    let stored = stored_inputs(target);
    let mut inputs: Vec<(String, Vec<u8>)> = stored
        .iter()
        .map(|path| (path.display().to_string(), std::fs::read(path).unwrap()))
        .collect();
    inputs.extend(
        inline
            .iter()
            .enumerate()
            .map(|(i, data)| (format!("inline seed #{i}"), data.clone())),
    );
    assert!(!inputs.is_empty());
    let failed: Vec<&str> = inputs
        .iter()
        .filter(|(_, data)| catch_unwind(AssertUnwindSafe(|| check(data))).is_err())
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

fn target_check(name: &str) -> Check {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, check)| *check)
        .unwrap()
}

#[test]
fn stored_inputs_belong_to_known_targets() {
    for kind in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            if !entry.path().is_dir() {
                continue; // a README
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name} is not the directory of a fuzz target"
            );
        }
    }
}

#[test]
fn sync_batch_parser_inputs() {
    let valid = json!({
        "client_attempt_id": "0b7f0c1e-8a9e-4b7a-9c55-3b8f3a1d2e01",
        "idempotency_key": "9d1c5b0a-2f3e-4c6d-8e7f-0a1b2c3d4e5f",
        "offline_session_id": "4f6e2d1c-0b9a-4876-9543-210fedcba987",
        "session_id": null,
        "question_id": "550e8400-e29b-41d4-a716-446655440000",
        "selected_option_index": 2,
        "answered_at": "2026-01-28T15:30:00.123456+05:30",
        "payload_hash": "25e04c8579451f9b2748695f768887b8e4beeb0164672d9904975914b5dec126",
        "package_id": null
    });
    let mut bad_index = valid.clone();
    bad_index["selected_option_index"] = json!(2_147_483_648_i64);
    let mut bad_uuid = valid.clone();
    bad_uuid["question_id"] = json!("not-a-uuid");
    let mut float_index = valid.clone();
    float_index["selected_option_index"] = json!(1.0);
    let bodies = [
        json!({"attempts": [valid, bad_index, bad_uuid, float_index, 7, null, [], {}]}),
        json!({"sent_at": "2026-01-28T10:00:00Z", "attempts": []}),
        json!({"sent_at": "yesterday", "attempts": []}),
        json!({"sent_at": 5, "attempts": []}),
        json!({"attempts": {}}),
        json!([]),
        json!("attempts"),
    ];
    let mut inline: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| serde_json::to_vec(b).unwrap())
        .collect();
    inline.push(b"{\"attempts\": [".to_vec());
    replay(
        "sync_batch_parser",
        target_check("sync_batch_parser"),
        &inline,
    );
}

fn case(year: i32, month: u32, day: u32, offset_minutes: i32) -> PayloadCase {
    PayloadCase {
        question: *uuid::Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000")
            .unwrap()
            .as_bytes(),
        index: 2,
        year,
        month,
        day,
        hour: 15,
        minute: 30,
        second: 7,
        nanos: 123_456_789,
        frac_digits: 6,
        offset_minutes,
        ..PayloadCase::default()
    }
}

#[test]
fn payload_hash_inputs() {
    let mut cases = vec![
        case(2026, 1, 28, 330),
        case(2024, 2, 29, -1439),
        case(1, 1, 1, 1439), // UTC is year 0
        case(1970, 1, 1, 0),
        PayloadCase {
            frac_digits: 12,
            extra: 7,
            zero_style: 3,
            separator: 2,
            padded: true,
            index_i32: true,
            index: -1,
            ..case(2000, 12, 31, 0)
        },
        PayloadCase {
            index: i64::MAX,
            frac_digits: 0,
            ..case(2026, 3, 1, -60)
        },
        PayloadCase {
            leap_second: true,
            second: 60,
            ..case(2016, 12, 31, 0)
        },
    ];
    // Encoded cases decode to themselves.
    for c in &cases {
        let decoded = PayloadCase::decode(&c.encode());
        assert_eq!(decoded.text(), c.text());
    }
    let mut inline: Vec<Vec<u8>> = cases.drain(..).map(|c| c.encode()).collect();
    for text in [
        "2026-01-28T10:00:00Z",
        "2026-01-28T15:30:00.5+05:30",
        "2026-01-28t10:00:00.123456789123z",
        "2026-02-30T10:00:00Z",
        "2026-01-28T10:00:00+24:00",
        "2026-01-28T10:00:00",
        "",
    ] {
        inline.push([b"!".as_slice(), text.as_bytes()].concat());
    }
    inline.push(Vec::new());
    replay("payload_hash", target_check("payload_hash"), &inline);
}

/// The repository's test vectors, through the same checks.
#[test]
fn payload_hash_vectors() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/payload_hash.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!("test vectors missing at {}", path.display());
    };
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    for v in file["vectors"].as_array().unwrap() {
        let question = uuid::Uuid::parse_str(v["question_id"].as_str().unwrap()).unwrap();
        let index = v["selected_option_index"].as_i64().unwrap();
        let answered_at = v["answered_at"].as_str().unwrap();
        checks::check_payload_text(*question.as_bytes(), index, answered_at);
        let r = checks::reference_parse(answered_at).unwrap();
        assert_eq!(
            checks::reference_v1(*question.as_bytes(), index, &r, true),
            v["canonical"].as_str().unwrap()
        );
        assert_eq!(
            checks::reference_legacy(*question.as_bytes(), index, &r),
            v["legacy_canonical"].as_str().unwrap()
        );
    }
}

/// docs/api.md §8: `answered_at` is what `toISOString()` prints, which for UTC years outside 0..=9999
/// is `+010000-…` / `-000001-…` (found by the payload_hash fuzz target; fixed).
#[test]
fn v1_extended_years_follow_to_iso_string() {
    let q = uuid::Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap();
    for (text, iso) in [
        ("9999-12-31T23:59:59-23:59", "+010000-01-01T23:58:59.000Z"),
        ("0000-01-01T00:00:00+23:59", "-000001-12-31T00:01:00.000Z"),
    ] {
        let at = examsync::sync::payload_hash::parse_timestamp(text).unwrap();
        let v1 = examsync::sync::payload_hash::canonical_v1(q, 0, &at);
        assert!(v1.contains(iso), "{text}: {v1}");
    }
}

#[test]
fn if_none_match_inputs() {
    let h = "fc873d72d04c91ffeaa46adcec080bc90c743feaf188526560aeda94795d11bb";
    let inline: Vec<Vec<u8>> = [
        format!("W/\"{h}\""),
        format!("\"{h}\""),
        format!("\"a\", W/\"b\" ,W/\"{h}\""),
        "*".to_string(),
        "*abc, W/\"x".to_string(),
        "W/W/\"\",,\"".to_string(),
        "gzip;q=0.5, br;q=1.0\nW/\"x\"".to_string(),
        String::new(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .chain([vec![0xff, 0xfe, b'"', 0x80]])
    .collect();
    replay("if_none_match", target_check("if_none_match"), &inline);
}

#[test]
fn sync_inputs_inputs() {
    let graphql = json!({"sentAt": "+262000-01-01T00:00:00Z", "attempts": [{
        "clientAttemptId": "0b7f0c1e-8a9e-4b7a-9c55-3b8f3a1d2e01",
        "idempotencyKey": "9d1c5b0a-2f3e-4c6d-8e7f-0a1b2c3d4e5f",
        "questionId": "550e8400-e29b-41d4-a716-446655440000",
        "selectedOptionIndex": 4,
        "answeredAt": "1969-12-31T23:59:59.999-00:01",
        "payloadHash": "00"
    }]});
    let rest = json!({"sent_at": "1970-01-01T00:00:00.000001Z", "attempts": [{
        "client_attempt_id": "0b7f0c1e-8a9e-4b7a-9c55-3b8f3a1d2e01",
        "idempotency_key": "9d1c5b0a-2f3e-4c6d-8e7f-0a1b2c3d4e5f",
        "question_id": "550e8400-e29b-41d4-a716-446655440000",
        "selected_option_index": 0,
        "answered_at": "9999-12-31T23:59:59.999999999+14:00",
        "payload_hash": "00"
    }]});
    // The GraphQL scalar lets such years through to the rule core (where they panicked).
    let (sent_at, items) = examsync::graphql::sync::parse_input(graphql.clone()).unwrap();
    assert!(sent_at.is_some());
    assert_eq!(items.len(), 1);
    let inline: Vec<Vec<u8>> = [graphql, rest]
        .iter()
        .map(|b| serde_json::to_vec(b).unwrap())
        .collect();
    replay("sync_inputs", target_check("sync_inputs"), &inline);
}

/// Uploaded bytes: each allowed type drawn in code, near misses (truncated headers, zero
/// dimensions, SVG, a WebP without its chunk), and hash-like text.
#[test]
fn media_sniff_inputs() {
    use examsync::media::draw;
    let png = draw::png_gray(3, 2, &[1, 2, 3, 4, 5, 6]);
    let mut inline = vec![
        png.clone(),
        png[..16].to_vec(),
        png[..24].to_vec(),
        draw::png_rgb(1, 1, &[255, 0, 0]),
        draw::silent_mp3(1),
        b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec(),
        b"GIF89a\x02\x00\x03\x00\x00\x00\x00;".to_vec(),
        b"GIF89a\x00\x00\x00\x00".to_vec(),
        b"GIF8".to_vec(),
        b"OggS\x00\x02\x00\x00".to_vec(),
        b"RIFF\x10\x00\x00\x00WEBPVP8 ".to_vec(),
        b"RIFF\x10\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x00"
            .to_vec(),
        vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10],
        vec![
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x02, 0x00, 0x03, 0x03,
        ],
        br#"<svg xmlns="http://www.w3.org/2000/svg"/>"#.to_vec(),
        b"\xEF\xBB\xBF<svg>".to_vec(),
        examsync::media::MediaSha256::of(b"x").hex().into_bytes(),
        examsync::media::MediaSha256::of(b"x")
            .hex()
            .to_uppercase()
            .into_bytes(),
        Vec::new(),
    ];
    inline.push([png.as_slice(), b"<svg/>"].concat());
    replay("media_sniff", target_check("media_sniff"), &inline);
}

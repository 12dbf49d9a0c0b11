//! Package deltas (docs/api.md §5.5): what a phone holding one published version needs to
//! turn it into another of the same scope and scope_data.
//!
//! The pure core (`diff`, `apply`) works on snapshots and knows nothing of HTTP or the
//! database; `DeltaBody` is the REST wire shape, serialized deterministically (snapshots in
//! RFC 8785 form, as the download serves them) so that every instance sends the same bytes.
use std::collections::HashMap;

use entity::{PackageId, QuestionId};
use serde::Serialize;
use uuid::Uuid;

use super::Snapshot;

/// What changed from a held package to a target one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Snapshots of the target that the held package lacks or holds with any field
    /// different, ordered by `question_id`.
    pub upserted: Vec<Snapshot>,
    /// Question ids the held package has and the target lacks, ascending.
    pub removed: Vec<QuestionId>,
}

/// `question_id` order of docs/api.md section 4: compared as lowercase strings. A `Uuid`'s
/// bytes compare like its lowercase hex, so `Uuid`'s own order is that order.
fn by_id(a: &Snapshot, b: &Snapshot) -> std::cmp::Ordering {
    a.question_id.cmp(&b.question_id)
}

/// The delta from `held` to `target` (either may be in any order).
pub fn diff(held: &[Snapshot], target: &[Snapshot]) -> Delta {
    let held_by_id: HashMap<QuestionId, &Snapshot> =
        held.iter().map(|s| (s.question_id, s)).collect();
    let mut upserted: Vec<Snapshot> = target
        .iter()
        .filter(|s| held_by_id.get(&s.question_id) != Some(s))
        .cloned()
        .collect();
    upserted.sort_by(by_id);
    let target_ids: std::collections::HashSet<QuestionId> =
        target.iter().map(|s| s.question_id).collect();
    let mut removed: Vec<QuestionId> = held_by_id
        .keys()
        .filter(|id| !target_ids.contains(id))
        .copied()
        .collect();
    removed.sort();
    Delta { upserted, removed }
}

/// Applies a delta as a phone does: the held questions minus `removed`, each upserted
/// snapshot replacing or adding the one of its id, ordered by `question_id`.
pub fn apply(held: &[Snapshot], delta: &Delta) -> Vec<Snapshot> {
    let mut by_id: HashMap<QuestionId, Snapshot> =
        held.iter().map(|s| (s.question_id, s.clone())).collect();
    for id in &delta.removed {
        by_id.remove(id);
    }
    for s in &delta.upserted {
        by_id.insert(s.question_id, s.clone());
    }
    let mut out: Vec<Snapshot> = by_id.into_values().collect();
    out.sort_by(self::by_id);
    out
}

/// The REST body of `GET /api/v1/tests/packages/{package_id}/delta?from=…`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeltaBody {
    pub package_id: Uuid,
    pub version: i32,
    pub version_hash: String,
    pub question_count: i32,
    pub from_package_id: Uuid,
    pub from_version: i32,
    pub from_version_hash: String,
    /// Snapshots to add or replace, ordered by `question_id`.
    pub upserted: Vec<Snapshot>,
    /// Question ids to drop, ascending.
    pub removed: Vec<Uuid>,
}

/// The two ends of a delta, as the body names them.
#[derive(Clone, Copy, Debug)]
pub struct DeltaEnds<'a> {
    pub package_id: PackageId,
    pub version: i32,
    pub version_hash: &'a str,
    pub question_count: i32,
    pub from_package_id: PackageId,
    pub from_version: i32,
    pub from_version_hash: &'a str,
}

/// The delta body's bytes: keys in the order above, each upserted snapshot in RFC 8785
/// form (as in the download), no whitespace. Deterministic for a given pair.
pub fn delta_body_bytes(ends: DeltaEnds<'_>, delta: &Delta) -> Result<Vec<u8>, String> {
    let upserted = crate::hashing::canonical_json(&delta.upserted).map_err(|e| e.to_string())?;
    #[derive(Serialize)]
    struct Head<'a> {
        package_id: PackageId,
        version: i32,
        version_hash: &'a str,
        question_count: i32,
        from_package_id: PackageId,
        from_version: i32,
        from_version_hash: &'a str,
    }
    let head = serde_json::to_vec(&Head {
        package_id: ends.package_id,
        version: ends.version,
        version_hash: ends.version_hash,
        question_count: ends.question_count,
        from_package_id: ends.from_package_id,
        from_version: ends.from_version,
        from_version_hash: ends.from_version_hash,
    })
    .map_err(|e| e.to_string())?;
    let removed = serde_json::to_vec(&delta.removed).map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(head.len() + upserted.len() + removed.len() + 32);
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"upserted\":");
    body.extend_from_slice(upserted.as_bytes());
    body.extend_from_slice(b",\"removed\":");
    body.extend_from_slice(&removed);
    body.push(b'}');
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::packages::{SnapshotMedia, canonical_questions};
    use proptest::prelude::*;

    fn snapshot(n: u128, stem: &str) -> Snapshot {
        Snapshot {
            question_id: QuestionId::from(Uuid::from_u128(n)),
            stem: stem.into(),
            option_a: Some("a".into()),
            option_b: Some("b".into()),
            option_c: None,
            option_d: None,
            option_e: None,
            correct_index: 0,
            explanation_md: None,
            year_id: 1,
            block_id: None,
            theme_id: None,
            cognitive_level: None,
            difficulty: None,
            media: Vec::new(),
        }
    }

    #[test]
    fn same_package_gives_an_empty_delta() {
        let held = vec![snapshot(1, "x"), snapshot(2, "y")];
        assert_eq!(diff(&held, &held), Delta::default());
    }

    #[test]
    fn adds_edits_and_removals_are_ordered() {
        let held = vec![snapshot(3, "c"), snapshot(1, "a"), snapshot(2, "b")];
        let target = vec![snapshot(5, "e"), snapshot(2, "B"), snapshot(4, "d")];
        let delta = diff(&held, &target);
        let ids: Vec<u128> = delta
            .upserted
            .iter()
            .map(|s| s.question_id.into_uuid().as_u128())
            .collect();
        assert_eq!(ids, vec![2, 4, 5]);
        assert_eq!(
            delta.removed,
            vec![
                QuestionId::from(Uuid::from_u128(1)),
                QuestionId::from(Uuid::from_u128(3))
            ]
        );
        let mut expected = target.clone();
        expected.sort_by(by_id);
        assert_eq!(apply(&held, &delta), expected);
    }

    /// `vectors/delta.json` (what the mobile recipes are tested against) is what this
    /// code computes, and applying it gives the hash the vector states.
    #[test]
    fn delta_vector_agrees() {
        #[derive(serde::Deserialize)]
        struct Side {
            version_hash: String,
            questions: Vec<Snapshot>,
        }
        #[derive(serde::Deserialize)]
        struct Wire {
            upserted: Vec<Snapshot>,
            removed: Vec<QuestionId>,
        }
        #[derive(serde::Deserialize)]
        struct Vector {
            held: Side,
            new: Side,
            delta: Wire,
            result_version_hash: String,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/delta.json");
        let vector: Vector = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            canonical_questions(vector.held.questions.clone())
                .unwrap()
                .1,
            vector.held.version_hash
        );
        assert_eq!(
            canonical_questions(vector.new.questions.clone()).unwrap().1,
            vector.new.version_hash
        );
        let delta = diff(&vector.held.questions, &vector.new.questions);
        assert_eq!(delta.upserted, vector.delta.upserted);
        assert_eq!(delta.removed, vector.delta.removed);
        let applied = apply(&vector.held.questions, &delta);
        assert_eq!(
            canonical_questions(applied).unwrap().1,
            vector.result_version_hash
        );
    }

    #[test]
    fn body_bytes_are_json_of_the_wire_shape() {
        let delta = diff(&[snapshot(1, "a")], &[snapshot(2, "b")]);
        let ends = DeltaEnds {
            package_id: PackageId::from(Uuid::from_u128(9)),
            version: 2,
            version_hash: "h2",
            question_count: 1,
            from_package_id: PackageId::from(Uuid::from_u128(8)),
            from_version: 1,
            from_version_hash: "h1",
        };
        let bytes = delta_body_bytes(ends, &delta).unwrap();
        let body: DeltaBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.upserted, delta.upserted);
        assert_eq!(body.removed, vec![Uuid::from_u128(1)]);
        assert_eq!(body.from_version_hash, "h1");
        assert_eq!(delta_body_bytes(ends, &delta).unwrap(), bytes);
    }

    // ------------------------------------------------------------------------------
    // Property: for random edit scripts, applying the delta gives exactly the target's
    // questions, and their canonical hash is the target's `version_hash`.

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-zé“ ]{0,6}")
    }

    /// A media reference drawn from a small pool of objects, so versions share some.
    fn arb_media() -> impl Strategy<Value = SnapshotMedia> {
        (0u8..6, 0usize..7, opt_text())
            .prop_map(|(object, placement, alt)| media_ref(object, placement, alt))
    }

    fn media_ref(object: u8, placement: usize, alt: Option<String>) -> SnapshotMedia {
        use crate::media::{MediaContentType, MediaPlacement, MediaSha256};
        let placements = [
            MediaPlacement::Stem,
            MediaPlacement::Explanation,
            MediaPlacement::OptionA,
            MediaPlacement::OptionB,
            MediaPlacement::OptionC,
            MediaPlacement::OptionD,
            MediaPlacement::OptionE,
        ];
        SnapshotMedia {
            sha256: MediaSha256::of(&[object]),
            content_type: MediaContentType::Png,
            bytes: i64::from(object) + 1,
            width: Some(i32::from(object) + 1),
            height: Some(1),
            placement: placements[placement % placements.len()],
            alt,
        }
    }

    fn arb_snapshot(id: u128) -> impl Strategy<Value = Snapshot> {
        (
            "[a-z ✓\"\\\\]{1,8}",
            proptest::collection::vec("[a-z]{0,3}", 2..=5),
            0i32..5,
            opt_text(),
            -2i32..3,
            proptest::option::of(-2i32..3),
            proptest::option::of(-2i32..3),
            opt_text(),
            opt_text(),
            proptest::collection::vec(arb_media(), 0..3),
        )
            .prop_map(
                move |(
                    stem,
                    options,
                    correct,
                    explanation,
                    year,
                    block,
                    theme,
                    level,
                    diff,
                    media,
                )| {
                    let mut o = options.into_iter();
                    Snapshot {
                        question_id: QuestionId::from(Uuid::from_u128(id)),
                        stem,
                        option_a: o.next(),
                        option_b: o.next(),
                        option_c: o.next(),
                        option_d: o.next(),
                        option_e: o.next(),
                        correct_index: correct,
                        explanation_md: explanation,
                        year_id: year,
                        block_id: block,
                        theme_id: theme,
                        cognitive_level: level,
                        difficulty: diff,
                        media,
                    }
                },
            )
    }

    /// One edit of a snapshot: one of its 15 fields changed (the id: a new question; the
    /// media: a reference added, or the first one replaced by another object).
    fn edit(s: &Snapshot, field: usize, salt: u32) -> Snapshot {
        let mut s = s.clone();
        let text = format!("edit{salt}");
        let flip = |o: &Option<String>| match o {
            Some(_) => None,
            None => Some(text.clone()),
        };
        match field % 15 {
            0 => s.question_id = QuestionId::from(Uuid::from_u128(u128::from(salt) << 64 | 0xffff)),
            1 => s.stem.push_str(&text),
            2 => s.option_a = Some(text.clone()),
            3 => s.option_b = Some(text.clone()),
            4 => s.option_c = flip(&s.option_c),
            5 => s.option_d = flip(&s.option_d),
            6 => s.option_e = flip(&s.option_e),
            7 => s.correct_index += 1,
            8 => s.explanation_md = flip(&s.explanation_md),
            9 => s.year_id += 1,
            10 => s.block_id = s.block_id.map_or(Some(7), |_| None),
            11 => s.theme_id = s.theme_id.map_or(Some(7), |_| None),
            12 => s.cognitive_level = flip(&s.cognitive_level),
            13 => s.difficulty = flip(&s.difficulty),
            _ => match s.media.first_mut() {
                Some(first) if salt.is_multiple_of(2) => {
                    *first = media_ref(salt as u8, salt as usize, None)
                }
                _ => s.media.push(media_ref(salt as u8, 0, Some(text))),
            },
        }
        s
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(Box<Snapshot>),
        Remove(usize),
        Edit(usize, usize, u32),
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Snapshot>, Vec<Op>, Vec<usize>)> {
        proptest::collection::vec(any::<u64>(), 0..24)
            .prop_flat_map(|ids| {
                let held: Vec<BoxedStrategy<Snapshot>> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| arb_snapshot(u128::from(*id) << 8 | i as u128).boxed())
                    .collect();
                held
            })
            .prop_flat_map(|held| {
                let op = prop_oneof![
                    any::<u64>()
                        .prop_flat_map(|id| arb_snapshot(u128::from(id) << 72 | 1))
                        .prop_map(|s| Op::Add(Box::new(s))),
                    any::<usize>().prop_map(Op::Remove),
                    (any::<usize>(), 0usize..15, any::<u32>())
                        .prop_map(|(i, f, s)| Op::Edit(i, f, s)),
                ];
                let n = held.len();
                (
                    Just(held),
                    proptest::collection::vec(op, 0..16),
                    // A permutation seed: the target's rows in another order.
                    proptest::collection::vec(any::<usize>(), n..=n + 16),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn applying_the_delta_gives_the_target(
            (held, ops, order) in arb_case()
        ) {
            let mut target = held.clone();
            for op in ops {
                match op {
                    Op::Add(s) if !target.iter().any(|t| t.question_id == s.question_id) => {
                        target.push(*s);
                    }
                    Op::Remove(i) if !target.is_empty() => {
                        target.remove(i % target.len());
                    }
                    Op::Edit(i, field, salt) if !target.is_empty() => {
                        let i = i % target.len();
                        let edited = edit(&target[i], field, salt);
                        if edited.question_id == target[i].question_id
                            || !target.iter().any(|t| t.question_id == edited.question_id)
                        {
                            target[i] = edited;
                        }
                    }
                    _ => {}
                }
            }
            // Reorder the target's rows (the server sorts; the order given must not matter).
            for (i, k) in order.iter().enumerate() {
                if !target.is_empty() {
                    let n = target.len();
                    target.swap(i % n, k % n);
                }
            }
            let delta = diff(&held, &target);
            let applied = apply(&held, &delta);
            let (target_json, target_hash) = canonical_questions(target.clone()).unwrap();
            let (applied_json, applied_hash) = canonical_questions(applied.clone()).unwrap();
            prop_assert_eq!(&applied_json, &target_json);
            prop_assert_eq!(&applied_hash, &target_hash);
            // Minimal: nothing unchanged is sent, every removed id was held and is gone.
            for s in &delta.upserted {
                prop_assert!(!held.contains(s));
            }
            for id in &delta.removed {
                prop_assert!(held.iter().any(|h| h.question_id == *id));
                prop_assert!(!target.iter().any(|t| t.question_id == *id));
            }
            prop_assert!(delta.upserted.windows(2).all(|w| w[0].question_id < w[1].question_id));
            // The objects the target needs are the held ones plus those the delta names, so
            // a bundle `?from=` the held version brings every missing one.
            let named: std::collections::HashSet<_> = held
                .iter()
                .chain(&delta.upserted)
                .flat_map(|s| s.media.iter().map(|m| m.sha256))
                .collect();
            prop_assert!(target.iter().flat_map(|s| &s.media).all(|m| named.contains(&m.sha256)));
            prop_assert!(delta.removed.windows(2).all(|w| w[0] < w[1]));
            // And the wire round trip keeps it.
            let ends = DeltaEnds {
                package_id: PackageId::nil(), version: 2, version_hash: target_hash.as_str(),
                question_count: 0, from_package_id: PackageId::nil(), from_version: 1,
                from_version_hash: "",
            };
            let body: DeltaBody =
                serde_json::from_slice(&delta_body_bytes(ends, &delta).unwrap()).unwrap();
            let wire = Delta {
                upserted: body.upserted,
                removed: body.removed.into_iter().map(QuestionId::from).collect(),
            };
            prop_assert_eq!(canonical_questions(apply(&held, &wire)).unwrap().1, target_hash);
        }
    }
}

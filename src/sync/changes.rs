//! The pull feed (`GET /api/v1/sync/changes`, `syncChanges`): the caller's sessions and
//! current answers changed after a cursor, in pages. REST and GraphQL call [`pull`]; only
//! rendering differs.
//!
//! Why nothing is skipped (`docs/architecture.md`, "The pull feed"): every transaction
//! that changes a user's session or answer first bumps `users.change_seq` and stamps the
//! rows it writes with the new value. The bump holds the user's row lock (PostgreSQL) or
//! the database write lock (SQLite) until commit, so the user's changes commit in counter
//! order. A pull first reads the committed counter (the *head*): every transaction with
//! a counter up to the head has committed, every later one gets a larger counter. Pages
//! walk the rows at or below the head in (counter, kind, id) order; the cursor is the
//! position of the last row given, or "everything up to the head" on the last page, so a
//! change committed later always lies after it.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use entity::{AttemptId, PackageId, UserId};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Select, sea_query::Expr,
};
use uuid::Uuid;

use crate::{
    app::App,
    error::{AppError, AppResult, ErrorCode},
};
use entity::{attempt, session_answer, test_session};

/// Items per page when the client names no limit.
pub const DEFAULT_LIMIT: i64 = 500;
/// Most items one page may hold.
pub const MAX_LIMIT: i64 = 1000;

/// What a position refers to: within one counter value sessions come before answers, and
/// `End` is after every row of that value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Session,
    Answer,
    End,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Session => 0,
            Kind::Answer => 1,
            Kind::End => 2,
        }
    }

    fn from_code(code: &str) -> Option<Kind> {
        match code {
            "0" => Some(Kind::Session),
            "1" => Some(Kind::Answer),
            "2" => Some(Kind::End),
            _ => None,
        }
    }
}

/// A place in a user's feed: (change counter, kind, row id), ordered in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: i64,
    pub kind: Kind,
    pub id: Uuid,
}

impl Position {
    /// Before every row (rows written before the feed existed have counter 0).
    pub const START: Position = Position {
        seq: -1,
        kind: Kind::End,
        id: Uuid::nil(),
    };

    /// After every row whose counter is at most `seq`.
    fn through(seq: i64) -> Position {
        Position {
            seq,
            kind: Kind::End,
            id: Uuid::nil(),
        }
    }
}

/// Why a `since` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorError {
    Malformed,
    /// Minted for the database's contents before a restore.
    Expired,
}

impl From<CursorError> for AppError {
    fn from(e: CursorError) -> Self {
        match e {
            CursorError::Malformed => AppError::BadRequest {
                code: ErrorCode::ValidationError,
                message: "since: not a cursor this server gave out".into(),
                details: Some(serde_json::json!({"field": "since"})),
            },
            CursorError::Expired => AppError::Gone {
                code: ErrorCode::CursorExpired,
                message: "the cursor predates a database restore; pull again without since".into(),
            },
        }
    }
}

/// `<version>.<epoch>.<seq>.<kind>.<id>`, base64url: opaque to clients, and carrying the
/// cache epoch so that a restore (which changes it) expires every cursor.
pub fn encode_cursor(epoch: &str, at: Position) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "1.{epoch}.{}.{}.{}",
        at.seq,
        at.kind.code(),
        at.id.simple()
    ))
}

/// The longest `since` decoded: a cursor is a few dozen bytes, and anything much longer is
/// not one.
const MAX_CURSOR_CHARS: usize = 256;

pub fn decode_cursor(epoch: &str, cursor: &str) -> Result<Position, CursorError> {
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(CursorError::Malformed);
    }
    // Decoded on the stack and read in place: every phone sends one after every sync, and
    // most of those pulls cost little else.
    let mut bytes = [0u8; MAX_CURSOR_CHARS * 3 / 4];
    let len = URL_SAFE_NO_PAD
        .decode_slice(cursor, &mut bytes)
        .map_err(|_| CursorError::Malformed)?;
    let text = std::str::from_utf8(&bytes[..len]).map_err(|_| CursorError::Malformed)?;
    let mut rest = text;
    let mut field = || {
        let (field, after) = split_at_dot(rest)?;
        rest = after;
        Some(field)
    };
    let (Some(version), Some(minted_epoch), Some(seq), Some(kind)) =
        (field(), field(), field(), field())
    else {
        return Err(CursorError::Malformed);
    };
    let id = rest;
    if version != "1" {
        return Err(CursorError::Malformed);
    }
    let seq: i64 = seq.parse().map_err(|_| CursorError::Malformed)?;
    let kind = Kind::from_code(kind).ok_or(CursorError::Malformed)?;
    let id = Uuid::try_parse(id).map_err(|_| CursorError::Malformed)?;
    if seq < -1 || minted_epoch.is_empty() {
        return Err(CursorError::Malformed);
    }
    if minted_epoch != epoch {
        return Err(CursorError::Expired);
    }
    Ok(Position { seq, kind, id })
}

/// `text` up to its first `.`, and what follows that dot (a byte loop: `str::split`'s
/// searcher cost more than the rest of a cursor's decoding).
fn split_at_dot(text: &str) -> Option<(&str, &str)> {
    let dot = text.bytes().position(|b| b == b'.')?;
    Some((&text[..dot], &text[dot + 1..]))
}

/// The page size asked for, or the default; outside 1..=1000 is refused.
pub fn page_limit(limit: Option<i64>) -> AppResult<i64> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::BadRequest {
            code: ErrorCode::ValidationError,
            message: format!("limit must be 1 to {MAX_LIMIT}; got {limit}"),
            details: Some(serde_json::json!({"field": "limit", "min": 1, "max": MAX_LIMIT})),
        });
    }
    Ok(limit)
}

/// An answer as the feed gives it: the current row and the package its attempt named.
#[derive(Clone, Debug)]
pub struct PulledAnswer {
    pub answer: session_answer::Model,
    pub package_id: Option<PackageId>,
}

/// One page of the feed.
#[derive(Clone, Debug)]
pub struct Page {
    pub sessions: Vec<test_session::Model>,
    pub answers: Vec<PulledAnswer>,
    pub cursor: String,
    pub has_more: bool,
}

/// The caller's changes after `since` (`None`: from the beginning), at most `limit` items.
pub async fn pull(
    app: &App,
    user_id: UserId,
    since: Option<&str>,
    limit: Option<i64>,
) -> AppResult<Page> {
    let limit = page_limit(limit)?;
    let after = match since {
        None => Position::START,
        Some(cursor) => decode_cursor(&app.cache_epoch, cursor)?,
    };
    let db = &app.db;
    let head = app.heads.head(db, user_id).await?;
    if after >= Position::through(head) {
        // Nothing committed past the cursor: one primary-key read, what a phone's pull
        // after every sync usually costs. The cursor sent already names this position.
        return Ok(Page {
            sessions: Vec::new(),
            answers: Vec::new(),
            cursor: since.map_or_else(|| encode_cursor(&app.cache_epoch, after), str::to_owned),
            has_more: false,
        });
    }
    // Each list gives one row more than the page: the first `limit` of the merge of the
    // two lists' heads are the first `limit` of the merge of the whole lists.
    // Answers are most of a feed: read them first, and when they fill a page, no session
    // past the last of them can be in it, so the sessions' range ends there too.
    let fetch = (limit + 1) as u64;
    let answers = answers_page(user_id, after, head, fetch).all(db).await?;
    let sessions_head = match answers.last() {
        Some(last) if answers.len() as u64 == fetch => last.change_seq,
        _ => head,
    };
    let sessions = sessions_page(user_id, after, sessions_head, fetch)
        .all(db)
        .await?;

    let mut sessions = sessions.into_iter().peekable();
    let mut answers = answers.into_iter().peekable();
    let mut page_sessions = Vec::new();
    let mut page_answers = Vec::new();
    let mut last = after;
    let mut has_more = false;
    loop {
        let next_session = sessions.peek().map(session_position);
        let next_answer = answers.peek().map(answer_position);
        let take_session = match (next_session, next_answer) {
            (None, None) => break,
            (Some(s), Some(a)) => s < a,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if (page_sessions.len() + page_answers.len()) as i64 == limit {
            has_more = true;
            break;
        }
        if take_session {
            if let Some(s) = sessions.next() {
                last = session_position(&s);
                page_sessions.push(s);
            }
        } else if let Some(a) = answers.next() {
            last = answer_position(&a);
            page_answers.push(a);
        }
    }
    // The last page has given every row up to the head: the next pull starts after it,
    // and finds nothing with one read until something new commits.
    let next = if has_more {
        last
    } else {
        Position::through(head)
    };
    let answers = with_packages(db, page_answers).await?;
    Ok(Page {
        sessions: page_sessions,
        answers,
        cursor: encode_cursor(&app.cache_epoch, next),
        has_more,
    })
}

fn session_position(s: &test_session::Model) -> Position {
    Position {
        seq: s.change_seq,
        kind: Kind::Session,
        id: s.id.into_uuid(),
    }
}

fn answer_position(a: &session_answer::Model) -> Position {
    Position {
        seq: a.change_seq,
        kind: Kind::Answer,
        id: a.id.into_uuid(),
    }
}

/// Rows of one kind after `after`, up to `head`: `change_seq >= s` is the index range on
/// (user_id, change_seq, id); the tie-break on the id only filters rows of counter `s`.
fn after_condition<C: ColumnTrait>(
    seq_col: C,
    id_col: C,
    kind: Kind,
    after: Position,
    head: i64,
) -> Condition {
    let range = Condition::all().add(seq_col.lte(head));
    if after.kind < kind {
        range.add(seq_col.gte(after.seq))
    } else if after.kind == kind {
        range.add(seq_col.gte(after.seq)).add(
            Condition::any()
                .add(seq_col.gt(after.seq))
                .add(id_col.gt(after.id)),
        )
    } else {
        range.add(seq_col.gt(after.seq))
    }
}

/// The page query of sessions (public for the plan test).
pub fn sessions_page(
    user_id: UserId,
    after: Position,
    head: i64,
    limit: u64,
) -> Select<test_session::Entity> {
    test_session::Entity::find()
        .filter(test_session::Column::UserId.eq(user_id))
        .filter(after_condition(
            test_session::Column::ChangeSeq,
            test_session::Column::Id,
            Kind::Session,
            after,
            head,
        ))
        .order_by_asc(test_session::Column::ChangeSeq)
        .order_by_asc(test_session::Column::Id)
        .limit(limit)
}

/// The page query of answers (public for the plan test).
pub fn answers_page(
    user_id: UserId,
    after: Position,
    head: i64,
    limit: u64,
) -> Select<session_answer::Entity> {
    session_answer::Entity::find()
        .filter(session_answer::Column::UserId.eq(user_id))
        .filter(after_condition(
            session_answer::Column::ChangeSeq,
            session_answer::Column::Id,
            Kind::Answer,
            after,
            head,
        ))
        .order_by_asc(session_answer::Column::ChangeSeq)
        .order_by_asc(session_answer::Column::Id)
        .limit(limit)
}

/// Attempt ids per package lookup on PostgreSQL: one array parameter of this many UUIDs
/// keeps the message under the size at which sqlx stalls on a delayed ACK (see `store`),
/// so the largest page costs a few primary-key reads.
const PACKAGE_LOOKUP_CHUNK: usize = 400;

/// The package each answer's attempt named: primary-key reads, bounded by the page.
async fn with_packages(
    db: &impl ConnectionTrait,
    answers: Vec<session_answer::Model>,
) -> AppResult<Vec<PulledAnswer>> {
    if answers.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<AttemptId> = answers.iter().map(|a| a.attempt_id).collect();
    let mut packages: std::collections::HashMap<AttemptId, Option<PackageId>> =
        std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(PACKAGE_LOOKUP_CHUNK) {
        let query = attempt::Entity::find()
            .select_only()
            .columns([attempt::Column::Id, attempt::Column::PackageId]);
        let query = if db.get_database_backend() == DbBackend::Postgres {
            query.filter(Expr::cust_with_values(
                "\"attempts\".\"id\" = ANY($1)",
                [super::store::uuids(chunk.iter().copied())],
            ))
        } else {
            query.filter(attempt::Column::Id.is_in(chunk.iter().copied()))
        };
        packages.extend(
            query
                .into_tuple::<(AttemptId, Option<PackageId>)>()
                .all(db)
                .await?,
        );
    }
    Ok(answers
        .into_iter()
        .map(|answer| PulledAnswer {
            package_id: packages.get(&answer.attempt_id).copied().flatten(),
            answer,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_carry_the_epoch() {
        let at = Position {
            seq: 42,
            kind: Kind::Answer,
            id: Uuid::new_v4(),
        };
        let cursor = encode_cursor("abc123", at);
        assert_eq!(decode_cursor("abc123", &cursor), Ok(at));
        assert_eq!(decode_cursor("other", &cursor), Err(CursorError::Expired));
        let start = encode_cursor("e", Position::START);
        assert_eq!(decode_cursor("e", &start), Ok(Position::START));
        // The longest cursor read: 192 bytes, 256 characters.
        let long_epoch = "e".repeat(152);
        let longest = encode_cursor(&long_epoch, at);
        assert_eq!(longest.len(), MAX_CURSOR_CHARS);
        assert_eq!(decode_cursor(&long_epoch, &longest), Ok(at));
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for bad in [
            "",
            "!!!",
            "x".repeat(300).as_str(),
            &URL_SAFE_NO_PAD.encode("1.e.5.1"),
            &URL_SAFE_NO_PAD.encode("2.e.5.1.00000000000000000000000000000000"),
            &URL_SAFE_NO_PAD.encode("1.e.-5.1.00000000000000000000000000000000"),
            &URL_SAFE_NO_PAD.encode("1.e.5.7.00000000000000000000000000000000"),
            &URL_SAFE_NO_PAD.encode("1.e.5.1.nope"),
            &URL_SAFE_NO_PAD.encode("1..5.1.00000000000000000000000000000000"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            &URL_SAFE_NO_PAD.encode("1.e.5.1.00000000000000000000000000000000.x"),
            // The longest length decoded, and one past it.
            &URL_SAFE_NO_PAD.encode("1".repeat(192)),
            &URL_SAFE_NO_PAD.encode("1".repeat(193)),
        ] {
            assert_eq!(
                decode_cursor("e", bad),
                Err(CursorError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn positions_order_sessions_before_answers_before_the_end() {
        let id = Uuid::max();
        let session = Position {
            seq: 3,
            kind: Kind::Session,
            id,
        };
        let answer = Position {
            seq: 3,
            kind: Kind::Answer,
            id: Uuid::nil(),
        };
        assert!(session < answer);
        assert!(answer < Position::through(3));
        assert!(Position::through(3) < Position { seq: 4, ..session });
        assert!(Position::START < Position { seq: 0, ..session });
    }

    #[test]
    fn limits_outside_one_to_a_thousand_are_refused() {
        assert_eq!(page_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(page_limit(Some(1)).unwrap(), 1);
        assert_eq!(page_limit(Some(1000)).unwrap(), 1000);
        for bad in [0, -1, 1001, i64::MAX, i64::MIN] {
            assert!(page_limit(Some(bad)).is_err());
        }
    }
}

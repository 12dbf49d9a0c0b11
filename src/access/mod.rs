//! Who may study what (docs/api.md section 3.1).
//!
//! The rules are plain functions over plain values (this module), unit-tested without a
//! database: when a grant is in force, what it covers, whether a set of grants covers a
//! package. `gate` applies them to requests with cheap in-process caches, `grants` stores
//! and changes grants, `index` keeps the question → package index, `import` reads the CSV
//! files of `examsync access import`. REST, GraphQL, sync and the CLI all call these.
pub mod gate;
pub mod grants;
pub mod import;
pub mod index;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entity::UserId;

pub use entity::enums::PackageScope;
pub use gate::{
    AccessCache, AccessError, may_read_delta, may_read_delta_from_memory, may_read_package,
    may_read_package_from_memory,
};

/// `EXAMSYNC_ACCESS`: whether grants decide what students read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessMode {
    /// Students and reviewers read only what their grants cover.
    #[default]
    Grants,
    /// Every authenticated user reads every published package (the previous server).
    Open,
}

/// The id of a stored grant.
pub use entity::GrantId;

/// What a grant opens: a scope with its one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantTarget {
    Program,
    Year(i32),
    Block(i32),
    Theme(i32),
}

/// Why a scope and ids do not make a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

impl GrantTarget {
    /// The grant of `scope`: exactly the id of its scope, the others absent.
    pub fn new(
        scope: PackageScope,
        year_id: Option<i32>,
        block_id: Option<i32>,
        theme_id: Option<i32>,
    ) -> Result<GrantTarget, TargetError> {
        let given = [
            ("yearId", year_id),
            ("blockId", block_id),
            ("themeId", theme_id),
        ];
        let (own, target) = match scope {
            PackageScope::Program => ("", Some(GrantTarget::Program)),
            PackageScope::Year => ("yearId", year_id.map(GrantTarget::Year)),
            PackageScope::Block => ("blockId", block_id.map(GrantTarget::Block)),
            PackageScope::Theme => ("themeId", theme_id.map(GrantTarget::Theme)),
        };
        if let Some((name, _)) = given.iter().find(|(n, v)| v.is_some() && *n != own) {
            return Err(TargetError(format!(
                "{name} does not fit a {} grant",
                scope.as_str()
            )));
        }
        target.ok_or_else(|| TargetError(format!("a {} grant needs {own}", scope.as_str())))
    }

    /// A value of a token's `access` claim: `PROGRAM`, `YEAR:<id>`, `BLOCK:<id>`,
    /// `THEME:<id>`.
    pub fn parse_claim(value: &str) -> Option<GrantTarget> {
        if value == "PROGRAM" {
            return Some(GrantTarget::Program);
        }
        let (scope, id) = value.split_once(':')?;
        // Digits only (an optional minus): `+1` or ` 1` are not what the platform sends.
        if id.is_empty()
            || !id
                .trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let id: i32 = id.parse().ok()?;
        match scope {
            "YEAR" => Some(GrantTarget::Year(id)),
            "BLOCK" => Some(GrantTarget::Block(id)),
            "THEME" => Some(GrantTarget::Theme(id)),
            _ => None,
        }
    }

    /// The token claim value of this grant (what [`GrantTarget::parse_claim`] reads).
    pub fn claim(self) -> String {
        match self {
            GrantTarget::Program => "PROGRAM".to_owned(),
            GrantTarget::Year(id) => format!("YEAR:{id}"),
            GrantTarget::Block(id) => format!("BLOCK:{id}"),
            GrantTarget::Theme(id) => format!("THEME:{id}"),
        }
    }

    pub fn scope(self) -> PackageScope {
        match self {
            GrantTarget::Program => PackageScope::Program,
            GrantTarget::Year(_) => PackageScope::Year,
            GrantTarget::Block(_) => PackageScope::Block,
            GrantTarget::Theme(_) => PackageScope::Theme,
        }
    }

    /// `(year_id, block_id, theme_id)` as stored.
    pub fn ids(self) -> (Option<i32>, Option<i32>, Option<i32>) {
        match self {
            GrantTarget::Program => (None, None, None),
            GrantTarget::Year(id) => (Some(id), None, None),
            GrantTarget::Block(id) => (None, Some(id), None),
            GrantTarget::Theme(id) => (None, None, Some(id)),
        }
    }

    pub fn covers(self, question: QuestionScope) -> bool {
        match self {
            GrantTarget::Program => true,
            GrantTarget::Year(id) => question.year_id == id,
            GrantTarget::Block(id) => question.block_id == Some(id),
            GrantTarget::Theme(id) => question.theme_id == Some(id),
        }
    }
}

/// The ids of a question, as a package snapshotted it (or as it is now, for sync).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuestionScope {
    pub year_id: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
}

/// When a grant is in force: from `valid_from` (none: always before), until `valid_until`
/// and `revoked_at` (none: never), each end excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Window {
    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        self.valid_from.is_none_or(|from| at >= from)
            && self.valid_until.is_none_or(|until| at < until)
            && self.revoked_at.is_none_or(|revoked| at < revoked)
    }
}

/// A stored grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub user_id: UserId,
    pub target: GrantTarget,
    pub window: Window,
    pub created_at: DateTime<Utc>,
}

impl Grant {
    /// The grant of a stored row; `None` for a row whose ids do not fit its scope (only
    /// written by hand: it grants nothing rather than failing every read of the user).
    pub fn from_row(row: entity::access_grant::Model) -> Option<Grant> {
        let target = GrantTarget::new(row.scope, row.year_id, row.block_id, row.theme_id).ok()?;
        Some(Grant {
            id: row.id,
            user_id: row.user_id,
            target,
            window: Window {
                valid_from: row.valid_from,
                valid_until: row.valid_until,
                revoked_at: row.revoked_at,
            },
            created_at: row.created_at,
        })
    }
}

/// What some grants cover, as sets for quick lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    program: bool,
    years: HashSet<i32>,
    blocks: HashSet<i32>,
    themes: HashSet<i32>,
}

impl Coverage {
    pub fn of(targets: impl IntoIterator<Item = GrantTarget>) -> Coverage {
        let mut coverage = Coverage::default();
        for target in targets {
            match target {
                GrantTarget::Program => coverage.program = true,
                GrantTarget::Year(id) => {
                    coverage.years.insert(id);
                }
                GrantTarget::Block(id) => {
                    coverage.blocks.insert(id);
                }
                GrantTarget::Theme(id) => {
                    coverage.themes.insert(id);
                }
            }
        }
        coverage
    }

    /// The coverage of the stored grants in force at `at`, plus the token's grants.
    pub fn in_force_at(grants: &[Grant], token: &[GrantTarget], at: DateTime<Utc>) -> Coverage {
        Coverage::of(
            grants
                .iter()
                .filter(|g| g.window.in_force_at(at))
                .map(|g| g.target)
                .chain(token.iter().copied()),
        )
    }

    pub fn covers(&self, q: QuestionScope) -> bool {
        self.program
            || self.years.contains(&q.year_id)
            || q.block_id.is_some_and(|b| self.blocks.contains(&b))
            || q.theme_id.is_some_and(|t| self.themes.contains(&t))
    }

    /// Whether every question of a package (given by the distinct scopes of its
    /// questions) is covered by at least one grant.
    pub fn covers_package(&self, question_scopes: &[QuestionScope]) -> bool {
        self.program || question_scopes.iter().all(|q| self.covers(*q))
    }

    pub fn is_empty(&self) -> bool {
        !self.program && self.years.is_empty() && self.blocks.is_empty() && self.themes.is_empty()
    }
}

/// Whether the stored grants covered a question at `at`, or the token's grants cover it
/// (sync: docs/api.md section 7.3).
pub fn covered_at(
    grants: &[Grant],
    token: &[GrantTarget],
    question: QuestionScope,
    at: DateTime<Utc>,
) -> bool {
    token.iter().any(|t| t.covers(question))
        || grants
            .iter()
            .any(|g| g.window.in_force_at(at) && g.target.covers(question))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap()
    }

    fn q(year_id: i32, block_id: Option<i32>, theme_id: Option<i32>) -> QuestionScope {
        QuestionScope {
            year_id,
            block_id,
            theme_id,
        }
    }

    fn grant(target: GrantTarget, window: Window) -> Grant {
        Grant {
            id: GrantId::new_v4(),
            user_id: UserId::nil(),
            target,
            window,
            created_at: at(1),
        }
    }

    #[test]
    fn targets_take_exactly_their_scope_id() {
        use PackageScope::*;
        assert_eq!(
            GrantTarget::new(Program, None, None, None),
            Ok(GrantTarget::Program)
        );
        assert_eq!(
            GrantTarget::new(Year, Some(2), None, None),
            Ok(GrantTarget::Year(2))
        );
        assert_eq!(
            GrantTarget::new(Theme, None, None, Some(0)),
            Ok(GrantTarget::Theme(0))
        );
        assert!(GrantTarget::new(Program, Some(1), None, None).is_err());
        assert!(GrantTarget::new(Year, None, None, None).is_err());
        assert!(GrantTarget::new(Block, Some(1), Some(2), None).is_err());
        assert!(GrantTarget::new(Theme, None, Some(2), Some(3)).is_err());
    }

    #[test]
    fn claims_parse_strictly() {
        assert_eq!(
            GrantTarget::parse_claim("PROGRAM"),
            Some(GrantTarget::Program)
        );
        assert_eq!(
            GrantTarget::parse_claim("YEAR:3"),
            Some(GrantTarget::Year(3))
        );
        assert_eq!(
            GrantTarget::parse_claim("BLOCK:-1"),
            Some(GrantTarget::Block(-1))
        );
        assert_eq!(
            GrantTarget::parse_claim("THEME:7"),
            Some(GrantTarget::Theme(7))
        );
        for target in [
            GrantTarget::Program,
            GrantTarget::Year(1),
            GrantTarget::Block(-4),
            GrantTarget::Theme(70),
        ] {
            assert_eq!(GrantTarget::parse_claim(&target.claim()), Some(target));
        }
        for bad in [
            "program",
            "YEAR",
            "YEAR:",
            "YEAR:x",
            "YEAR: 1",
            "YEAR:+1",
            "COURSE:1",
            "PROGRAM:1",
            "YEAR:99999999999",
        ] {
            assert_eq!(GrantTarget::parse_claim(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_exclude_their_ends() {
        let w = Window {
            valid_from: Some(at(2)),
            valid_until: Some(at(5)),
            revoked_at: None,
        };
        assert!(!w.in_force_at(at(1)));
        assert!(w.in_force_at(at(2)));
        assert!(w.in_force_at(at(4)));
        assert!(!w.in_force_at(at(5)));
        let revoked = Window {
            revoked_at: Some(at(3)),
            ..w
        };
        assert!(revoked.in_force_at(at(2)));
        assert!(!revoked.in_force_at(at(3)));
        let open = Window {
            valid_from: None,
            valid_until: None,
            revoked_at: None,
        };
        assert!(open.in_force_at(at(1)));
    }

    #[test]
    fn a_union_of_years_covers_the_program_package_of_those_years() {
        let package = [
            q(1, Some(10), None),
            q(2, Some(20), Some(7)),
            q(3, None, None),
        ];
        let years = Coverage::of([1, 2, 3].map(GrantTarget::Year));
        assert!(years.covers_package(&package));
        let two_years = Coverage::of([1, 2].map(GrantTarget::Year));
        assert!(!two_years.covers_package(&package));
        // A block and a theme fill the gap question by question.
        let mixed = Coverage::of([
            GrantTarget::Block(10),
            GrantTarget::Theme(7),
            GrantTarget::Year(3),
        ]);
        assert!(mixed.covers_package(&package));
        assert!(Coverage::of([GrantTarget::Program]).covers_package(&package));
        assert!(!Coverage::default().covers_package(&package));
        assert!(Coverage::default().is_empty());
    }

    #[test]
    fn sync_judges_stored_grants_at_the_answer_time() {
        let lapsed = grant(
            GrantTarget::Year(1),
            Window {
                valid_from: None,
                valid_until: Some(at(10)),
                revoked_at: None,
            },
        );
        let question = q(1, None, None);
        assert!(covered_at(
            std::slice::from_ref(&lapsed),
            &[],
            question,
            at(9)
        ));
        assert!(!covered_at(
            std::slice::from_ref(&lapsed),
            &[],
            question,
            at(10)
        ));
        // Token grants count whatever the answer time.
        assert!(covered_at(
            &[lapsed],
            &[GrantTarget::Year(1)],
            question,
            at(20)
        ));
        let coverage = Coverage::in_force_at(
            &[grant(
                GrantTarget::Theme(4),
                Window {
                    valid_from: Some(at(3)),
                    valid_until: None,
                    revoked_at: None,
                },
            )],
            &[],
            at(2),
        );
        assert!(coverage.is_empty());
    }
}

//! The CSV files of `examsync access import` (docs/api.md section 3.1): a header row naming
//! columns among `user_id, scope, year_id, block_id, theme_id, valid_from, valid_until`,
//! an empty cell meaning null. A file of `user_id, block_id` only — the previous server's
//! `user_allowed_blocks` export — holds BLOCK grants.
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PackageScope, grants::NewGrant};

const COLUMNS: [&str; 7] = [
    "user_id",
    "scope",
    "year_id",
    "block_id",
    "theme_id",
    "valid_from",
    "valid_until",
];

/// Why a file cannot be imported: the first bad line (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ImportError {
    pub line: u64,
    pub message: String,
}

fn at(line: u64, message: impl Into<String>) -> ImportError {
    ImportError {
        line,
        message: message.into(),
    }
}

/// Where each column of the file is, and whether it is the previous server's export.
struct Columns {
    user: Option<usize>,
    scope: Option<usize>,
    year: Option<usize>,
    block: Option<usize>,
    theme: Option<usize>,
    from: Option<usize>,
    until: Option<usize>,
    /// `user_id,block_id` only: every row is a BLOCK grant.
    legacy_blocks: bool,
}

/// Parses a whole file, or names its first bad line. Nothing is stored here.
pub fn parse(bytes: &[u8]) -> Result<Vec<NewGrant>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| at(1, format!("the header row does not read: {e}")))?;
    let columns = read_header(header)?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            at(line, format!("does not read as CSV: {e}"))
        })?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        out.push(parse_row(&columns, &record)?);
    }
    Ok(out)
}

/// The header row (line 1): known columns, each once, a user and a scope (or the previous
/// server's `user_id,block_id`).
fn read_header(header: &csv::StringRecord) -> Result<Columns, ImportError> {
    let mut index = [None; 7];
    for (i, name) in header.iter().enumerate() {
        let name = name.trim_start_matches('\u{feff}').to_ascii_lowercase();
        let Some(column) = COLUMNS.iter().position(|c| *c == name) else {
            return Err(at(
                1,
                format!(
                    "unknown column `{}`; allowed: {}",
                    name.chars().take(40).collect::<String>(),
                    COLUMNS.join(", ")
                ),
            ));
        };
        if index[column].replace(i).is_some() {
            return Err(at(1, format!("column `{name}` appears twice")));
        }
    }
    let [user, scope, year, block, theme, from, until] = index;
    if user.is_none() {
        return Err(at(1, "the header must name a user_id column"));
    }
    // The previous server's export: user_id and block_id, nothing else.
    let legacy_blocks = scope.is_none()
        && block.is_some()
        && [year, theme, from, until].iter().all(Option::is_none);
    if scope.is_none() && !legacy_blocks {
        return Err(at(
            1,
            "the header must name a scope column (or be `user_id,block_id`)",
        ));
    }
    Ok(Columns {
        user,
        scope,
        year,
        block,
        theme,
        from,
        until,
        legacy_blocks,
    })
}

/// One grant row, or why its line is refused.
fn parse_row(columns: &Columns, record: &csv::StringRecord) -> Result<NewGrant, ImportError> {
    let line = record.position().map_or(0, |p| p.line());
    let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
    let int = |i: Option<usize>, name: &str| -> Result<Option<i32>, ImportError> {
        cell(i)
            .map(|v| {
                v.parse::<i32>()
                    .map_err(|_| at(line, format!("{name} must be an integer")))
            })
            .transpose()
    };
    let time = |i: Option<usize>, name: &str| -> Result<Option<DateTime<Utc>>, ImportError> {
        cell(i)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| at(line, format!("{name} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let user_id = cell(columns.user)
        .ok_or_else(|| at(line, "user_id is empty"))
        .and_then(|v| {
            Uuid::try_parse(v)
                .map(entity::UserId::from)
                .map_err(|_| at(line, "user_id must be a UUID"))
        })?;
    let scope = if columns.legacy_blocks {
        PackageScope::Block
    } else {
        let name = cell(columns.scope).ok_or_else(|| at(line, "scope is empty"))?;
        PackageScope::parse(name).ok_or_else(|| {
            at(
                line,
                format!(
                    "unknown scope `{}`; allowed: PROGRAM, YEAR, BLOCK, THEME",
                    name.chars().take(40).collect::<String>()
                ),
            )
        })?
    };
    NewGrant::new(
        user_id,
        scope,
        int(columns.year, "year_id")?,
        int(columns.block, "block_id")?,
        int(columns.theme, "theme_id")?,
        time(columns.from, "valid_from")?,
        time(columns.until, "valid_until")?,
    )
    .map_err(|e| at(line, e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::access::GrantTarget;

    const U: &str = "5f0c1b2e-8d4a-4c3b-9a1e-2b3c4d5e6f70";

    #[test]
    fn named_columns_in_any_order() {
        let file = format!(
            "scope,user_id,year_id,valid_until\nYEAR,{U},2,2027-01-01T00:00:00Z\nprogram,{U},,\n"
        );
        let grants = parse(file.as_bytes()).unwrap();
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[0].target, GrantTarget::Year(2));
        assert!(grants[0].valid_until.is_some());
        assert_eq!(grants[1].target, GrantTarget::Program);
        assert_eq!(grants[1].valid_until, None);
    }

    #[test]
    fn the_legacy_export_holds_block_grants() {
        let file = format!("user_id,block_id\n{U},4\n{U},5\n");
        let grants = parse(file.as_bytes()).unwrap();
        assert_eq!(
            grants.iter().map(|g| g.target).collect::<Vec<_>>(),
            vec![GrantTarget::Block(4), GrantTarget::Block(5)]
        );
    }

    #[test]
    fn the_first_bad_line_is_named() {
        let file = format!("user_id,scope,block_id\n{U},BLOCK,1\n{U},BLOCK,x\n{U},NOPE,1\n");
        let err = parse(file.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let err = parse(format!("user_id,scope,year_id\n{U},BLOCK,1\n").as_bytes()).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = parse(b"user_id,colour\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse(b"user_id,year_id\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse(b"user_id,block_id\nnot-a-uuid,1\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}

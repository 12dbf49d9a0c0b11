//! The command line (`examsync --help`). Every setting is also an env var.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::{auth::Role, config::Config, packages::PackageScope};

#[derive(Debug, Parser)]
#[command(
    name = "examsync",
    version,
    about = "Offline study server for a medical exam question bank"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve HTTP.
    Serve {
        /// Seed a demo question bank into an empty database and print demo tokens
        /// (a random JWT_SECRET is used when none is set).
        #[arg(long)]
        demo: bool,
    },
    /// Run migrations and exit.
    Migrate,
    /// Print a signed access token.
    Token {
        #[arg(long)]
        user: Uuid,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime, e.g. 3600, 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Grants carried in the token's `access` claim, comma-separated: PROGRAM,
        /// `YEAR:<id>`, `BLOCK:<id>`, `THEME:<id>`. (`--access` is the server's access mode.)
        #[arg(long = "grant", value_delimiter = ',', value_parser = parse_grant_claim)]
        grants: Vec<crate::access::GrantTarget>,
    },
    /// Question bank commands.
    Questions {
        #[command(subcommand)]
        command: QuestionsCommand,
    },
    /// Media object commands.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
    /// Print the GraphQL SDL (what schema.graphql holds).
    Schema,
    /// Test package commands.
    Package {
        #[command(subcommand)]
        command: PackageCommand,
    },
    /// Grants: who may study what (docs/api.md section 3.1).
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Cache commands.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Give the database a new cache epoch, so that nothing cached before (in Redis or
    /// in a running instance) is read again. Run it after restoring a backup, before
    /// starting the instances.
    Reset,
}

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Record a grant and print its id.
    Grant {
        #[arg(long)]
        user: Uuid,
        #[arg(long, value_parser = parse_scope)]
        scope: PackageScope,
        #[arg(long, conflicts_with_all = ["block_id", "theme_id"])]
        year_id: Option<i32>,
        #[arg(long, conflicts_with = "theme_id")]
        block_id: Option<i32>,
        #[arg(long)]
        theme_id: Option<i32>,
        /// Start (RFC 3339); none: no start.
        #[arg(long = "from", value_parser = parse_time)]
        valid_from: Option<chrono::DateTime<chrono::Utc>>,
        /// End, excluded (RFC 3339); none: no end.
        #[arg(long = "until", value_parser = parse_time)]
        valid_until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Revoke a grant now.
    Revoke { grant_id: Uuid },
    /// Print every stored grant of a user, one line each, starting with its id.
    List {
        #[arg(long)]
        user: Uuid,
    },
    /// Import grants from a CSV file (all or nothing; importing it again changes nothing).
    Import { file: PathBuf },
}

fn parse_grant_claim(s: &str) -> Result<crate::access::GrantTarget, String> {
    crate::access::GrantTarget::parse_claim(s.trim())
        .ok_or_else(|| "must be PROGRAM, YEAR:<id>, BLOCK:<id> or THEME:<id>".into())
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| "must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z".into())
}

#[derive(Debug, Subcommand)]
pub enum QuestionsCommand {
    /// Upsert questions from a JSON file (an array of QuestionInput objects, camelCase).
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Store media files (files, or directories walked recursively). Prints
    /// `<sha256> <content_type> <bytes> <path>` for each stored file; a file of a type not
    /// allowed is named on stderr and makes the exit status non-zero after the others are
    /// stored. Running it again changes nothing.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Build (and optionally publish) a package from the published questions of a scope.
    Build {
        #[arg(long, value_parser = parse_scope)]
        scope: PackageScope,
        #[arg(long)]
        year_id: Option<i32>,
        #[arg(long)]
        block_id: Option<i32>,
        #[arg(long)]
        theme_id: Option<i32>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        publish: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(&s.to_ascii_uppercase()).ok_or_else(|| "must be STUDENT, ADMIN or REVIEWER".into())
}

fn parse_scope(s: &str) -> Result<PackageScope, String> {
    PackageScope::parse(s).ok_or_else(|| "must be PROGRAM, YEAR, BLOCK or THEME".into())
}

/// `3600`, `90s`, `30m`, `1h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit `{unit}` (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the lifetime must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0").is_err());
    }
}

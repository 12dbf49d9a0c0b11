//! Configuration, read once at start into a typed struct (env vars, some also as flags).
//!
//! clap validates every value and names the offending setting on error; `--help` lists them.
use std::{fmt, net::SocketAddr, time::Duration};

/// The shortest HS256 key accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret string that never shows up in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // RFC 7518 §3.2: an HS256 key is at least as long as the hash output.
        if s.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_SECRET_BYTES} bytes long (RFC 7518 §3.2)"
            ));
        }
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    if s.starts_with("rediss://") {
        // The redis crate is built without TLS (no OpenSSL, no extra TLS stack here).
        Err(
            "TLS (rediss://) is not supported by this build; use redis:// on a private network"
                .into(),
        )
    } else if s.starts_with("redis://") || s.starts_with("redis+cluster://") {
        Ok(s.to_owned())
    } else {
        Err("must start with redis:// or redis+cluster://".into())
    }
}

fn parse_database_url(s: &str) -> Result<String, String> {
    if s.starts_with("sqlite:") || s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err("must be a sqlite:… or postgres://… URL".into())
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(char::is_whitespace) || s.contains(['{', '}']) {
        Err("must be non-empty, without spaces or braces".into())
    } else {
        Ok(s.to_owned())
    }
}

/// Every default setting, written once: the clap attributes and [`Config::with_database`]
/// both read these.
pub mod defaults {
    pub const DATABASE_URL: &str = "sqlite://examsync.db?mode=rwc";
    pub const DB_POOL_SIZE: u32 = 10;
    pub const REDIS_PREFIX: &str = "examsync:";
    pub const REDIS_TIMEOUT_MS: u64 = 250;
    pub const BIND: &str = "127.0.0.1:8000";
    pub const RATE_LIMIT_PER_MINUTE: u32 = 600;
    pub const RATE_LIMIT_WINDOW_SECS: u64 = 60;
    pub const GRAPHQL_MAX_DEPTH: u32 = 15;
    pub const GRAPHQL_MAX_COMPLEXITY: u32 = 1000;
    pub const GRAPHQL_MAX_ALIASES: u32 = 30;
    pub const GRAPHQL_MAX_NODES: u64 = 20_000;
    pub const PACKAGE_RATE_LIMIT_PER_MINUTE: u32 = 1200;
    pub const ANONYMOUS_RATE_LIMIT_PER_MINUTE: u32 = 120;
    pub const MAX_IN_FLIGHT: usize = 1024;
    pub const PRODUCTION: bool = false;
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    pub const MEDIA_MAX_BYTES: usize = crate::media::DEFAULT_MAX_BYTES;
    pub const REQUEST_TIMEOUT_SECS: u64 = 30;
    /// A third of the request budget: a statement cut off by it leaves time to answer 503.
    pub const DB_STATEMENT_TIMEOUT_MS: u64 = 10_000;
}

/// Every runtime setting of the server. Flags override env vars.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Database: a `postgres://…` URL in production; SQLite is the embedded default.
    #[arg(long, env = "DATABASE_URL", default_value = defaults::DATABASE_URL, value_parser = parse_database_url, global = true)]
    pub database_url: String,

    /// Database connection pool size.
    #[arg(long, env = "EXAMSYNC_DB_POOL_SIZE", default_value_t = defaults::DB_POOL_SIZE, value_parser = clap::value_parser!(u32).range(1..=500), global = true)]
    pub db_pool_size: u32,

    /// Redis (`redis://…`, or `redis+cluster://host:port,host:port` for a cluster).
    /// Unset: an in-process cache takes Redis's place.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url, global = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "EXAMSYNC_REDIS_PREFIX", default_value = defaults::REDIS_PREFIX, value_parser = parse_prefix, global = true)]
    pub redis_prefix: String,

    /// Per-call Redis timeout in milliseconds; past it the database answers instead.
    #[arg(long, env = "EXAMSYNC_REDIS_TIMEOUT_MS", default_value_t = defaults::REDIS_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=10_000), global = true)]
    pub redis_timeout_ms: u64,

    /// HS256 key for access tokens (at least 32 bytes, RFC 7518 §3.2).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<Secret>,

    /// The previous HS256 key, still accepted during key rotation.
    #[arg(
        long,
        env = "JWT_SECRET_PREVIOUS",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret_previous: Option<Secret>,

    /// When set, a token's `iss` must equal it.
    #[arg(long, env = "EXAMSYNC_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// When set, a token's `aud` must contain it; when unset, a token carrying `aud` is
    /// refused.
    #[arg(long, env = "EXAMSYNC_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// `grants`: students read only what their grants cover; `open`: every
    /// authenticated user reads every published package.
    #[arg(long, env = "EXAMSYNC_ACCESS", value_enum, default_value_t = crate::access::AccessMode::Grants, global = true)]
    pub access: crate::access::AccessMode,

    /// Listen address.
    #[arg(
        long = "bind",
        env = "EXAMSYNC_BIND",
        default_value = defaults::BIND,
        global = true
    )]
    pub bind: SocketAddr,

    /// Log format on stderr.
    #[arg(long, env = "EXAMSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Sync and GraphQL requests per user per minute (0 turns the limit off).
    #[arg(
        long,
        env = "EXAMSYNC_RATE_LIMIT_PER_MINUTE",
        default_value_t = defaults::RATE_LIMIT_PER_MINUTE,
        global = true
    )]
    pub rate_limit_per_minute: u32,

    /// Length of the rate-limit window in seconds (the budget is per minute, scaled to it).
    #[arg(long, env = "EXAMSYNC_RATE_LIMIT_WINDOW_SECS", default_value_t = defaults::RATE_LIMIT_WINDOW_SECS, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub rate_limit_window_secs: u64,

    /// Maximum GraphQL query depth.
    #[arg(long, env = "EXAMSYNC_GRAPHQL_MAX_DEPTH", default_value_t = defaults::GRAPHQL_MAX_DEPTH, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub graphql_max_depth: u32,

    /// Maximum GraphQL query complexity.
    #[arg(long, env = "EXAMSYNC_GRAPHQL_MAX_COMPLEXITY", default_value_t = defaults::GRAPHQL_MAX_COMPLEXITY, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub graphql_max_complexity: u32,

    /// Maximum number of aliased/batched root fields in one GraphQL document.
    #[arg(
        long,
        env = "EXAMSYNC_GRAPHQL_MAX_ALIASES",
        default_value_t = defaults::GRAPHQL_MAX_ALIASES,
        global = true
    )]
    pub graphql_max_aliases: u32,

    /// Serve the GraphQL introspection query (GraphiQL and code generators need it).
    /// Unset: on, except in production mode.
    #[arg(long, env = "EXAMSYNC_GRAPHQL_INTROSPECTION", action = clap::ArgAction::Set, global = true)]
    pub graphql_introspection: Option<bool>,

    /// Most list items one GraphQL document may return, judged before it runs.
    #[arg(long, env = "EXAMSYNC_GRAPHQL_MAX_NODES", default_value_t = defaults::GRAPHQL_MAX_NODES, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub graphql_max_nodes: u64,

    /// Package, delta and media requests per user per minute (0 turns the limit off).
    #[arg(long, env = "EXAMSYNC_PACKAGE_RATE_LIMIT_PER_MINUTE", default_value_t = defaults::PACKAGE_RATE_LIMIT_PER_MINUTE, global = true)]
    pub package_rate_limit_per_minute: u32,

    /// Requests without a valid token per client address per minute (0 turns it off).
    #[arg(long, env = "EXAMSYNC_ANONYMOUS_RATE_LIMIT_PER_MINUTE", default_value_t = defaults::ANONYMOUS_RATE_LIMIT_PER_MINUTE, global = true)]
    pub anonymous_rate_limit_per_minute: u32,

    /// Requests in flight per instance; past it new requests get 503 at once.
    #[arg(long, env = "EXAMSYNC_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), global = true)]
    pub max_in_flight: usize,

    /// When set, `/metrics` is served on this address only, not on the API port.
    #[arg(long, env = "EXAMSYNC_METRICS_BIND", global = true)]
    pub metrics_bind: Option<SocketAddr>,

    /// Trusted documents: persisted query manifests (Apollo's
    /// `apollo-persisted-query-manifest` format), comma-separated; each path is a manifest
    /// file or a directory of `*.json` manifests. When set, only the operations they list
    /// run (their union, for several app versions at once).
    #[arg(
        long,
        env = "EXAMSYNC_GRAPHQL_TRUSTED_DOCUMENTS",
        value_delimiter = ',',
        global = true
    )]
    pub graphql_trusted_documents: Vec<std::path::PathBuf>,

    /// Production mode: no "did you mean" field suggestions in GraphQL errors, and no
    /// introspection unless `EXAMSYNC_GRAPHQL_INTROSPECTION` asks for it.
    #[arg(long, env = "EXAMSYNC_PRODUCTION", default_value_t = defaults::PRODUCTION, action = clap::ArgAction::Set, global = true)]
    pub production: bool,

    /// Largest accepted request body in bytes.
    #[arg(long, env = "EXAMSYNC_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES, global = true)]
    pub max_body_bytes: usize,

    /// Largest media object in bytes (`PUT /api/v1/media/{sha256}` has this body limit
    /// instead of `EXAMSYNC_MAX_BODY_BYTES`).
    #[arg(long, env = "EXAMSYNC_MEDIA_MAX_BYTES", default_value_t = defaults::MEDIA_MAX_BYTES, global = true)]
    pub media_max_bytes: usize,

    /// Whole-request timeout in seconds (also bounds slow request bodies).
    #[arg(long, env = "EXAMSYNC_REQUEST_TIMEOUT_SECS", default_value_t = defaults::REQUEST_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub request_timeout_secs: u64,

    /// Database-side bound on one statement in milliseconds (PostgreSQL
    /// `statement_timeout`, SQLite busy timeout). Keep it below the request budget: a
    /// statement that hits it fails as a transient fault (503) and its transaction rolls back.
    #[arg(long, env = "EXAMSYNC_DB_STATEMENT_TIMEOUT_MS", default_value_t = defaults::DB_STATEMENT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=3_600_000), global = true)]
    pub db_statement_timeout_ms: u64,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            db_pool_size: defaults::DB_POOL_SIZE,
            redis_url: None,
            redis_prefix: defaults::REDIS_PREFIX.into(),
            redis_timeout_ms: defaults::REDIS_TIMEOUT_MS,
            jwt_secret: None,
            jwt_secret_previous: None,
            jwt_issuer: None,
            jwt_audience: None,
            access: crate::access::AccessMode::Grants,
            // Tests and embedders bind an ephemeral port, not the default one.
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Text,
            rate_limit_per_minute: defaults::RATE_LIMIT_PER_MINUTE,
            rate_limit_window_secs: defaults::RATE_LIMIT_WINDOW_SECS,
            graphql_max_depth: defaults::GRAPHQL_MAX_DEPTH,
            graphql_max_complexity: defaults::GRAPHQL_MAX_COMPLEXITY,
            graphql_max_aliases: defaults::GRAPHQL_MAX_ALIASES,
            graphql_introspection: None,
            graphql_max_nodes: defaults::GRAPHQL_MAX_NODES,
            package_rate_limit_per_minute: defaults::PACKAGE_RATE_LIMIT_PER_MINUTE,
            anonymous_rate_limit_per_minute: defaults::ANONYMOUS_RATE_LIMIT_PER_MINUTE,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            metrics_bind: None,
            graphql_trusted_documents: Vec::new(),
            production: defaults::PRODUCTION,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            media_max_bytes: defaults::MEDIA_MAX_BYTES,
            request_timeout_secs: defaults::REQUEST_TIMEOUT_SECS,
            db_statement_timeout_ms: defaults::DB_STATEMENT_TIMEOUT_MS,
        }
    }

    /// Whether introspection is served: as set, or on unless in production mode.
    pub fn introspection(&self) -> bool {
        self.graphql_introspection.unwrap_or(!self.production)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn db_statement_timeout(&self) -> Duration {
        Duration::from_millis(self.db_statement_timeout_ms)
    }

    /// The database URL without password, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }

    /// The Redis URL without password, for logs.
    pub fn redis_url_redacted(&self) -> Option<String> {
        self.redis_url.as_deref().map(redact_url)
    }
}

/// Drops `user:password@` from a URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    /// `with_database` and the command line agree on every default (they share
    /// `defaults`, and this catches a field set to something else by hand).
    #[test]
    fn with_database_equals_the_parsed_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        // Only settings that are unset in this process are compared.
        let parsed = Cli::try_parse_from(["examsync"]).unwrap().config;
        let built = Config::with_database(parsed.database_url.clone());
        let configured = |k: &str| {
            (k.starts_with("EXAMSYNC_") && k != "EXAMSYNC_REQUIRE_SERVICES") || k == "REDIS_URL"
        };
        if std::env::vars().any(|(k, _)| configured(&k)) {
            return;
        }
        assert_eq!(
            format!(
                "{:?}",
                Config {
                    bind: built.bind,
                    ..parsed
                }
            ),
            format!("{built:?}")
        );
    }
}

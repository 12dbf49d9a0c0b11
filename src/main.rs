//! The `examsync` binary: parses the command line and runs one command.
use std::process::ExitCode;

use clap::Parser;
use examsync::{
    Application,
    access::{self, grants::NewGrant},
    app::shutdown_signal,
    auth::sign_token_with_access,
    cli::{
        AccessCommand, CacheCommand, Cli, Command, MediaCommand, PackageCommand, QuestionsCommand,
    },
    config::{Config, Secret},
    db, demo, graphql, media, packages, questions, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = cli.config;
    match cli.command {
        Command::Serve { demo } => serve(config, demo).await,
        Command::Migrate => run_migrate(&config).await,
        Command::Token {
            user,
            role,
            ttl,
            grants,
        } => run_token(config.jwt_secret, user, role, ttl, &grants),
        Command::Questions { command } => run_questions(&config, command).await,
        Command::Media { command } => run_media(&config, command).await,
        Command::Cache { command } => run_cache(&config, command).await,
        Command::Access { command } => {
            let db = connect_migrated(&config).await?;
            run_access(&db, command).await
        }
        Command::Schema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Command::Package { command } => run_package(&config, command).await,
    }
}

/// `examsync migrate`: applies the migrations and says where.
async fn run_migrate(config: &Config) -> Result<(), String> {
    connect_migrated(config).await?;
    eprintln!("migrations applied ({})", config.database_url_redacted());
    Ok(())
}

/// `examsync token`: signs a token with the configured secret.
fn run_token(
    secret: Option<Secret>,
    user: uuid::Uuid,
    role: examsync::auth::Role,
    ttl: std::time::Duration,
    grants: &[access::GrantTarget],
) -> Result<(), String> {
    let secret = secret.ok_or("JWT_SECRET is required to sign tokens")?;
    let token = sign_token_with_access(&secret.0, user, role, ttl.as_secs() as i64, grants)
        .map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

/// `examsync questions import FILE`: the file is read and checked before the
/// database is opened.
async fn run_questions(config: &Config, command: QuestionsCommand) -> Result<(), String> {
    let QuestionsCommand::Import { file } = command;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let items = questions::parse_import_file(&text).map_err(|e| e.operator_message())?;
    let db = connect_migrated(config).await?;
    let result = questions::import_questions(&db, items)
        .await
        .map_err(|e| e.operator_message())?;
    println!(
        "imported {} questions: {} created, {} updated",
        result.ids.len(),
        result.created,
        result.updated
    );
    Ok(())
}

/// `examsync media import PATH…`: stores each file, and fails if any was refused.
async fn run_media(config: &Config, command: MediaCommand) -> Result<(), String> {
    let MediaCommand::Import { paths } = command;
    let db = connect_migrated(config).await?;
    let report = media::import::import_paths(&db, &paths, config.media_max_bytes).await?;
    for (path, meta) in &report.stored {
        println!(
            "{} {} {} {}",
            meta.sha256,
            meta.content_type.as_str(),
            meta.bytes,
            path.display()
        );
    }
    for (path, why) in &report.refused {
        eprintln!("refused {}: {why}", path.display());
    }
    match report.refused.len() {
        0 => Ok(()),
        n => Err(format!("{n} file(s) not stored")),
    }
}

/// `examsync cache reset`: moves the shared cache to a new epoch.
async fn run_cache(config: &Config, command: CacheCommand) -> Result<(), String> {
    let CacheCommand::Reset = command;
    let db = connect_migrated(config).await?;
    let (old, new) = examsync::cache::reset_epoch(&db)
        .await
        .map_err(|e| format!("cache reset failed: {e}"))?;
    println!(
        "cache epoch {} -> {new}; restart every instance to use it",
        old.as_deref().unwrap_or("(none)")
    );
    Ok(())
}

/// `examsync package build …`: builds a package from the published questions of a
/// scope, and publishes it when asked.
async fn run_package(config: &Config, command: PackageCommand) -> Result<(), String> {
    let PackageCommand::Build {
        scope,
        year_id,
        block_id,
        theme_id,
        name,
        description,
        publish,
    } = command;
    let db = connect_migrated(config).await?;
    let request = packages::BuildRequest {
        name: name.unwrap_or_else(|| format!("{scope:?} package")),
        description,
        scope,
        year_id,
        block_id,
        theme_id,
        publish,
        created_by: None,
    };
    let package = packages::build_package(&db, request)
        .await
        .map_err(|e| e.operator_message())?;
    println!(
        "package {} version {} ({} questions, hash {}, {})",
        package.id,
        package.version,
        package.question_count,
        package.version_hash,
        if package.is_published {
            "published"
        } else {
            "unpublished"
        }
    );
    Ok(())
}

/// `examsync access …`: the same rules as the admin GraphQL operations.
async fn run_access(
    db: &sea_orm::DatabaseConnection,
    command: AccessCommand,
) -> Result<(), String> {
    let line = |g: &access::Grant| {
        let (year, block, theme) = g.target.ids();
        let show = |v: Option<i32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
        };
        format!(
            "{} user={} scope={} year_id={} block_id={} theme_id={} valid_from={} valid_until={} revoked_at={} created_at={}",
            g.id,
            g.user_id,
            g.target.scope().as_str(),
            show(year),
            show(block),
            show(theme),
            time(g.window.valid_from),
            time(g.window.valid_until),
            time(g.window.revoked_at),
            g.created_at.to_rfc3339()
        )
    };
    match command {
        AccessCommand::Grant {
            user,
            scope,
            year_id,
            block_id,
            theme_id,
            valid_from,
            valid_until,
        } => {
            let new = NewGrant::new(
                user.into(),
                scope,
                year_id,
                block_id,
                theme_id,
                valid_from,
                valid_until,
            )
            .map_err(|e| e.operator_message())?;
            let grant = access::grants::grant(db, new)
                .await
                .map_err(|e| e.operator_message())?;
            println!("{}", grant.id);
        }
        AccessCommand::Revoke { grant_id } => {
            let grant = access::grants::revoke(db, access::GrantId::from(grant_id))
                .await
                .map_err(|e| e.operator_message())?;
            println!("{}", line(&grant));
        }
        AccessCommand::List { user } => {
            for grant in access::grants::list(db, user.into())
                .await
                .map_err(|e| e.operator_message())?
            {
                println!("{}", line(&grant));
            }
        }
        AccessCommand::Import { file } => {
            let bytes =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let grants = access::import::parse(&bytes)
                .map_err(|e| format!("{}: {e}; nothing imported", file.display()))?;
            let outcome = access::grants::import(db, &grants)
                .await
                .map_err(|e| e.operator_message())?;
            println!(
                "imported {} grants: {} created, {} already there",
                grants.len(),
                outcome.created,
                outcome.unchanged
            );
        }
    }
    Ok(())
}

async fn connect(config: &Config) -> Result<sea_orm::DatabaseConnection, String> {
    db::connect_with(
        &config.database_url,
        config.db_pool_size,
        config.db_statement_timeout(),
    )
    .await
    .map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            config.database_url_redacted()
        )
    })
}

/// Opens the database and applies the migrations: what every command that
/// touches the database does first.
async fn connect_migrated(config: &Config) -> Result<sea_orm::DatabaseConnection, String> {
    let db = connect(config).await?;
    db::migrate(&db)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    Ok(db)
}

async fn serve(mut config: Config, demo: bool) -> Result<(), String> {
    if demo && config.jwt_secret.is_none() {
        let random: [u8; 32] = rand::random();
        config.jwt_secret = Some(Secret(hex::encode(random)));
    }
    let secret = config
        .jwt_secret
        .clone()
        .ok_or("JWT_SECRET is required (or use --demo for a random one)")?;
    let application = Application::build(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let addr = application.local_addr().map_err(|e| e.to_string())?;
    let state = application.state().clone();
    if demo {
        let seeded = demo::seed_if_empty(&state.db)
            .await
            .map_err(|e| format!("seeding the demo bank failed: {}", e.operator_message()))?;
        if seeded {
            tracing::info!("seeded the demo question bank and packages");
        }
        demo::ensure_demo_grants(&state.db)
            .await
            .map_err(|e| format!("granting the demo student failed: {}", e.operator_message()))?;
        let base = format!("http://{addr}");
        let banner = demo::banner(&secret.0, &base).map_err(|e| e.to_string())?;
        let access = demo::access_summary(&state)
            .await
            .map_err(|e| e.operator_message())?;
        println!("{banner}\n{access}");
    }
    tracing::info!(
        listen = %addr,
        database = %config.database_url_redacted(),
        database_backend = db::backend_name(&state.db),
        cache = %config.redis_url_redacted().unwrap_or_else(|| "in-process".into()),
        metrics = %application
            .metrics_addr()
            .map_or_else(|| "on the API port".to_owned(), |a| a.to_string()),
        "examsync listening"
    );
    application
        .run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

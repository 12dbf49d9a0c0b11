//! Application wiring: `App` holds what every request needs; `Application::build`
//! connects, migrates and binds, apart from `run_until_stopped`, so tests start the real
//! server on port 0.
use std::{
    net::SocketAddr,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::{
    access::AccessCache,
    auth::{TokenVerifier, UserRegistry},
    cache::Cache,
    config::Config,
    db, graphql,
    graphql::trusted_documents::TrustedDocuments,
    http,
    packages::PackageStore,
    rate_limit::{LocalLimiter, RateLimiter},
};

/// Everything a request handler may need. Shared as `AppState(Arc<App>)`.
pub struct App {
    pub config: Config,
    pub db: DatabaseConnection,
    pub cache: Cache,
    pub tokens: TokenVerifier,
    pub users: UserRegistry,
    pub packages: PackageStore,
    /// Access decisions and what they rest on (docs/api.md section 3.1).
    pub access: AccessCache,
    pub rate_limiter: RateLimiter,
    /// Package and media requests per user (per instance).
    pub package_limiter: LocalLimiter<entity::UserId>,
    /// Requests without a valid token per client address (per instance).
    pub anonymous_limiter: LocalLimiter<std::net::IpAddr>,
    /// One permit per request in flight (`EXAMSYNC_MAX_IN_FLIGHT`); none left: `503`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The operations allowed to run, when `EXAMSYNC_GRAPHQL_TRUSTED_DOCUMENTS` is set.
    pub trusted_documents: Option<Arc<TrustedDocuments>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// SQL statements this instance has run (also in `/metrics`); tests use it to show
    /// that listing N items costs a bounded number of queries.
    pub db_statements: Arc<AtomicU64>,
    /// Sync bookkeeping: counters added up off the write path, commits made.
    pub sync: Arc<crate::sync::SyncState>,
    /// The sync statements of the database's backend, chosen once here.
    pub sync_store: crate::sync::store::Store,
    /// The role and timeline of the database server (`primary`), probed in the background.
    pub primary: Arc<crate::primary::PrimaryWatch>,
    /// The database's cache epoch as read at start (instances restart after `examsync
    /// cache reset`): pull cursors carry it, so one minted before a restore is refused.
    pub cache_epoch: String,
    /// What the media object route keeps in memory.
    pub media: crate::media::cache::MediaCache,
    /// Pull heads read together for concurrent pulls.
    pub heads: crate::sync::heads::HeadReader,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("redis: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("{0}")]
    TrustedDocuments(#[from] crate::graphql::trusted_documents::ManifestError),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

impl App {
    /// Connects to the database (running migrations) and the cache.
    pub async fn connect(config: Config) -> Result<AppState, StartupError> {
        let secret = config.jwt_secret.as_ref().ok_or_else(|| {
            StartupError::Config("JWT_SECRET is required (at least 32 bytes)".into())
        })?;
        let tokens = TokenVerifier::new(
            &secret.0,
            config.jwt_secret_previous.as_ref().map(|s| s.0.as_str()),
        )
        .with_issuer_audience(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
        // Read the manifests first: a bad one stops the start before anything connects.
        let trusted_documents = if config.graphql_trusted_documents.is_empty() {
            None
        } else {
            let documents = TrustedDocuments::load(&config.graphql_trusted_documents)?;
            tracing::info!(
                operations = documents.len(),
                manifests = documents.files().len(),
                "GraphQL trusted documents: only listed operations run"
            );
            Some(Arc::new(documents))
        };
        if config.db_statement_timeout() >= config.request_timeout() {
            tracing::warn!(
                statement_timeout_ms = config.db_statement_timeout_ms,
                request_timeout_secs = config.request_timeout_secs,
                "EXAMSYNC_DB_STATEMENT_TIMEOUT_MS is not below EXAMSYNC_REQUEST_TIMEOUT_SECS: \
                 a hung statement will use up the whole request budget"
            );
        }
        let mut db = db::connect_with(
            &config.database_url,
            config.db_pool_size,
            config.db_statement_timeout(),
        )
        .await?;
        db::migrate(&db).await?;
        crate::access::index::backfill(&db).await?;
        let db_statements = Arc::new(AtomicU64::new(0));
        let counter = db_statements.clone();
        db.set_metric_callback(move |info| {
            counter.fetch_add(1, Ordering::Relaxed);
            crate::metrics::db_statement(info.elapsed.as_secs_f64(), info.failed);
        });
        let epoch = crate::cache::database_epoch(&db).await?;
        let namespace = crate::cache::namespace(&config.redis_prefix, &epoch);
        tracing::info!(cache_namespace = %namespace, "cache namespace of this database");
        let cache = match &config.redis_url {
            Some(url) => Cache::redis(url, &namespace, config.redis_timeout())?,
            None => Cache::memory(&namespace),
        };
        let primary = Arc::new(crate::primary::PrimaryWatch::default());
        primary.refresh(&db).await;
        crate::primary::spawn_watch(db.clone(), &primary);
        if db.get_database_backend() == sea_orm::DbBackend::Postgres
            && !crate::replication::detector_installed()
        {
            tracing::warn!(
                "the subscriber lacks examsync::replication::notice_layer: a commit whose \
                 synchronous replication was cancelled would be answered ACKED"
            );
        }
        let rate_limiter = RateLimiter::new(
            config.rate_limit_per_minute,
            Duration::from_secs(config.rate_limit_window_secs),
        );
        let access = AccessCache::new(config.access);
        let window = Duration::from_secs(config.rate_limit_window_secs);
        let package_limiter =
            LocalLimiter::new(config.package_rate_limit_per_minute, window, "package");
        let anonymous_limiter =
            LocalLimiter::new(config.anonymous_rate_limit_per_minute, window, "anonymous");
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight));
        let sync_store = crate::sync::store::Store::for_backend(db.get_database_backend());
        Ok(AppState(Arc::new(App {
            heads: crate::sync::heads::HeadReader::default(),
            package_limiter,
            anonymous_limiter,
            in_flight,
            config,
            db,
            cache,
            tokens,
            users: UserRegistry::default(),
            packages: PackageStore::default(),
            access,
            rate_limiter,
            trusted_documents,
            metrics: crate::metrics::handle(),
            db_statements,
            sync: Arc::default(),
            sync_store,
            primary,
            cache_epoch: epoch,
            media: crate::media::cache::MediaCache::default(),
        })))
    }
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on its own address (`EXAMSYNC_METRICS_BIND`).
    metrics_listener: Option<TcpListener>,
    state: AppState,
    extra_routes: axum::Router<AppState>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let bind = config.bind;
        let state = App::connect(config).await?;
        let listener = TcpListener::bind(bind).await?;
        let metrics_listener = match state.config.metrics_bind {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        Ok(Application {
            listener,
            metrics_listener,
            state,
            extra_routes: axum::Router::new(),
        })
    }

    /// Adds routes inside every layer of the stack (budget, catch-panic, request id), for
    /// tests that need a handler production never has, e.g. one that panics. The binary
    /// never calls it, so such routes cannot exist in production.
    pub fn with_routes(mut self, routes: axum::Router<AppState>) -> Self {
        self.extra_routes = self.extra_routes.merge(routes);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address `/metrics` is served on when it has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; in-flight requests are allowed to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let schema = graphql::build_schema(self.state.clone());
        let router = http::router_with(self.state.clone(), schema, self.extra_routes);
        let metrics_server = self.metrics_listener.map(|listener| {
            let router = http::metrics_router(self.state.clone());
            tokio::spawn(async move { axum::serve(listener, router).await })
        });
        axum::serve(
            self.listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                SocketAddr,
            >(router),
        )
        .with_graceful_shutdown(shutdown)
        .await?;
        if let Some(server) = metrics_server {
            server.abort();
        }
        // Sync counters summed off the write path are written before the pool closes.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.state.sync.flush(&self.state.db),
        )
        .await;
        // Give pending cache writes no chance to outlive the pool: close the database last.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.db.clone().close()).await;
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

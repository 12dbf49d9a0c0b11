//! Logging: structured, to stderr (stdout carries command output such as the SDL).
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // sqlx would log every statement; never useful in production logs.
        .add_directive("sqlx=warn".parse().expect("static directive"))
        .add_directive("sea_orm=warn".parse().expect("static directive"));
    // The filter is the fmt layer's own, not global: the notice detector
    // (`replication::notice_layer`) must see sqlx's notices whatever `RUST_LOG` says.
    let registry = tracing_subscriber::registry().with(crate::replication::notice_layer());
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(false)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // Already installed (tests start many servers in one process): keep the first.
    let _ = result;
}

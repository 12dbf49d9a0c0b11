//! examsync: offline study server for a medical exam question bank.
//!
//! Layers (see `docs/architecture.md`):
//! - `http` (REST + transport of GraphQL) and `graphql` (schema, resolvers): thin, parse and render;
//! - `packages`, `sync`, `questions`, `sessions`: the rules, called by both surfaces;
//! - `entity` / `migration` crates and `db`: storage; `cache`: Redis or in-process cache.

pub mod access;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod graphql;
pub mod hashing;
pub mod http;
pub mod media;
pub mod metrics;
pub mod packages;
pub mod primary;
pub mod questions;
pub mod rate_limit;
pub mod replication;
pub mod sessions;
pub mod sync;
pub mod telemetry;

pub use app::{App, AppState, Application};
pub use config::Config;
pub use error::AppError;

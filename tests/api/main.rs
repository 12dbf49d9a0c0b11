//! One integration-test binary: every test starts the real server on port 0 and talks
//! HTTP to it, on SQLite and (when `TEST_DATABASE_URL` is set) PostgreSQL + Redis.
#![allow(clippy::unwrap_used)]

mod helpers;

mod access;
mod access_cli;
mod api_fuzz;
mod attacker;
mod auth;
mod changes;
mod cli;
mod cluster;
mod edges;
mod from_memory;
mod graphql;
mod health;
mod limits;
mod media;
mod operations;
mod packages;
mod security;
mod sync;
mod sync_faults;
mod sync_store;
mod withdrawal;

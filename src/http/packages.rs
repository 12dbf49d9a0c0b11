//! REST routes of test packages (placeholder until packages land).
use axum::response::Response;

use crate::{auth::AuthUser, error::AppError};

pub async fn list_packages(_user: AuthUser) -> Result<Response, AppError> {
    Err(AppError::NotFound("not implemented yet".into()))
}

pub async fn get_package(_user: AuthUser) -> Result<Response, AppError> {
    Err(AppError::NotFound("not implemented yet".into()))
}

//! [`ErrorCode`]: every code this server puts on the wire, with its wire name derived from
//! the variant name.
/// Every error code this server puts on the wire: REST `error_code` and GraphQL
/// `extensions.code`. The variant names are the wire names (SCREAMING_SNAKE_CASE, derived
/// alike by serde and strum), so a code is written once and a typo cannot compile.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    // Shared by both surfaces.
    Unauthenticated,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
    InternalServerError,
    // REST.
    ValidationError,
    ValidationLimitExceeded,
    MalformedJson,
    BadRequest,
    EmptyScope,
    DeltaScopeMismatch,
    CursorExpired,
    RangeNotSatisfiable,
    PayloadTooLarge,
    MethodNotAllowed,
    RequestTimeout,
    UnsupportedMediaType,
    NotAcceptable,
    MediaTypeNotAllowed,
    MediaHashMismatch,
    AccessDenied,
    PackageWithdrawn,
    // GraphQL (Apollo's names plus ours).
    BadUserInput,
    GraphqlParseFailed,
    GraphqlValidationFailed,
    PersistedQueryNotFound,
    PersistedQueryNotInList,
    QueryNotInSafelist,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: &'static [ErrorCode] = <ErrorCode as strum::VariantArray>::VARIANTS;

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn wire_names_are_the_serde_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code} listed twice");
        }
    }

    /// The wire names clients know, pinned: renaming a variant must not change one.
    #[test]
    fn wire_names_are_pinned() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "UNAUTHENTICATED",
                "FORBIDDEN",
                "NOT_FOUND",
                "RATE_LIMITED",
                "UNAVAILABLE",
                "INTERNAL_SERVER_ERROR",
                "VALIDATION_ERROR",
                "VALIDATION_LIMIT_EXCEEDED",
                "MALFORMED_JSON",
                "BAD_REQUEST",
                "EMPTY_SCOPE",
                "DELTA_SCOPE_MISMATCH",
                "CURSOR_EXPIRED",
                "RANGE_NOT_SATISFIABLE",
                "PAYLOAD_TOO_LARGE",
                "METHOD_NOT_ALLOWED",
                "REQUEST_TIMEOUT",
                "UNSUPPORTED_MEDIA_TYPE",
                "NOT_ACCEPTABLE",
                "MEDIA_TYPE_NOT_ALLOWED",
                "MEDIA_HASH_MISMATCH",
                "ACCESS_DENIED",
                "PACKAGE_WITHDRAWN",
                "BAD_USER_INPUT",
                "GRAPHQL_PARSE_FAILED",
                "GRAPHQL_VALIDATION_FAILED",
                "PERSISTED_QUERY_NOT_FOUND",
                "PERSISTED_QUERY_NOT_IN_LIST",
                "QUERY_NOT_IN_SAFELIST",
            ]
        );
    }
}

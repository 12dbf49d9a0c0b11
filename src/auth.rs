//! HS256 JWT verification (docs/api.md section 3) and the authenticated user.
//!
//! Tokens come from the existing auth service: `sub` (user UUID), `role`, `exp`
//! (required), optional `iat`, `jti`, `nbf` (refused before it, with [`NBF_LEEWAY_SECS`])
//! and `type` (must be `"access"` when present).
//! `JWT_SECRET_PREVIOUS` is also accepted so keys can be rotated without logging anyone out.
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use entity::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    access::GrantTarget,
    error::{AppError, AppResult},
};

/// The role a token names; `users.role` stores it by the same name.
pub use entity::Role;

/// The caller of a request, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Role,
    /// The grants of the token's `access` claim (docs/api.md section 3.1), when it has one.
    pub access: Option<Arc<[GrantTarget]>>,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Fails with `FORBIDDEN` unless the caller is an admin.
    pub fn require_admin(&self) -> AppResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "this operation needs the ADMIN role".into(),
            ))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Not before (RFC 7519 4.1.5): the token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings; checked by the library against the configured
    /// audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Grants carried by the token: `PROGRAM`, `YEAR:<id>`, `BLOCK:<id>`, `THEME:<id>`.
    /// Read as any JSON so that a bad value is named, not just "malformed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<serde_json::Value>,
}

/// Verifies tokens with the current key, then the previous one. Verified tokens are
/// remembered until they expire (a phone sends the same token with every request), so
/// the HMAC and JSON work is done once per token, not once per request.
pub struct TokenVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
    /// Token (its bytes) → (user, `exp`). An entry is used only before its `exp` (checked on
    /// every read); expired ones are the first to go when the cache is full, as they are never
    /// read again.
    verified: quick_cache::sync::Cache<Box<[u8]>, (AuthUser, i64)>,
}

/// How far ahead of our clock a token's `nbf` may lie (docs/api.md §3: at most 60 s): the auth
/// service's clock may run a little ahead of ours, and a token it issues "now" must work.
pub const NBF_LEEWAY_SECS: i64 = 60;

/// Tokens remembered at once; past it the least used are verified again when they return.
const VERIFIED_TOKENS_CAP: usize = 100_000;

impl TokenVerifier {
    /// Binds tokens to an issuer and an audience (docs/api.md section 3): with one set, a
    /// token must carry the claim and match it; with no audience set, a token that
    /// carries `aud` is refused (RFC 7519 §4.1.3).
    pub fn with_issuer_audience(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    pub fn new(secret: &str, previous: Option<&str>) -> Self {
        let mut keys = vec![DecodingKey::from_secret(secret.as_bytes())];
        if let Some(previous) = previous {
            keys.push(DecodingKey::from_secret(previous.as_bytes()));
        }
        // Only HS256: `alg: none` and every other algorithm are refused by the library.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        validation.validate_exp = true;
        TokenVerifier {
            keys,
            validation,
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS_CAP),
        }
    }

    /// Verifies a bearer token and returns its user, or why it is refused.
    pub fn verify(&self, token: &str) -> AppResult<AuthUser> {
        if let Some(user) = self.remembered(token.as_bytes()) {
            return Ok(user);
        }
        let (user, exp) = self.verify_signature(token)?;
        self.verified
            .insert(token.as_bytes().into(), (user.clone(), exp));
        Ok(user)
    }

    /// The user of an `Authorization` value that is exactly `Bearer <token>` with a token
    /// verified before and not expired (what a phone sends with every request); `None`:
    /// anything else, to be read by [`bearer_token`] and [`TokenVerifier::verify`]. A
    /// remembered token was checked as text and trimmed when it was verified, so such a
    /// value reads as that same token: the value's text need not be checked again.
    pub fn remembered_authorization(&self, authorization: &[u8]) -> Option<AuthUser> {
        self.remembered(authorization.strip_prefix(b"Bearer ")?)
    }

    fn remembered(&self, token: &[u8]) -> Option<AuthUser> {
        let (user, exp) = self.verified.get(token)?;
        (exp > unix_now()).then_some(user)
    }

    fn verify_signature(&self, token: &str) -> AppResult<(AuthUser, i64)> {
        let mut last_error = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    return claims_to_user(&data.claims, unix_now()).map(|u| (u, data.claims.exp));
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last_error = Some(e),
                Err(e) => return Err(token_error(&e)),
            }
        }
        Err(last_error
            .map(|e| token_error(&e))
            .unwrap_or_else(|| AppError::Unauthenticated("invalid token".into())))
    }
}

fn token_error(e: &jsonwebtoken::errors::Error) -> AppError {
    let reason = match e.kind() {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::InvalidSignature => "token signature is invalid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "token algorithm must be HS256"
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            return AppError::Unauthenticated(format!("token lacks the required claim `{claim}`"));
        }
        ErrorKind::InvalidAudience => "token audience (`aud` claim) is refused",
        ErrorKind::InvalidIssuer => "token issuer (`iss` claim) is refused",
        _ => "token is malformed",
    };
    AppError::Unauthenticated(reason.into())
}

/// The claim rules past the signature and `exp`. `nbf` is checked here rather than by the
/// library because its leeway would also loosen `exp`, which has none.
fn claims_to_user(claims: &Claims, now: i64) -> AppResult<AuthUser> {
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(NBF_LEEWAY_SECS)
    {
        return Err(AppError::Unauthenticated("token is not valid yet".into()));
    }
    if let Some(token_type) = &claims.token_type
        && token_type != "access"
    {
        return Err(AppError::Unauthenticated(
            "token type must be \"access\"".into(),
        ));
    }
    let id: UserId = claims
        .sub
        .parse()
        .map_err(|_| AppError::Unauthenticated("token subject is not a UUID".into()))?;
    let role = Role::parse(&claims.role)
        .ok_or_else(|| AppError::Unauthenticated("token role is not recognised".into()))?;
    let access = claims.access.as_ref().map(parse_access_claim).transpose()?;
    Ok(AuthUser { id, role, access })
}

/// The `access` claim: an array of grant strings; anything else invalidates the token.
fn parse_access_claim(value: &serde_json::Value) -> AppResult<Arc<[GrantTarget]>> {
    let invalid = || {
        AppError::Unauthenticated(
            "token `access` claim is invalid: an array of \"PROGRAM\", \"YEAR:<id>\", \
             \"BLOCK:<id>\" or \"THEME:<id>\""
                .into(),
        )
    };
    let items = value.as_array().ok_or_else(invalid)?;
    let mut targets = items
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(GrantTarget::parse_claim)
                .ok_or_else(invalid)
        })
        .collect::<AppResult<Vec<_>>>()?;
    targets.sort_unstable();
    targets.dedup();
    Ok(Arc::from(targets))
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer_token(header: Option<&str>) -> AppResult<&str> {
    let header = header.ok_or_else(|| AppError::Unauthenticated("missing bearer token".into()))?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| AppError::Unauthenticated("malformed Authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AppError::Unauthenticated(
            "Authorization must be `Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

/// Signs an access token (the `token` CLI command, the demo and tests).
pub fn sign_token(
    secret: &str,
    user: impl Into<UserId>,
    role: Role,
    ttl_secs: i64,
) -> Result<String, AppError> {
    sign_token_with_access(secret, user, role, ttl_secs, &[])
}

/// Signs an access token carrying grants in its `access` claim (none: no claim).
pub fn sign_token_with_access(
    secret: &str,
    user: impl Into<UserId>,
    role: Role,
    ttl_secs: i64,
    access: &[GrantTarget],
) -> Result<String, AppError> {
    let access = (!access.is_empty()).then(|| {
        serde_json::Value::Array(
            access
                .iter()
                .map(|t| serde_json::Value::String(t.claim()))
                .collect(),
        )
    });
    let now = unix_now();
    let claims = Claims {
        sub: user.into().to_string(),
        role: role.as_str().to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        jti: Some(Uuid::new_v4().to_string()),
        nbf: None,
        token_type: Some("access".into()),
        iss: None,
        aud: None,
        access,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AppError::internal(format!("signing token: {e}")))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Creates the user row on first sight of a valid token. Remembers which users it has
/// already seen so that a busy user costs no extra statement per request. What it
/// remembers holds for one server timeline (`primary`): a failover to a standby that
/// missed the last commits may have lost a user row, so a new timeline starts afresh.
pub struct UserRegistry {
    known: quick_cache::sync::Cache<(u32, UserId), ()>,
}

/// Users remembered at once; one forgotten costs one `INSERT … DO NOTHING` when it returns.
const KNOWN_USERS_CAP: usize = 200_000;

impl Default for UserRegistry {
    fn default() -> Self {
        UserRegistry {
            known: quick_cache::sync::Cache::new(KNOWN_USERS_CAP),
        }
    }
}

impl UserRegistry {
    /// Whether `user`'s row is known to exist on `timeline` (the server's, as
    /// `PrimaryWatch::timeline` knows it; `None`: unknown, nothing remembered is trusted).
    pub fn is_known(&self, user: &AuthUser, timeline: Option<u32>) -> bool {
        timeline.is_some_and(|t| self.known.contains_key(&(t, user.id)))
    }

    /// Makes sure `user`'s row exists (see [`Self::is_known`] for `timeline`).
    pub async fn ensure(
        &self,
        db: &DatabaseConnection,
        user: &AuthUser,
        timeline: Option<u32>,
    ) -> AppResult<()> {
        if self.is_known(user, timeline) {
            return Ok(());
        }
        let row = entity::user::ActiveModel {
            id: sea_orm::Set(user.id),
            role: sea_orm::Set(user.role),
            created_at: sea_orm::Set(chrono::Utc::now()),
            last_sync_at: sea_orm::Set(None),
            acked_count: sea_orm::Set(0),
            duplicate_count: sea_orm::Set(0),
            rejected_count: sea_orm::Set(0),
            change_seq: sea_orm::Set(0),
        };
        entity::user::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec_without_returning(db)
            .await?;
        if let Some(timeline) = timeline {
            self.known.insert((timeline, user.id), ());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789abcdef-32";

    #[test]
    fn signed_token_verifies() {
        let user = Uuid::new_v4();
        let token = sign_token(SECRET, user, Role::Admin, 60).unwrap();
        let verifier = TokenVerifier::new(SECRET, None);
        assert_eq!(
            verifier.verify(&token).unwrap(),
            AuthUser {
                id: user.into(),
                role: Role::Admin,
                access: None,
            }
        );
    }

    #[test]
    fn a_remembered_token_is_found_by_its_authorization_value() {
        let user = Uuid::new_v4();
        let token = sign_token(SECRET, user, Role::Student, 60).unwrap();
        let verifier = TokenVerifier::new(SECRET, None);
        let value = format!("Bearer {token}");
        // Not verified yet: nothing remembered.
        assert!(
            verifier
                .remembered_authorization(value.as_bytes())
                .is_none()
        );
        verifier.verify(&token).unwrap();
        let found = verifier.remembered_authorization(value.as_bytes()).unwrap();
        assert_eq!(found.id, user.into());
        // Any other spelling takes the full path (which reads it as the same token).
        for other in [
            format!("bearer {token}"),
            format!("Bearer  {token}"),
            format!("Bearer {token} "),
        ] {
            assert!(
                verifier
                    .remembered_authorization(other.as_bytes())
                    .is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn previous_key_is_accepted_other_keys_are_not() {
        let token = sign_token(
            "old-secret-0123456789abcdef-0123456",
            Uuid::new_v4(),
            Role::Student,
            60,
        )
        .unwrap();
        assert!(
            TokenVerifier::new(SECRET, Some("old-secret-0123456789abcdef-0123456"))
                .verify(&token)
                .is_ok()
        );
        assert!(TokenVerifier::new(SECRET, None).verify(&token).is_err());
    }

    #[test]
    fn nbf_is_refused_past_the_leeway_only() {
        let claims = |nbf| Claims {
            sub: Uuid::new_v4().to_string(),
            role: "STUDENT".into(),
            exp: 2_000_000_000,
            iat: None,
            jti: None,
            nbf,
            token_type: None,
            iss: None,
            aud: None,
            access: None,
        };
        let now = 1_800_000_000;
        assert!(claims_to_user(&claims(None), now).is_ok());
        assert!(claims_to_user(&claims(Some(now - 3600)), now).is_ok());
        assert!(claims_to_user(&claims(Some(now + NBF_LEEWAY_SECS)), now).is_ok());
        assert!(matches!(
            claims_to_user(&claims(Some(now + NBF_LEEWAY_SECS + 1)), now),
            Err(AppError::Unauthenticated(_))
        ));
        assert!(claims_to_user(&claims(Some(i64::MAX)), now).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer abc")).unwrap(), "abc");
        assert!(bearer_token(Some("Basic abc")).is_err());
        assert!(bearer_token(Some("Bearer ")).is_err());
        assert!(bearer_token(None).is_err());
    }
}

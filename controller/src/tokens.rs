//! Join tokens. A token is 32 random bytes shown once to the admin who
//! made it; the controller keeps only its BLAKE3 hash, with the groups
//! and labels it grants, its expiry and the uses left.

use std::time::Duration;

use shoal_proto::identity::validate_label;

use crate::state::{State, StateError, TokenRecord};

/// Tokens start with this, so they are recognisable in logs and configs.
pub const TOKEN_PREFIX: &str = "shoal-join-";
/// Longest a token may live.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot draw random bytes: {0}")]
    Random(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The key a token is stored under.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

/// What a new token grants.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub groups: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub ttl: Duration,
    pub uses: u32,
}

/// Makes and stores a token; returns it and its expiry (ms since epoch).
pub async fn create(
    state: &State,
    spec: &TokenSpec,
    created_by: &str,
    now_ms: i64,
) -> Result<(String, i64), TokenError> {
    if spec.groups.is_empty() {
        return Err(TokenError::Invalid(
            "a token must grant at least one group (--group)".into(),
        ));
    }
    for g in &spec.groups {
        validate_label("group", g).map_err(|e| TokenError::Invalid(e.to_string()))?;
    }
    if spec.uses == 0 {
        return Err(TokenError::Invalid("uses must be at least 1".into()));
    }
    if spec.ttl.is_zero() || spec.ttl > MAX_TTL {
        return Err(TokenError::Invalid(format!(
            "ttl must be between 1s and {}d",
            MAX_TTL.as_secs() / 86_400
        )));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
    let expires_ms = now_ms + spec.ttl.as_millis() as i64;
    let rec = TokenRecord {
        groups: spec.groups.clone(),
        labels: spec.labels.clone(),
        expires_ms,
        uses_left: spec.uses,
        created_ms: now_ms,
        created_by: created_by.to_owned(),
    };
    state.put_token(&token_hash(&token), &rec).await?;
    Ok((token, expires_ms))
}

//! API-key authentication (C9, X6), shared by every protected route.
//!
//! Keys are configured only as SHA-256 digests (`API_KEYS=name:sha256hex,...`), so a
//! leaked configuration does not leak usable keys. A presented key is hashed and
//! compared against every digest in constant time.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured keys: names with the digests of their secrets.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Arc<Vec<(String, [u8; 32])>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: digests are not secrets, but there is no reason to print them.
        f.debug_list()
            .entries(self.entries.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The lower-case hex SHA-256 of a key, the form `API_KEYS` expects.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    /// Parses `name:sha256hex` entries separated by commas. Errors never echo a value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        let mut bad = Vec::new();
        for (index, item) in raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let position = index + 1;
            let Some((name, digest)) = item.split_once(':') else {
                bad.push(format!("entry {position} is not name:sha256hex"));
                continue;
            };
            let name = name.trim();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_name {
                bad.push(format!(
                    "entry {position} has an invalid name (1-64 of A-Z a-z 0-9 - _ .)"
                ));
                continue;
            }
            let digest = digest.trim();
            let mut bytes = [0u8; 32];
            if digest.len() != 64
                || digest.chars().any(|c| c.is_ascii_uppercase())
                || hex::decode_to_slice(digest, &mut bytes).is_err()
            {
                bad.push(format!(
                    "entry {position} ({name}) needs the key's SHA-256 as 64 lower-case hex characters"
                ));
                continue;
            }
            if entries.iter().any(|(existing, _)| existing == name) {
                bad.push(format!("entry {position} repeats the name {name}"));
                continue;
            }
            entries.push((name.to_string(), bytes));
        }
        if bad.is_empty() {
            Ok(Self {
                entries: Arc::new(entries),
            })
        } else {
            Err(bad.join(", "))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The name of the key, if the presented secret matches one. Every entry is
    /// compared, whatever matched, so timing does not tell which entry it was.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, expected) in self.entries.iter() {
            if bool::from(expected.ct_eq(&digest)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The authenticated caller's key name, for per-key limits and usage accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyName(pub Arc<str>);

impl<S: Send + Sync> FromRequestParts<S> for ApiKeyName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ApiKeyName>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("missing API key".into()))
    }
}

/// The secret from `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller's key name, or the 401 that says why there is none.
pub fn authenticate(keys: &ApiKeys, headers: &http::HeaderMap) -> Result<ApiKeyName, ApiError> {
    if keys.is_empty() {
        return Err(ApiError::Unauthorized(
            "no API keys are configured on this server (set API_KEYS)".into(),
        ));
    }
    let Some(presented) = presented_key(headers) else {
        return Err(ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`".into(),
        ));
    };
    let Some(name) = keys.verify(presented) else {
        return Err(ApiError::Unauthorized("invalid API key".into()));
    };
    Ok(ApiKeyName(Arc::from(name)))
}

/// Middleware: 401 unless the request carries a configured key; on success the
/// key's name is added to the request as [`ApiKeyName`]. (`http::protect` does this
/// and the limits in one step; this is the check alone.)
///
/// Use with `axum::middleware::from_fn_with_state(keys, require_api_key)`.
pub async fn require_api_key(
    State(keys): State<ApiKeys>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let name = authenticate(&keys, request.headers())?;
    request.extensions_mut().insert(name.clone());
    let mut response = next.run(request).await;
    // For the request log: which key (by name, never the key) made the request, so an
    // operator rotating a key sees who still uses the old one.
    response.extensions_mut().insert(name);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies_hashed_keys() {
        let raw = format!(
            "alice:{}, bob:{}",
            hash_key("alice-secret"),
            hash_key("bob-secret")
        );
        let keys = ApiKeys::parse(&raw).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.verify("alice-secret"), Some("alice"));
        assert_eq!(keys.verify("bob-secret"), Some("bob"));
        assert_eq!(keys.verify("carol-secret"), None);
        assert_eq!(keys.verify(""), None);
        assert!(!format!("{keys:?}").contains(&hash_key("alice-secret")));
    }

    #[test]
    fn rejects_malformed_entries_without_echoing_them() {
        let upper = hash_key("x").to_uppercase();
        let err = ApiKeys::parse(&format!(
            "plainsecret,a:{upper},:abc,b:1234,c:{}",
            hash_key("y")
        ))
        .unwrap_err();
        assert!(err.contains("entry 1 is not name:sha256hex"), "{err}");
        assert!(err.contains("entry 2 (a)"), "{err}");
        assert!(err.contains("entry 3 has an invalid name"), "{err}");
        assert!(err.contains("entry 4 (b)"), "{err}");
        assert!(!err.contains("plainsecret"), "{err}");
        let dup = ApiKeys::parse(&format!("a:{},a:{}", hash_key("1"), hash_key("2"))).unwrap_err();
        assert!(dup.contains("repeats the name a"));
    }

    #[test]
    fn reads_bearer_or_x_api_key() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k1"));
        headers.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k2"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
    }
}

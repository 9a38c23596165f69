//! One TLS crypto library for the whole process: ring, through rustls. sqlx, the OpenAI
//! client (reqwest) and the AWS SDK's client all use rustls; choosing ring once here keeps
//! a second library (aws-lc, a long C build) out of every binary.

/// Installs ring as the process's default rustls provider. Idempotent; called before any
/// HTTPS client is built (reqwest refuses to build a TLS client without a provider).
pub fn install_crypto_provider() {
    // `Err` only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

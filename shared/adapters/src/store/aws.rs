//! The AWS SDK's configuration, loaded once per client: credentials and region from the
//! environment, a profile or the Lambda role; `AWS_ENDPOINT_URL` selects a local emulator
//! such as moto's server.

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::Builder;

/// What every AWS client of a function is built from. Its HTTPS client is hyper 1 and
/// rustls on ring, the TLS stack of the rest of the process (see `store::tls`), trusting
/// the system's certificates.
pub async fn load_config() -> aws_config::SdkConfig {
    super::tls::install_crypto_provider();
    let https = Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await
}

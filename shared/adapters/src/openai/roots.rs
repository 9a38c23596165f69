//! The platform's TLS roots, read when an https endpoint first needs them.
//!
//! rustls-platform-verifier reads them when its verifier is built: 145 files on a Debian
//! image, 4.5 ms of a 45 ms cold start (docs/benchmarks.md, "Cold start"). An http://
//! endpoint (a model server on the same host, the project's fake upstream) never needs
//! them; for an https:// one they are read on a thread of their own while the function
//! starts, so its first call rarely waits for them.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::Verifier;

/// The platform verifier, built once on first use (or by `read_in_background`).
#[derive(Debug)]
pub(crate) struct PlatformRoots {
    provider: Arc<CryptoProvider>,
    /// Trusted besides the platform's (tests).
    extra_roots: Vec<CertificateDer<'static>>,
    verifier: OnceLock<Result<Verifier, String>>,
}

impl PlatformRoots {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            provider,
            extra_roots,
            verifier: OnceLock::new(),
        })
    }

    /// The roots of a client of `endpoint`: for an https:// one, already being read.
    pub(crate) fn for_endpoint(
        endpoint: &http::Uri,
        provider: Arc<CryptoProvider>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Arc<Self> {
        let roots = Self::new(provider, extra_roots);
        if endpoint.scheme() == Some(&http::uri::Scheme::HTTPS) {
            roots.read_in_background();
        }
        roots
    }

    /// Starts reading the roots now, off the caller's thread. A handshake that comes
    /// first waits for this read rather than starting another.
    pub(crate) fn read_in_background(self: &Arc<Self>) {
        let roots = self.clone();
        let started = std::thread::Builder::new()
            .name("tls-roots".into())
            .spawn(move || {
                roots.verifier().ok();
            });
        if let Err(err) = started {
            tracing::debug!(error = %err, "TLS roots will be read on first use");
        }
    }

    /// The verifier, or why the platform's roots cannot be used (every https call then
    /// fails with that reason; an http:// endpoint is unaffected). Blocking: a handshake
    /// that comes while the roots are read waits on its runtime's thread, and one that
    /// comes first (no thread could be started) reads them there.
    fn verifier(&self) -> Result<&Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| {
                let provider = self.provider.clone();
                let built = if self.extra_roots.is_empty() {
                    Verifier::new(provider)
                } else {
                    Verifier::new_with_extra_roots(self.extra_roots.clone(), provider)
                };
                built.map_err(|e| {
                    let reason = format!("the platform's TLS roots cannot be used: {e}");
                    tracing::error!("{reason}");
                    reason
                })
            })
            .as_ref()
            .map_err(|reason| rustls::Error::General(reason.clone()))
    }
}

impl ServerCertVerifier for PlatformRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    /// What the platform verifier offers (its WebPKI verifier's: the provider's
    /// algorithms), without reading the roots: every ClientHello asks for it.
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn the_roots_are_read_only_when_asked_for() {
        let roots = PlatformRoots::new(provider(), Vec::new());
        let schemes = roots.supported_verify_schemes();
        assert!(roots.verifier.get().is_none(), "schemes read the roots");
        let platform = Verifier::new(provider()).expect("this machine has CA roots");
        assert_eq!(schemes, platform.supported_verify_schemes());
        assert!(roots.verifier().is_ok());
        assert!(roots.verifier.get().is_some());
    }

    fn wait_for_read(roots: &PlatformRoots) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while roots.verifier.get().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the roots were never read"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn only_an_https_endpoint_has_its_roots_read_before_a_handshake() {
        let https = PlatformRoots::for_endpoint(
            &"https://api.example.com/v1".parse().unwrap(),
            provider(),
            Vec::new(),
        );
        let plain = PlatformRoots::for_endpoint(
            &"http://127.0.0.1:8080/v1".parse().unwrap(),
            provider(),
            Vec::new(),
        );
        wait_for_read(&https);
        assert!(https.verifier.get().unwrap().is_ok());
        // By the time the https roots are read, a read started for http would be too.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            plain.verifier.get().is_none(),
            "an http endpoint read the roots"
        );
    }

    #[test]
    fn roots_are_read_in_the_background_without_a_handshake_asking() {
        let roots = PlatformRoots::new(provider(), Vec::new());
        roots.read_in_background();
        wait_for_read(&roots);
        assert!(roots.verifier.get().unwrap().is_ok());
    }
}

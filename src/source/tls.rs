//! TLS for the LDAP connection: rustls' webpki verifier, with a clear error for a certificate
//! that has no subjectAltName and the opt-in `[ldap] tls_cn_fallback`.
//!
//! Samba's auto-generated certificate names the host only in its subject CN. rustls (rightly)
//! matches names against subjectAltName alone, and says "not valid for any names", which reads
//! like a wrong URL. This verifier keeps every check of the webpki one; only when that fails on
//! the name and the certificate has no subjectAltName at all does it step in: it reports that
//! plainly, or, with the fallback on, verifies the chain again itself and compares the subject
//! CN with the host name (case-insensitive).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore};

/// Why a certificate whose chain is valid does not name the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateName {
    /// No subjectAltName, and the CN fallback is off.
    #[error("without a subjectAltName (its subject CN is {cn:?})")]
    NoSubjectAltName { cn: Option<String> },
    /// No subjectAltName, and its subject CN is another name.
    #[error("without a subjectAltName, whose subject CN {cn:?} is not the host either")]
    CnMismatch { cn: Option<String> },
}

impl CertificateName {
    /// What is wrong and what to do, for a connection to `host`.
    pub fn explain(&self, host: &str) -> String {
        match self {
            CertificateName::NoSubjectAltName { .. } => format!(
                "{self}, so it names no host (TLS clients match {host:?} against subjectAltName only). Regenerate the server certificate with a subjectAltName naming {host} (docs/directories.md shows how, for Samba too), or set [ldap] tls_cn_fallback = true to accept its subject CN when it has no subjectAltName at all (the chain is still verified)"
            ),
            CertificateName::CnMismatch { .. } => format!(
                "{self} ({host:?}; tls_cn_fallback compared them). Put the name the certificate holds in [ldap] url, or regenerate the certificate with a subjectAltName naming {host} (docs/directories.md)"
            ),
        }
    }
}

/// A rustls client configuration trusting `roots`, with [`Verifier`].
pub(super) fn client_config(
    roots: RootCertStore,
    cn_fallback: bool,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = Arc::new(roots);
    let inner = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let verifier = Verifier {
        inner,
        roots,
        provider: provider.clone(),
        cn_fallback,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The system's trusted roots, as ldap3 loads them when no `ca_file` is given.
pub(super) fn native_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let (added, ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    tracing::debug!(added, ignored, "system trust roots loaded");
    roots
}

/// The [`CertificateName`] inside a failed connection's error chain, if that is why it failed.
pub(super) fn certificate_name_error(
    error: &(dyn std::error::Error + 'static),
) -> Option<CertificateName> {
    let mut current = Some(error);
    while let Some(e) = current {
        let tls = e.downcast_ref::<Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Error>())
        });
        if let Some(Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) = tls
            && let Some(found) = other.downcast_ref::<CertificateName>()
        {
            return Some(found.clone());
        }
        current = e.source();
    }
    None
}

#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    cn_fallback: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let error = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(error) => error,
        };
        let wrong_name = matches!(
            error,
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        );
        let Some(Names { has_san: false, cn }) = wrong_name.then(|| names(end_entity)).flatten()
        else {
            return Err(error);
        };
        let refuse = |problem: CertificateName| {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(problem)),
            )))
        };
        if !self.cn_fallback {
            return refuse(CertificateName::NoSubjectAltName { cn });
        }
        // The chain again, explicitly: the fallback must never accept an untrusted certificate,
        // whatever order the webpki verifier checks things in.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if cn.as_deref().is_some_and(|cn| cn_matches(cn, server_name)) {
            tracing::debug!(
                ?cn,
                "certificate without subjectAltName accepted by its CN (tls_cn_fallback)"
            );
            Ok(ServerCertVerified::assertion())
        } else {
            refuse(CertificateName::CnMismatch { cn })
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

struct Names {
    has_san: bool,
    cn: Option<String>,
}

/// Whether the certificate has a subjectAltName extension, and its (first) subject CN.
fn names(der: &CertificateDer<'_>) -> Option<Names> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let has_san = cert.subject_alternative_name().ok()?.is_some();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Some(Names { has_san, cn })
}

fn cn_matches(cn: &str, server_name: &ServerName<'_>) -> bool {
    let cn = cn.trim_end_matches('.');
    match server_name {
        ServerName::DnsName(name) => name.as_ref().trim_end_matches('.').eq_ignore_ascii_case(cn),
        ServerName::IpAddress(ip) => {
            cn.parse::<std::net::IpAddr>().ok() == Some(std::net::IpAddr::from(*ip))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cn_is_compared_case_insensitively_with_the_host() {
        let host = ServerName::try_from("DC1.ad.example.test").unwrap();
        assert!(cn_matches("dc1.AD.example.test", &host));
        assert!(cn_matches("dc1.ad.example.test.", &host));
        assert!(!cn_matches("dc2.ad.example.test", &host));
        assert!(!cn_matches("*.ad.example.test", &host));
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        assert!(cn_matches("127.0.0.1", &ip));
        assert!(!cn_matches("localhost", &ip));
    }
}

//! TLS to PostgreSQL, as libpq's `sslmode` means it (rustls, no OpenSSL).
//!
//! A database URL's `sslmode` and `sslrootcert` are Kiln's to read; the rest of the URL goes to
//! tokio-postgres:
//!
//! | `sslmode` | encrypted | server checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `allow`, `prefer` (the default) | when the server offers TLS | no |
//! | `require` | yes | no (as `verify-ca` when `sslrootcert` is given, like libpq) |
//! | `verify-ca` | yes | its certificate chains to `sslrootcert` |
//! | `verify-full` | yes | and names the host connected to |
//!
//! `sslrootcert` is a PEM file of trusted certificates (default `~/.postgresql/root.crt`, as
//! libpq; `require` then verifies the chain when that file exists), or `system` for the
//! operating system's store, which, as in libpq 16, implies `verify-full` and refuses weaker
//! modes (a public CA vouches for a name, not for your database). Client certificates
//! (`sslcert`, `sslkey`) are not supported: the URL is refused rather than silently connecting
//! without one. `verify-ca` and `verify-full` need the URL form (a key=value string keeps
//! tokio-postgres's own `disable`, `prefer` and `require`). A server certificate must be
//! issued by a trusted CA: webpki refuses a self-signed certificate marked `CA:TRUE` as the
//! server's own (`CaUsedAsEndEntity`), even when it is the root given. Unix-socket connections
//! never use TLS, whatever the `sslmode` (libpq ignores it there). With `hostaddr` alone, the
//! address is the name TLS sees, and `verify-full` is refused at start.

use crate::store::OpenError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server a connection checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    /// None: encrypted (when TLS is used) but not authenticated.
    None,
    /// The certificate chains to a trusted root; any name.
    Chain,
    /// The certificate chains to a trusted root and names the host.
    Full,
}

/// A database URL read for connecting: tokio-postgres's configuration and the TLS connector
/// its `sslmode` asks for.
pub(crate) fn connect_config(url: &str) -> Result<(tokio_postgres::Config, KilnTls), OpenError> {
    let (url, sslmode, rootcert) = take_tls_parameters(url)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        let cause = std::error::Error::source(&e).map(|cause| format!(": {cause}")).unwrap_or_default();
        OpenError::Config(format!("{e}{cause}"))
    })?;
    let sslmode = match (sslmode.as_deref(), rootcert.as_deref()) {
        (None, Some("system")) => Some("verify-full"),
        (Some(weaker), Some("system")) if weaker != "verify-full" => {
            return Err(OpenError::Config(format!(
                "sslrootcert=system needs sslmode=verify-full (not {weaker}): public CAs vouch for names"
            )));
        }
        (mode, _) => mode,
    };
    let default_roots_exist = || default_rootcert().is_some_and(|path| path.exists());
    let hosts = config.get_hosts().to_vec();
    if !hosts.is_empty() && hosts.iter().all(|host| matches!(host, Host::Unix(_))) && config.get_hostaddrs().is_empty()
    {
        // libpq never asks for TLS on a Unix socket (the server would decline it).
        config.ssl_mode(SslMode::Disable);
        return Ok((config, KilnTls { connector: connector(Verification::None, None)?, names_checked: false }));
    }
    let verification = match sslmode {
        // No `sslmode` in a URL: `prefer`. A key=value string keeps tokio-postgres's own reading
        // of it (disable, prefer or require), unverified.
        None => Verification::None,
        Some("disable") => {
            config.ssl_mode(SslMode::Disable);
            Verification::None
        }
        Some("allow" | "prefer") => {
            config.ssl_mode(SslMode::Prefer);
            Verification::None
        }
        Some("require") => {
            config.ssl_mode(SslMode::Require);
            if rootcert.is_some() || default_roots_exist() { Verification::Chain } else { Verification::None }
        }
        Some("verify-ca") => {
            config.ssl_mode(SslMode::Require);
            Verification::Chain
        }
        Some("verify-full") => {
            config.ssl_mode(SslMode::Require);
            Verification::Full
        }
        Some(other) => {
            return Err(OpenError::Config(format!(
                "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    if hosts.is_empty() && !config.get_hostaddrs().is_empty() {
        // hostaddr alone: the address is the name TLS sees (tokio-postgres wants one), and
        // verify-full cannot check a name nobody gave.
        if verification == Verification::Full {
            return Err(OpenError::Config(
                "sslmode=verify-full needs host (the name to check), not only hostaddr".into(),
            ));
        }
        for address in config.get_hostaddrs().to_vec() {
            config.host(address.to_string());
        }
    }
    let names_checked = verification == Verification::Full;
    Ok((config, KilnTls { connector: connector(verification, rootcert.as_deref())?, names_checked }))
}

/// libpq's default `sslrootcert`, `~/.postgresql/root.crt` (none without a home directory).
fn default_rootcert() -> Option<PathBuf> {
    std::env::home_dir().filter(|home| home.is_absolute()).map(|home| home.join(".postgresql/root.crt"))
}

/// The TLS connector: rustls, which refuses an empty server name (tokio-postgres asks with one
/// for a Unix socket, or `host=` left empty), failing the connection before the server is even
/// asked. Where names are not checked, an unnamed server is named `0.0.0.0` (never looked at);
/// under `verify-full` the empty name is passed on, and refused: it fails closed.
#[derive(Clone)]
pub(crate) struct KilnTls {
    connector: MakeRustlsConnect,
    names_checked: bool,
}

impl<S> MakeTlsConnect<S> for KilnTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        let hostname = if hostname.is_empty() && !self.names_checked { "0.0.0.0" } else { hostname };
        self.connector.make_tls_connect(hostname)
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query (decoded); refuses client
/// certificates.
fn take_tls_parameters(url: &str) -> Result<(String, Option<String>, Option<String>), OpenError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut sslmode, mut rootcert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key)?.as_str() {
            "sslmode" => sslmode = Some(percent_decode(value)?),
            "sslrootcert" => rootcert = Some(percent_decode(value)?),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(OpenError::Config(format!(
                    "{key}: client certificates are not supported; authenticate with a password instead"
                )));
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, sslmode, rootcert))
}

fn percent_decode(value: &str) -> Result<String, OpenError> {
    let invalid = || OpenError::Config(format!("invalid percent-encoding in the database URL: '{value}'"));
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or_else(invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| invalid())
}

fn connector(verification: Verification, rootcert: Option<&str>) -> Result<MakeRustlsConnect, OpenError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| OpenError::Config(format!("TLS setup: {e}")))?;
    let algorithms = provider.signature_verification_algorithms;
    let chain = match verification {
        Verification::None => None,
        Verification::Chain | Verification::Full => {
            let roots = Arc::new(trusted_roots(rootcert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| OpenError::Config(format!("TLS setup: {e}")))?;
            Some(webpki)
        }
    };
    let verifier = ServerVerifier { chain, check_name: verification == Verification::Full, algorithms };
    let config = builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates `sslrootcert` names.
fn trusted_roots(rootcert: Option<&str>) -> Result<RootCertStore, OpenError> {
    let mut roots = RootCertStore::empty();
    if rootcert == Some("system") {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(OpenError::Config("sslrootcert=system: the system has no trusted certificates".into()));
        }
        return Ok(roots);
    }
    let path = match rootcert.map(PathBuf::from).or_else(default_rootcert) {
        Some(path) => path,
        None => return Err(OpenError::Config("no home directory for ~/.postgresql/root.crt: set sslrootcert".into())),
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        OpenError::Config(format!(
            "sslrootcert {}: {e} (verify-ca, verify-full, and require when the default file exists, need the certificates to trust)",
            path.display()
        ))
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(&e))?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(unreadable(&"no certificate in the file"));
    }
    Ok(roots)
}

/// How a server's certificate is checked: not at all (`prefer`, `require`: libpq's behaviour,
/// encryption against eavesdroppers, not against an impostor), its chain by webpki
/// (`verify-ca`), or its chain and name (`verify-full`). The handshake's signatures are always
/// checked.
#[derive(Debug)]
struct ServerVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_from_the_query_and_the_rest_is_kept() {
        let (url, mode, root) = take_tls_parameters(
            "postgres://u@h:5/db?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h:5/db?application_name=a");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/etc/ca.pem")));
        let (url, mode, _) = take_tls_parameters("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!((url.as_str(), mode.as_deref()), ("postgres://u@h/db", Some("require")));
        let plain = "host=h user=u sslmode=require";
        assert_eq!(take_tls_parameters(plain).unwrap(), (plain.to_owned(), None, None));
        assert!(take_tls_parameters("postgres://h/db?sslcert=/c.pem").is_err(), "client certificates");
        assert!(take_tls_parameters("postgres://h/db?sslrootcert=%zz").is_err());
        assert!(take_tls_parameters("postgres://h/db?sslrootcert=%+1").is_err(), "not two hex digits");
        assert!(take_tls_parameters("postgres://h/db?sslrootcert=%e9").is_err(), "not UTF-8");
        let (_, mode, _) = take_tls_parameters("postgres://h/db?ssl%6Dode=verify-full").unwrap();
        assert_eq!(mode.as_deref(), Some("verify-full"), "an encoded key is the same key");
    }

    #[test]
    fn modes_are_checked_and_verification_needs_roots() {
        assert!(connect_config("postgres://h/db?sslmode=verify-everything").is_err());
        assert!(connect_config("postgres://h/db?sslmode=disable").is_ok());
        assert!(connect_config("postgres://h/db?sslmode=require").is_ok());
        assert!(connect_config("postgres://h/db").is_ok(), "prefer, unverified, like libpq");
        let missing = connect_config("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem");
        assert!(matches!(missing, Err(OpenError::Config(message)) if message.contains("/nonexistent.pem")));
        let not_pem = std::env::temp_dir().join(format!("kiln-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let empty = format!("postgres://h/db?sslmode=verify-ca&sslrootcert={}", not_pem.display());
        assert!(connect_config(&empty).is_err(), "a file without certificates");
        let _ = std::fs::remove_file(not_pem);
        for weaker in ["require", "verify-ca", "prefer", "disable"] {
            let url = format!("postgres://h/db?sslmode={weaker}&sslrootcert=system");
            assert!(connect_config(&url).is_err(), "sslrootcert=system with {weaker}");
        }
        let verify_full_key_value = connect_config("host=h sslmode=verify-full");
        assert!(
            matches!(verify_full_key_value, Err(OpenError::Config(m)) if m.contains("sslmode")),
            "the cause is named"
        );
    }

    #[test]
    fn unnamed_servers_unix_sockets_and_bare_addresses() {
        let make = |tls: &mut KilnTls, name: &str| MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(tls, name);
        let (_, mut prefer) = connect_config("postgres://h/db?sslmode=prefer").unwrap();
        assert!(make(&mut prefer, "").is_ok() && make(&mut prefer, "db.internal").is_ok());
        let (_, mut full) = connect_config("postgres://h/db?sslmode=verify-full&sslrootcert=system").unwrap();
        assert!(make(&mut full, "").is_err(), "verify-full fails closed without a name");
        let (socket, _) = connect_config("postgresql://u@%2Fvar%2Frun%2Fpostgresql/db?sslmode=verify-full").unwrap();
        assert_eq!(socket.get_ssl_mode(), SslMode::Disable, "no TLS on a Unix socket, as libpq");
        let (bare, _) = connect_config("postgres://u@/db?hostaddr=10.0.0.5&sslmode=require").unwrap();
        assert_eq!(bare.get_hosts(), [Host::Tcp("10.0.0.5".into())], "the address names the server");
        assert!(connect_config("postgres://u@/db?hostaddr=10.0.0.5&sslmode=verify-full").is_err());
    }
}

//! How chronolog reaches PostgreSQL: [`DatabaseUrl`] reads a libpq-style
//! URL, honours its TLS parameters as libpq does, and never shows its
//! password.
//!
//! tokio-postgres (under diesel-async) knows `sslmode` only as
//! `disable`/`prefer`/`require`, never checks a server certificate itself,
//! and has no `sslrootcert`. chronolog therefore takes those two parameters
//! out of the URL it hands on and does the TLS handshake with OpenSSL, the
//! library libpq uses (and librdkafka links anyway):
//!
//! | `sslmode`             | TLS                    | server certificate checked against `sslrootcert` |
//! |-----------------------|------------------------|---------------------------------------|
//! | `disable`             | never                  | -                                     |
//! | `allow`, `prefer` (default) | if the server offers it | chain, only when `sslrootcert` is given |
//! | `require`             | always                 | chain, only when `sslrootcert` is given |
//! | `verify-ca`           | always                 | chain (`sslrootcert` required)        |
//! | `verify-full`         | always                 | chain and host name (`sslrootcert` required) |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! platform's trusted CAs, which makes `verify-full` the default and the
//! only mode allowed (as in libpq 16: any public CA would pass a weaker
//! check). Unlike libpq, chronolog neither reads `~/.postgresql/root.crt`
//! nor the `PG*` environment variables: the URL says everything.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use diesel::ConnectionResult;
use diesel::result::ConnectionError;
use diesel_async::AsyncPgConnection;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use percent_encoding::percent_decode_str;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::{Host, SslMode as WireSslMode};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server insists; chronolog treats it as `prefer`.
    Allow,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// Always TLS.
    Require,
    /// Always TLS, the server's certificate signed by a trusted CA.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name in a URL.
    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = InvalidDatabaseUrl;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(InvalidDatabaseUrl(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Where the CAs that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCerts {
    /// A PEM file (`sslrootcert=/path/ca.pem`), read at every connection so
    /// that a renewed file is picked up.
    File(PathBuf),
    /// The platform's trusted CAs (`sslrootcert=system`).
    System,
}

/// What the TLS handshake checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

/// Why a database URL was refused. The message never quotes the URL, so
/// it cannot carry the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDatabaseUrl(String);

/// A PostgreSQL URL (`postgres://user:password@host:port/db?sslmode=...`).
///
/// `Display` and `Debug` show it with the password replaced by `***`;
/// [`DatabaseUrl::expose`] is the one way to read it whole.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: String,
    redacted: String,
    /// What tokio-postgres is given: the URL without chronolog's own
    /// parameters, `sslmode` narrowed to what it understands.
    config: tokio_postgres::Config,
    mode: SslMode,
    roots: Option<RootCerts>,
    verify: Verify,
    /// The TLS set-up, built on the first connection that needs it and
    /// shared by every clone: building it reads the CA certificates (the
    /// platform's bundle is 150 of them), which cost milliseconds of CPU
    /// for every connection a pool opened. A changed `sslrootcert` file is
    /// therefore read at the next start.
    tls: Arc<OnceLock<MakeTlsConnector>>,
}

/// URL parameters that only libpq knows and that change nothing for
/// chronolog, dropped before tokio-postgres (which refuses unknown ones)
/// sees the URL.
const IGNORED: [&str; 2] = ["sslcompression", "sslsni"];

/// libpq parameters chronolog cannot honour: refusing them is better than
/// a connection less secure than the URL asks for.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("sslcert", "client certificates are not supported"),
    ("sslkey", "client certificates are not supported"),
    ("sslpassword", "client certificates are not supported"),
    ("sslcertmode", "client certificates are not supported"),
    ("sslcrl", "certificate revocation lists are not supported"),
    (
        "sslcrldir",
        "certificate revocation lists are not supported",
    ),
    (
        "requirepeer",
        "peer checks on Unix sockets are not supported",
    ),
];

impl DatabaseUrl {
    /// The URL as given, password included: for the code that connects.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// Opens one connection, with TLS as the URL asks.
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        if self.config.get_ssl_mode() == WireSslMode::Disable {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| self.connect_error(&e))?;
            return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
        }
        let tls = match self.tls.get() {
            Some(tls) => tls.clone(),
            None => {
                let tls = self
                    .tls_connector()
                    .map_err(|e| ConnectionError::BadConnection(e.0))?;
                self.tls.get_or_init(|| tls).clone()
            }
        };
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| self.connect_error(&e))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }

    fn connect_error(&self, error: &tokio_postgres::Error) -> ConnectionError {
        // tokio-postgres' messages name neither the URL nor the password.
        ConnectionError::BadConnection(format!(
            "cannot connect to {self} (sslmode={}): {}",
            self.mode.as_str(),
            with_causes(error)
        ))
    }

    fn tls_connector(&self) -> Result<MakeTlsConnector, InvalidDatabaseUrl> {
        let tls_error = |e: openssl::error::ErrorStack| {
            InvalidDatabaseUrl(format!("cannot set up TLS for PostgreSQL: {e}"))
        };
        // Starts with the platform's CAs (sslrootcert=system).
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
        // libpq's default ssl_min_protocol_version.
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_error)?;
        if let Some(RootCerts::File(path)) = &self.roots {
            // Only the named CAs, as libpq: not the platform's as well.
            let mut store = X509StoreBuilder::new().map_err(tls_error)?;
            for cert in read_root_certs(path)? {
                store.add_cert(cert).map_err(tls_error)?;
            }
            builder.set_cert_store(store.build());
        }
        let verify = self.verify;
        if verify == Verify::Nothing {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |connection, _host| {
            connection.set_verify_hostname(verify == Verify::ChainAndHost);
            Ok(())
        });
        Ok(connector)
    }
}

/// `error` and its causes, as one line: tokio-postgres' own message is only
/// its kind ("error connecting to server"), the cause says why.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The CA certificates of a PEM file; at least one.
fn read_root_certs(path: &Path) -> Result<Vec<X509>, InvalidDatabaseUrl> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| InvalidDatabaseUrl(format!("sslrootcert {shown}: cannot read it: {e}")))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        InvalidDatabaseUrl(format!(
            "sslrootcert {shown}: not a PEM file of certificates: {e}"
        ))
    })?;
    if certs.is_empty() {
        return Err(InvalidDatabaseUrl(format!(
            "sslrootcert {shown}: holds no certificate"
        )));
    }
    Ok(certs)
}

fn decode(text: &str) -> Result<Cow<'_, str>, InvalidDatabaseUrl> {
    percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| InvalidDatabaseUrl("a URL parameter is not UTF-8 once decoded".into()))
}

impl FromStr for DatabaseUrl {
    type Err = InvalidDatabaseUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            return Err(InvalidDatabaseUrl(
                "expected a URL starting with postgres:// or postgresql://".into(),
            ));
        };
        // tokio-postgres ends the user name and password at the first '@';
        // a second one would leave part of the password in the host name,
        // where a log line could show it.
        if rest.matches('@').count() > 1 {
            return Err(InvalidDatabaseUrl(
                "more than one '@': write an '@' inside the user name or password as %40".into(),
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut roots = None;
        let mut kept: Vec<&str> = Vec::new();
        let mut fallback_application_name = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| InvalidDatabaseUrl("a URL parameter has no '=' and value".into()))?;
            let key = decode(key)?;
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
                return Err(InvalidDatabaseUrl(format!("{key}: {why}")));
            }
            match key.as_ref() {
                "sslmode" => mode = Some(decode(value)?.parse::<SslMode>()?),
                "sslrootcert" => {
                    let value = decode(value)?;
                    roots = Some(if value == "system" {
                        RootCerts::System
                    } else {
                        RootCerts::File(PathBuf::from(value.as_ref()))
                    });
                }
                "gssencmode" => {
                    if decode(value)? == "require" {
                        return Err(InvalidDatabaseUrl(
                            "gssencmode=require: GSSAPI encryption is not supported".into(),
                        ));
                    }
                }
                "fallback_application_name" => fallback_application_name = Some(decode(value)?),
                ignored if IGNORED.contains(&ignored) => {}
                _ => kept.push(pair),
            }
        }

        let mode = match (mode, &roots) {
            (Some(mode), Some(RootCerts::System)) if mode != SslMode::VerifyFull => {
                return Err(InvalidDatabaseUrl(format!(
                    "sslmode={} cannot be used with sslrootcert=system: any public CA would pass; use sslmode=verify-full",
                    mode.as_str()
                )));
            }
            (None, Some(RootCerts::System)) => SslMode::VerifyFull,
            (Some(mode @ (SslMode::VerifyCa | SslMode::VerifyFull)), None) => {
                return Err(InvalidDatabaseUrl(format!(
                    "sslmode={} needs sslrootcert: a PEM file of the CAs that sign the server's certificate, or `system` for the platform's trusted CAs",
                    mode.as_str()
                )));
            }
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        if let Some(RootCerts::File(path)) = &roots {
            // Checked now so that a wrong path stops the start, not every
            // later connection.
            read_root_certs(path)?;
        }
        // libpq checks the chain whenever it has a root certificate; only
        // verify-full checks the host name too.
        let verify = match (mode, &roots) {
            (SslMode::Disable, _) => Verify::Nothing,
            (SslMode::VerifyFull, _) => Verify::ChainAndHost,
            (SslMode::VerifyCa, _) | (_, Some(_)) => Verify::Chain,
            (_, None) => Verify::Nothing,
        };

        let mut wire = base.to_owned();
        for (i, pair) in kept.iter().enumerate() {
            wire.push(if i == 0 { '?' } else { '&' });
            wire.push_str(pair);
        }
        let mut config = tokio_postgres::Config::from_str(&wire)
            .map_err(|e| InvalidDatabaseUrl(with_causes(&e)))?;
        if let (None, Some(name)) = (config.get_application_name(), fallback_application_name) {
            config.application_name(name);
        }
        // libpq never uses TLS on a Unix socket, whatever sslmode says.
        let unix_only = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        config.ssl_mode(match mode {
            _ if unix_only => WireSslMode::Disable,
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        });
        Ok(Self {
            url: url.to_owned(),
            redacted: redact(url),
            config,
            mode,
            roots,
            verify,
            tls: Arc::default(),
        })
    }
}

/// `url` with the password (in the user info or a `password` parameter)
/// replaced by `***`.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => Cow::Owned(format!("{user}:***@{host}")),
            None => Cow::Borrowed(rest),
        },
        None => Cow::Borrowed(rest),
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest.as_ref(), None),
    };
    let mut out = format!("{scheme}://{base}");
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|pair| {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if decode(key).is_ok_and(|k| k == "password") {
                    Cow::Owned(format!("{key}=***"))
                } else {
                    Cow::Borrowed(pair)
                }
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<DatabaseUrl, InvalidDatabaseUrl> {
        url.parse()
    }

    /// A self-signed CA certificate in a temporary file, made with the
    /// openssl crate (unit tests need no tool).
    struct TempCa(PathBuf);

    impl TempCa {
        fn new() -> Self {
            use openssl::asn1::Asn1Time;
            use openssl::hash::MessageDigest;
            use openssl::pkey::PKey;
            use openssl::rsa::Rsa;
            use openssl::x509::X509NameBuilder;

            let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let mut name = X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", "unit test CA").unwrap();
            let name = name.build();
            let mut cert = X509::builder().unwrap();
            cert.set_version(2).unwrap();
            cert.set_subject_name(&name).unwrap();
            cert.set_issuer_name(&name).unwrap();
            cert.set_pubkey(&key).unwrap();
            cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
                .unwrap();
            cert.sign(&key, MessageDigest::sha256()).unwrap();
            let path = std::env::temp_dir()
                .join(format!("chronolog-unit-ca-{}.pem", uuid::Uuid::new_v4()));
            std::fs::write(&path, cert.build().to_pem().unwrap()).unwrap();
            Self(path)
        }
    }

    impl Drop for TempCa {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_password_never_shows() {
        let url =
            parse("postgres://app:s3cr%3At@db.example:5432/view?password=other&sslmode=require")
                .unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.example:5432/view?password=***&sslmode=require"
        );
        assert_eq!(
            url.expose(),
            "postgres://app:s3cr%3At@db.example:5432/view?password=other&sslmode=require"
        );
        assert_eq!(
            parse("postgres://app@h/db").unwrap().to_string(),
            "postgres://app@h/db"
        );
    }

    #[test]
    fn errors_never_quote_the_url() {
        for url in [
            "mysql://app:pw-in-error@h/db",
            "postgres://app:pw-in-error@h/db?sslmode=sometimes",
            "postgres://app:pw-in-error@h/db?sslmode=verify-full",
            "postgres://app:pw-in-error@h/db?sslrootcert=/nonexistent/ca.pem",
            "postgres://app:pw@in-error@h/db",
            "postgres://app:pw-in-error@h/db?colour=blue",
            "postgres://app:pw-in-error@h:port/db",
            "postgres://app:pw-in-error@h/db?sslcert=/c.pem",
            "postgres://app:pw-in-error@h/db?sslmode",
        ] {
            let error = parse(url).expect_err(url).to_string();
            assert!(!error.contains("in-error"), "{url}: {error}");
            assert!(!error.is_empty());
        }
    }

    #[test]
    fn sslmode_follows_libpq() {
        let wire = |url: &str| parse(url).unwrap().config.get_ssl_mode();
        let verify = |url: &str| parse(url).unwrap().verify;
        assert_eq!(wire("postgres://h/db"), WireSslMode::Prefer);
        assert_eq!(verify("postgres://h/db"), Verify::Nothing);
        assert_eq!(
            wire("postgres://h/db?sslmode=disable"),
            WireSslMode::Disable
        );
        assert_eq!(wire("postgres://h/db?sslmode=allow"), WireSslMode::Prefer);
        assert_eq!(
            wire("postgres://h/db?sslmode=require"),
            WireSslMode::Require
        );
        assert_eq!(verify("postgres://h/db?sslmode=require"), Verify::Nothing);

        let ca = TempCa::new();
        let with_ca = |mode: &str| {
            format!(
                "postgres://h/db?sslmode={mode}&sslrootcert={}",
                ca.0.display()
            )
        };
        // libpq checks the chain whenever it has a root certificate.
        assert_eq!(verify(&with_ca("require")), Verify::Chain);
        assert_eq!(verify(&with_ca("prefer")), Verify::Chain);
        assert_eq!(verify(&with_ca("verify-ca")), Verify::Chain);
        assert_eq!(verify(&with_ca("verify-full")), Verify::ChainAndHost);
        assert_eq!(wire(&with_ca("verify-ca")), WireSslMode::Require);
        assert_eq!(
            parse(&with_ca("verify-full")).unwrap().roots,
            Some(RootCerts::File(ca.0.clone()))
        );

        let system = parse("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(system.mode, SslMode::VerifyFull);
        assert_eq!(system.verify, Verify::ChainAndHost);
        assert!(parse("postgres://h/db?sslrootcert=system&sslmode=require").is_err());
        assert!(parse("postgres://h/db?sslmode=verify-ca").is_err());
    }

    #[test]
    fn libpq_only_parameters_are_stripped_or_refused() {
        let url =
            parse("postgres://h/db?sslcompression=0&sslsni=1&connect_timeout=3&gssencmode=prefer")
                .unwrap();
        assert_eq!(
            url.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(url.config.get_application_name(), None);
        let named = parse("postgres://h/db?fallback_application_name=x").unwrap();
        assert_eq!(named.config.get_application_name(), Some("x"));
        let error = parse("postgres://h/db?sslkey=/k.pem")
            .unwrap_err()
            .to_string();
        assert_eq!(error, "sslkey: client certificates are not supported");
        assert!(parse("postgres://h/db?gssencmode=require").is_err());
    }

    #[test]
    fn a_unix_socket_never_uses_tls() {
        let url = parse("postgres:///db?host=/run/postgresql&sslmode=require").unwrap();
        assert_eq!(url.config.get_ssl_mode(), WireSslMode::Disable);
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let path = std::env::temp_dir().join(format!("chronolog-empty-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            path.display()
        ))
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(error.starts_with("sslrootcert "), "{error}");
        assert!(error.ends_with("holds no certificate"), "{error}");
    }
}

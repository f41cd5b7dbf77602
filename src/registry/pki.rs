//! The registry's TLS: a cluster CA and the serving certificates it signs, as PEM.
//!
//! The CA is made once per cluster and handed to every node (containerd trusts it for the
//! registry's name only); each controller that runs a registry gets a serving certificate
//! for the registry's domain and the controllers' addresses, issued under that CA.
//! Certificates are made by rcgen; a CA made elsewhere is checked with x509-parser and
//! loaded as an issuer by rcgen, so no certificate is parsed by hand here.
//! Nothing here reads the clock or the disk: `now` and the PEM come in, PEM goes out.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use crate::secret::Secret;

/// The common name of the CA bootstrap makes.
pub const CA_COMMON_NAME: &str = "bootstrap registry CA";
/// How long a new CA is valid: longer than any cluster is expected to live without a
/// rebuild, since replacing it means touching every node's containerd trust.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a serving certificate is valid. Reissuing one touches a single controller,
/// so it is kept short; a serving certificate never outlives its CA.
pub const SERVING_VALIDITY: Duration = Duration::days(730);
/// Certificates are dated this much before `now`: nodes come up with clocks that differ
/// by seconds to minutes, and a certificate from a controller whose clock runs ahead
/// would otherwise be "not yet valid" on the others.
pub const BACKDATE: Duration = Duration::hours(1);

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("registry server name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("the registry certificate needs at least one name: the domain is empty and no address was given")]
    NoNames,
    #[error("a certificate valid from {now} for {validity} ends outside the representable range")]
    TimeOutOfRange {
        now: OffsetDateTime,
        validity: Duration,
    },
    #[error("the CA certificate PEM holds {count} certificates; exactly one is expected")]
    CaCertificateCount { count: usize },
    #[error("the CA certificate PEM could not be read: {reason}")]
    CaPem { reason: String },
    #[error("the CA certificate could not be parsed: {0}")]
    CaDer(String),
    #[error(
        "the CA private key could not be read (a PKCS#8 \"PRIVATE KEY\" PEM is expected): {source}"
    )]
    CaKey {
        #[source]
        source: rcgen::Error,
    },
    #[error("the CA private key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("the CA certificate is not a CA (BasicConstraints does not say cA: TRUE)")]
    NotCa,
    #[error("the CA certificate's KeyUsage does not allow signing certificates (keyCertSign)")]
    CaCannotSign,
    #[error(
        "the CA certificate expired at {not_after}; make a new CA (every node must then trust it)"
    )]
    CaExpired { not_after: OffsetDateTime },
    #[error(
        "the CA certificate's subject {reason}, which bootstrap cannot reproduce as an issuer name"
    )]
    CaSubject { reason: &'static str },
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// A CA: its certificate and private key, PEM. The key is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthority {
    /// The CA certificate, PEM: what every node trusts for the registry.
    pub cert_pem: String,
    /// PKCS#8 `PRIVATE KEY` PEM.
    pub key_pem: Secret,
}

/// A serving certificate and its private key, PEM, for the registry's `http.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    /// The serving certificate alone, PEM (the CA is not appended: clients have it).
    pub cert_pem: String,
    /// PKCS#8 `PRIVATE KEY` PEM.
    pub key_pem: Secret,
}

/// A new CA with a serving certificate issued under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPki {
    /// The new CA.
    pub ca: CertificateAuthority,
    /// The serving certificate it signed.
    pub server: ServingCertificate,
}

/// The names a serving certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNames {
    /// The registry's domain (`sea.hub`): the certificate's common name and first
    /// subject alternative name. An address here is taken as an IP name.
    pub domain: String,
    /// More DNS names, such as `localhost`: only those given are included.
    pub dns_names: Vec<String>,
    /// Addresses nodes reach the registry on (the controllers'); `127.0.0.1` only when
    /// given.
    pub ip_addresses: Vec<IpAddr>,
}

impl ServerNames {
    /// The domain and the addresses, no other DNS names.
    pub fn new(domain: impl Into<String>, ip_addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        ServerNames {
            domain: domain.into(),
            dns_names: Vec::new(),
            ip_addresses: ip_addresses.into_iter().collect(),
        }
    }

    /// Subject alternative names in order (domain, DNS names, addresses), each once.
    fn subject_alt_names(&self) -> Result<Vec<SanType>, PkiError> {
        let mut sans: Vec<SanType> = Vec::new();
        let dns = std::iter::once(&self.domain)
            .filter(|domain| !domain.is_empty())
            .chain(&self.dns_names);
        for name in dns {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_dns_name(name)?;
                    let ia5 = Ia5String::try_from(name.to_ascii_lowercase()).map_err(|_| {
                        PkiError::BadName {
                            name: name.clone(),
                            reason: "not ASCII",
                        }
                    })?;
                    SanType::DnsName(ia5)
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for ip in &self.ip_addresses {
            let san = SanType::IpAddress(*ip);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        if sans.is_empty() {
            return Err(PkiError::NoNames);
        }
        Ok(sans)
    }
}

/// A host name as certificates carry it (RFC 1123 labels); wildcards are refused, since
/// the registry has one name.
fn check_dns_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason| {
        Err(PkiError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("has an empty label");
        }
        if label.len() > 63 {
            return bad("has a label longer than 63 characters");
        }
        if label == "*" {
            return bad("wildcards are not allowed");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not begin or end with '-'");
        }
    }
    Ok(())
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    // P-256: small, fast, and accepted by Go's crypto/tls (the registry, containerd).
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate(what))
}

fn add(now: OffsetDateTime, validity: Duration) -> Result<OffsetDateTime, PkiError> {
    now.checked_add(validity)
        .ok_or(PkiError::TimeOutOfRange { now, validity })
}

fn backdated(now: OffsetDateTime) -> Result<OffsetDateTime, PkiError> {
    now.checked_sub(BACKDATE).ok_or(PkiError::TimeOutOfRange {
        now,
        validity: -BACKDATE,
    })
}

/// The parameters of the CA bootstrap makes.
fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.not_before = backdated(now)?;
    params.not_after = add(now, CA_VALIDITY)?;
    // Path length 0: it signs serving certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Makes a new self-signed CA, valid from an hour before `now` for [`CA_VALIDITY`].
pub fn generate_ca(now: OffsetDateTime) -> Result<CertificateAuthority, PkiError> {
    let key = new_key("generate the CA key")?;
    let cert = ca_params(now)?
        .self_signed(&key)
        .map_err(generate("sign the CA certificate"))?;
    Ok(CertificateAuthority {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// Makes a new CA and a serving certificate for `names` under it.
pub fn generate_pki(names: &ServerNames, now: OffsetDateTime) -> Result<RegistryPki, PkiError> {
    let ca = generate_ca(now)?;
    let server = issue_serving_cert(&ca, names, now)?;
    Ok(RegistryPki { ca, server })
}

/// Issues a new serving certificate (and key) for `names` under an existing CA, such as
/// the one a previous run or the first controller made. The CA may be any CA whose key
/// rcgen can use (ECDSA P-256/P-384, Ed25519, RSA in PKCS#8) and whose certificate rcgen
/// can load as an issuer: its certificate is checked to be a CA allowed to sign
/// certificates, to match the key and to be unexpired. The certificate is valid from an
/// hour before `now` for [`SERVING_VALIDITY`], or until the CA expires if that is sooner.
pub fn issue_serving_cert(
    ca: &CertificateAuthority,
    names: &ServerNames,
    now: OffsetDateTime,
) -> Result<ServingCertificate, PkiError> {
    let ca_der = single_certificate(&ca.cert_pem)?;
    let ca_cert = parse_certificate(&ca_der).map_err(PkiError::CaDer)?;
    let constraints = ca_cert
        .basic_constraints()
        .map_err(|e| PkiError::CaDer(format!("BasicConstraints: {e}")))?;
    if !constraints.is_some_and(|constraints| constraints.value.ca) {
        return Err(PkiError::NotCa);
    }
    // A CA certificate without KeyUsage may be used for anything.
    let usage = ca_cert
        .key_usage()
        .map_err(|e| PkiError::CaDer(format!("KeyUsage: {e}")))?;
    if !usage.is_none_or(|usage| usage.value.key_cert_sign()) {
        return Err(PkiError::CaCannotSign);
    }
    let not_after = ca_cert.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(PkiError::CaExpired { not_after });
    }
    let ca_key =
        KeyPair::from_pem(ca.key_pem.expose()).map_err(|source| PkiError::CaKey { source })?;
    if ca_key.public_key_der() != ca_cert.public_key().raw {
        return Err(PkiError::CaKeyMismatch);
    }
    check_subject(ca_cert.subject())?;
    let has_key_id = ca_cert.iter_extensions().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )
    });

    // rcgen signs with an issuer *certificate*: the CA's own subject and key id, loaded
    // by rcgen and signed again by its key, name the real CA. It is thrown away afterwards.
    let issuer = CertificateParams::from_ca_cert_der(&ca_der)
        .map_err(generate(
            "load the CA certificate's subject and extensions into rcgen",
        ))?
        .self_signed(&ca_key)
        .map_err(generate("restate the CA certificate"))?;

    let mut params = CertificateParams::default();
    params.subject_alt_names = names.subject_alt_names()?;
    params.distinguished_name = DistinguishedName::new();
    // The domain names the certificate; without one, the first address does.
    let common_name = if names.domain.is_empty() {
        match params.subject_alt_names.first() {
            Some(SanType::IpAddress(ip)) => ip.to_string(),
            Some(SanType::DnsName(name)) => name.to_string(),
            _ => return Err(PkiError::NoNames),
        }
    } else {
        names.domain.to_ascii_lowercase()
    };
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = backdated(now)?;
    params.not_after = add(now, SERVING_VALIDITY)?.min(not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Without a key id on the CA there is nothing to point at.
    params.use_authority_key_identifier_extension = has_key_id;

    let key = new_key("generate the serving key")?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(generate("sign the serving certificate"))?;
    // A CA name rcgen writes differently (attribute repetition, say) would make a
    // certificate no client can chain: check the bytes.
    let issued = parse_certificate(cert.der()).map_err(|reason| PkiError::Generate {
        what: "read back the serving certificate",
        source: rcgen::Error::X509(reason),
    })?;
    if issued.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(PkiError::CaSubject {
            reason: "is encoded in a way rcgen does not reproduce (a repeated attribute type?)",
        });
    }
    Ok(ServingCertificate {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// The one certificate in a PEM string.
fn single_certificate(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = item.map_err(|e| PkiError::CaPem {
            reason: e.to_string(),
        })?;
        certs.push(cert);
    }
    match certs.len() {
        1 => Ok(certs.remove(0)),
        0 => Err(PkiError::CaPem {
            reason: "no \"CERTIFICATE\" block found".into(),
        }),
        count => Err(PkiError::CaCertificateCount { count }),
    }
}

/// A DER certificate, with nothing after it, read by x509-parser.
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    Ok(cert)
}

/// Refuses a CA subject rcgen cannot write back as an issuer name: rcgen writes one
/// attribute per relative distinguished name, in one of six string types.
fn check_subject(subject: &X509Name<'_>) -> Result<(), PkiError> {
    for rdn in subject.iter() {
        if rdn.iter().nth(1).is_some() {
            return Err(PkiError::CaSubject {
                reason: "has a relative distinguished name with several attributes",
            });
        }
        for attribute in rdn.iter() {
            let supported = matches!(
                attribute.attr_value().header.tag(),
                Tag::Utf8String
                    | Tag::PrintableString
                    | Tag::Ia5String
                    | Tag::T61String
                    | Tag::BmpString
                    | Tag::UniversalString
            );
            if !supported {
                return Err(PkiError::CaSubject {
                    reason: "uses a string type other than UTF8, Printable, IA5, Teletex, BMP or Universal",
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{DnValue, KeyIdMethod};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::RootCertStore;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;

    use super::*;

    /// 2026-03-01 12:00 UTC: fixed, so every date below is exact.
    const NOW_UNIX: i64 = 1_772_366_400;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW_UNIX).expect("a valid time")
    }

    fn der(pem: &str) -> Vec<u8> {
        single_certificate(pem).expect("one certificate").to_vec()
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = X509Certificate::from_der(der).expect("x509-parser reads it");
        assert!(rest.is_empty());
        cert
    }

    fn names() -> ServerNames {
        ServerNames::new(
            "sea.hub",
            ["10.0.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        )
    }

    /// rustls/webpki's verdict on `leaf` for `name` under `ca` at `at`: chain,
    /// signature, validity, name and serverAuth.
    fn verify(ca_pem: &str, leaf_pem: &str, name: &str, at: OffsetDateTime) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(der(ca_pem)))
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let seconds = u64::try_from(at.unix_timestamp()).expect("after 1970");
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
        verifier
            .verify_server_cert(
                &CertificateDer::from(der(leaf_pem)),
                &[],
                &server_name,
                &[],
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn san_strings(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert
            .subject_alternative_name()
            .expect("well-formed")
            .expect("has SANs");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(octets) => match octets.len() {
                    4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*octets).unwrap())),
                    16 => format!(
                        "ip:{}",
                        IpAddr::from(<[u8; 16]>::try_from(*octets).unwrap())
                    ),
                    n => panic!("IP SAN of {n} bytes"),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
    }

    #[test]
    fn ca_is_a_ten_year_signing_only_ca() {
        let ca = generate_ca(now()).unwrap();
        let der = der(&ca.cert_pem);
        let cert = parse(&der);
        assert_eq!(
            cert.subject().as_raw(),
            cert.issuer().as_raw(),
            "self-signed"
        );
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), CA_COMMON_NAME);
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap();
        assert!(usage.critical);
        assert!(usage.value.key_cert_sign() && usage.value.crl_sign());
        assert!(!usage.value.digital_signature() && !usage.value.key_encipherment());
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            now() - Duration::hours(1)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            now() + Duration::days(3650)
        );
        assert!(ca
            .key_pem
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let shown = format!("{ca:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn serving_cert_names_validity_and_chain() {
        let pki = generate_pki(&names(), now()).unwrap();
        let ca_der = der(&pki.ca.cert_pem);
        let ca = parse(&ca_der);
        let leaf_der = der(&pki.server.cert_pem);
        let leaf = parse(&leaf_der);
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "sea.hub");
        assert_eq!(
            san_strings(&leaf),
            ["dns:sea.hub", "ip:10.0.0.10", "ip:fd00::10"],
            "the domain and the given addresses, nothing else"
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        let aki = authority_key_id(&leaf);
        let ski = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        assert!(ski.is_some());
        assert_eq!(aki, ski, "the serving cert points at the CA's key id");
        assert_eq!(
            leaf.validity().not_after.to_datetime(),
            now() + SERVING_VALIDITY
        );

        let (ca_pem, leaf_pem) = (&pki.ca.cert_pem, &pki.server.cert_pem);
        let soon = now() + Duration::minutes(1);
        for name in ["sea.hub", "10.0.0.10", "fd00::10"] {
            verify(ca_pem, leaf_pem, name, soon).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Clocks a little behind still accept it.
        verify(ca_pem, leaf_pem, "sea.hub", now() - Duration::minutes(30)).unwrap();
        for name in ["localhost", "127.0.0.1", "other.hub", "10.0.0.11"] {
            assert!(verify(ca_pem, leaf_pem, name, soon).is_err(), "{name}");
        }
        let expired = now() + SERVING_VALIDITY + Duration::days(1);
        assert!(verify(ca_pem, leaf_pem, "sea.hub", expired).is_err());
        let other_ca = generate_ca(now()).unwrap();
        assert!(verify(&other_ca.cert_pem, leaf_pem, "sea.hub", soon).is_err());
    }

    #[test]
    fn localhost_only_when_passed_and_names_deduplicated() {
        let mut names = ServerNames::new(
            "Sea.Hub",
            [
                "127.0.0.1".parse().unwrap(),
                "10.0.0.10".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
        );
        names.dns_names = vec!["localhost".into(), "sea.hub".into()];
        let pki = generate_pki(&names, now()).unwrap();
        let leaf_der = der(&pki.server.cert_pem);
        assert_eq!(
            san_strings(&parse(&leaf_der)),
            [
                "dns:sea.hub",
                "dns:localhost",
                "ip:127.0.0.1",
                "ip:10.0.0.10"
            ]
        );
        for name in ["localhost", "127.0.0.1"] {
            verify(&pki.ca.cert_pem, &pki.server.cert_pem, name, now()).unwrap();
        }

        // An address as the domain is an IP name, and the common name.
        let by_address = ServerNames::new("10.0.0.5", []);
        let pki = generate_pki(&by_address, now()).unwrap();
        let leaf_der = der(&pki.server.cert_pem);
        assert_eq!(san_strings(&parse(&leaf_der)), ["ip:10.0.0.5"]);
        verify(&pki.ca.cert_pem, &pki.server.cert_pem, "10.0.0.5", now()).unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        for domain in ["*.sea.hub", "sea_hub", "-sea.hub", "sea..hub", "séa.hub"] {
            let err = generate_pki(&ServerNames::new(domain, []), now()).unwrap_err();
            assert!(
                matches!(&err, PkiError::BadName { name, .. } if name == domain),
                "{domain}: {err}"
            );
        }
        assert!(matches!(
            generate_pki(&ServerNames::new("", []), now()),
            Err(PkiError::NoNames)
        ));
        let only_address = ServerNames::new("", ["10.0.0.1".parse().unwrap()]);
        let pki = generate_pki(&only_address, now()).unwrap();
        verify(&pki.ca.cert_pem, &pki.server.cert_pem, "10.0.0.1", now()).unwrap();
    }

    #[test]
    fn reissue_under_an_existing_ca() {
        let first = generate_pki(&names(), now()).unwrap();
        let later = now() + Duration::days(400);
        let mut more = names();
        more.ip_addresses.push("10.0.0.11".parse().unwrap());
        let second = issue_serving_cert(&first.ca, &more, later).unwrap();
        assert_ne!(second.key_pem, first.server.key_pem, "a new key");
        verify(&first.ca.cert_pem, &second.cert_pem, "10.0.0.11", later).unwrap();
        verify(&first.ca.cert_pem, &second.cert_pem, "sea.hub", later).unwrap();
    }

    #[test]
    fn reissue_under_a_foreign_ca() {
        // Another PKI's CA: P-384, a name with several attributes and string types,
        // and a key id that is not a SHA-256 of its key.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CountryName,
            DnValue::PrintableString("DE".try_into().unwrap()),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example GmbH");
        params.distinguished_name.push(
            DnType::CommonName,
            DnValue::PrintableString("Example Root".try_into().unwrap()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = now() - Duration::days(10);
        params.not_after = now() + Duration::days(100);
        params.key_identifier_method = KeyIdMethod::PreSpecified(vec![1, 2, 3, 4]);
        let cert = params.self_signed(&key).unwrap();
        let ca = CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        };
        let server = issue_serving_cert(&ca, &names(), now()).unwrap();
        verify(&ca.cert_pem, &server.cert_pem, "sea.hub", now()).unwrap();
        let leaf_der = der(&server.cert_pem);
        let leaf = parse(&leaf_der);
        assert_eq!(
            leaf.validity().not_after.to_datetime(),
            now() + Duration::days(100),
            "never outlives its CA"
        );
        let aki = authority_key_id(&leaf);
        assert_eq!(aki, Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn ca_with_a_repeated_attribute_is_refused_not_misnamed() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params(now()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "one");
        // The same attribute type by its OID: rcgen writes both.
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 11]), "two");
        let cert = params.self_signed(&key).unwrap();
        let ca = CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        };
        assert!(matches!(
            issue_serving_cert(&ca, &names(), now()),
            Err(PkiError::CaSubject { .. })
        ));
    }

    #[test]
    fn unusable_cas_are_refused() {
        let pki = generate_pki(&names(), now()).unwrap();
        let other = generate_ca(now()).unwrap();
        let issue = |ca: &CertificateAuthority| issue_serving_cert(ca, &names(), now());

        let swapped = CertificateAuthority {
            cert_pem: pki.ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        assert!(matches!(issue(&swapped), Err(PkiError::CaKeyMismatch)));

        let leaf_as_ca = CertificateAuthority {
            cert_pem: pki.server.cert_pem.clone(),
            key_pem: pki.server.key_pem.clone(),
        };
        assert!(matches!(issue(&leaf_as_ca), Err(PkiError::NotCa)));

        let old = generate_ca(now() - Duration::days(3651)).unwrap();
        let err = issue(&old).unwrap_err();
        assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");

        let two = CertificateAuthority {
            cert_pem: format!("{}{}", pki.ca.cert_pem, other.cert_pem),
            key_pem: pki.ca.key_pem.clone(),
        };
        assert!(matches!(
            issue(&two),
            Err(PkiError::CaCertificateCount { count: 2 })
        ));

        let garbage = CertificateAuthority {
            cert_pem: "not a certificate".into(),
            key_pem: pki.ca.key_pem.clone(),
        };
        assert!(matches!(issue(&garbage), Err(PkiError::CaPem { .. })));

        // A "CERTIFICATE" block holding DER that is no certificate (SEQUENCE { 0 }).
        let not_a_certificate = CertificateAuthority {
            cert_pem: "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n".into(),
            key_pem: pki.ca.key_pem.clone(),
        };
        let err = issue(&not_a_certificate).unwrap_err();
        assert!(matches!(err, PkiError::CaDer(_)), "{err}");

        let bad_key = CertificateAuthority {
            cert_pem: pki.ca.cert_pem.clone(),
            key_pem: Secret::new("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        };
        let err = issue(&bad_key).unwrap_err();
        assert!(matches!(err, PkiError::CaKey { .. }), "{err}");
        assert!(!err.to_string().contains("AAAA"));

        // A CA certificate whose KeyUsage leaves out keyCertSign.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params(now()).unwrap();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        let no_sign = CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        };
        assert!(matches!(issue(&no_sign), Err(PkiError::CaCannotSign)));
    }
}

//! Just enough DER to read an X.509 certificate bootstrap did not make in this run: its
//! names, validity, public key and the extensions that say whether it may sign others.
//!
//! rcgen can only parse certificates with its `x509-parser` feature; reusing a cluster's
//! CA needs a handful of fields, so they are read here instead, strictly (definite
//! lengths, no trailing bytes) and without recursion.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, `[1]`/`[2]` unique ids, `[3] EXPLICIT Extensions`.
const VERSION: u8 = 0xa0;
const ISSUER_UID: u8 = 0x81;
const SUBJECT_UID: u8 = 0x82;
const EXTENSIONS: u8 = 0xa3;

/// `id-ce-subjectKeyIdentifier`, `id-ce-keyUsage`, `id-ce-basicConstraints` (2.5.29.x).
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// The `keyCertSign` bit of KeyUsage (bit 5, counted from the most significant).
const KEY_CERT_SIGN: u8 = 0x04;

/// What could not be read, and where in the certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DerError {
    pub field: &'static str,
    pub reason: &'static str,
}

fn err(field: &'static str, reason: &'static str) -> DerError {
    DerError { field, reason }
}

/// One tag-length-value.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// The whole encoding, tag and length included.
    raw: &'a [u8],
}

/// Reads TLVs one after another from a byte string.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn read(&mut self, field: &'static str) -> Result<Tlv<'a>, DerError> {
        let bytes = self.rest;
        let (&tag, after_tag) = bytes.split_first().ok_or(err(field, "missing"))?;
        if tag & 0x1f == 0x1f {
            return Err(err(field, "multi-byte tags are not used in certificates"));
        }
        let (&first, after_len) = after_tag.split_first().ok_or(err(field, "truncated"))?;
        let (len, header) = match first {
            0..=0x7f => (usize::from(first), 2),
            0x80 => return Err(err(field, "indefinite length is not DER")),
            0x81..=0x84 => {
                let count = usize::from(first & 0x7f);
                let len_bytes = after_len.get(..count).ok_or(err(field, "truncated"))?;
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                (len, 2 + count)
            }
            _ => return Err(err(field, "length too large")),
        };
        let end = header
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .ok_or(err(field, "truncated"))?;
        self.rest = &bytes[end..];
        Ok(Tlv {
            tag,
            content: &bytes[header..end],
            raw: &bytes[..end],
        })
    }

    fn expect(&mut self, tag: u8, field: &'static str) -> Result<Tlv<'a>, DerError> {
        let tlv = self.read(field)?;
        if tlv.tag != tag {
            return Err(err(field, "unexpected type"));
        }
        Ok(tlv)
    }

    /// Reads the next TLV only when it has this tag.
    fn optional(&mut self, tag: u8, field: &'static str) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn finish(&self, field: &'static str) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(err(field, "unexpected trailing bytes"))
        }
    }
}

/// One attribute of a distinguished name: its type (OID arcs), the ASN.1 string type
/// it was written with, and the string's bytes as encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAttribute {
    pub oid: Vec<u64>,
    pub string_tag: u8,
    pub value: Vec<u8>,
}

/// The parts of a certificate bootstrap reads.
#[derive(Debug, Clone)]
pub struct CertInfo<'a> {
    /// The issuer Name, as encoded (tag and length included).
    pub issuer_raw: &'a [u8],
    /// The subject Name, as encoded.
    pub subject_raw: &'a [u8],
    /// The subject's attributes, one per relative distinguished name, in order. `None`
    /// when a relative distinguished name holds several attributes.
    pub subject: Option<Vec<NameAttribute>>,
    pub not_after: OffsetDateTime,
    /// The SubjectPublicKeyInfo, as encoded.
    pub public_key_info: &'a [u8],
    pub subject_key_id: Option<Vec<u8>>,
    /// BasicConstraints says `cA: TRUE`.
    pub is_ca: bool,
    /// KeyUsage is absent (any use) or includes `keyCertSign`.
    pub may_sign_certs: bool,
}

/// Reads a DER-encoded certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo<'_>, DerError> {
    let mut outer = Reader::new(der);
    let certificate = outer.expect(SEQUENCE, "certificate")?;
    outer.finish("certificate")?;
    let mut cert = Reader::new(certificate.content);
    let tbs = cert.expect(SEQUENCE, "tbsCertificate")?;

    let mut tbs = Reader::new(tbs.content);
    tbs.optional(VERSION, "version")?;
    tbs.expect(INTEGER, "serialNumber")?;
    tbs.expect(SEQUENCE, "signature")?;
    let issuer = tbs.expect(SEQUENCE, "issuer")?;
    let validity = tbs.expect(SEQUENCE, "validity")?;
    let subject = tbs.expect(SEQUENCE, "subject")?;
    let public_key_info = tbs.expect(SEQUENCE, "subjectPublicKeyInfo")?;
    tbs.optional(ISSUER_UID, "issuerUniqueID")?;
    tbs.optional(SUBJECT_UID, "subjectUniqueID")?;
    let extensions = tbs.optional(EXTENSIONS, "extensions")?;
    tbs.finish("tbsCertificate")?;

    let mut validity = Reader::new(validity.content);
    validity.read("notBefore")?;
    let not_after = parse_time(validity.read("notAfter")?, "notAfter")?;
    validity.finish("validity")?;

    let mut info = CertInfo {
        issuer_raw: issuer.raw,
        subject_raw: subject.raw,
        subject: parse_name(subject.content)?,
        not_after,
        public_key_info: public_key_info.raw,
        subject_key_id: None,
        is_ca: false,
        may_sign_certs: true,
    };
    if let Some(extensions) = extensions {
        let mut wrapper = Reader::new(extensions.content);
        let list = wrapper.expect(SEQUENCE, "extensions")?;
        wrapper.finish("extensions")?;
        let mut list = Reader::new(list.content);
        while list.peek_tag().is_some() {
            let extension = list.expect(SEQUENCE, "extension")?;
            read_extension(extension.content, &mut info)?;
        }
    }
    Ok(info)
}

fn read_extension(content: &[u8], info: &mut CertInfo<'_>) -> Result<(), DerError> {
    let mut ext = Reader::new(content);
    let oid = ext.expect(OID, "extension id")?;
    ext.optional(BOOLEAN, "extension critical flag")?;
    let value = ext.expect(OCTET_STRING, "extension value")?;
    ext.finish("extension")?;
    let mut value = Reader::new(value.content);
    match oid.content {
        OID_SUBJECT_KEY_ID => {
            let id = value.expect(OCTET_STRING, "subjectKeyIdentifier")?;
            value.finish("subjectKeyIdentifier")?;
            info.subject_key_id = Some(id.content.to_vec());
        }
        OID_BASIC_CONSTRAINTS => {
            let constraints = value.expect(SEQUENCE, "basicConstraints")?;
            value.finish("basicConstraints")?;
            let mut constraints = Reader::new(constraints.content);
            if let Some(ca) = constraints.optional(BOOLEAN, "basicConstraints cA")? {
                info.is_ca = ca.content == [0xff];
            }
        }
        OID_KEY_USAGE => {
            let bits = value.expect(BIT_STRING, "keyUsage")?;
            value.finish("keyUsage")?;
            // The first content byte counts the unused bits; keyCertSign is in the next.
            info.may_sign_certs = bits
                .content
                .get(1)
                .is_some_and(|first| first & KEY_CERT_SIGN != 0);
        }
        _ => {}
    }
    Ok(())
}

/// A Name's attributes, or `None` when one relative distinguished name holds several
/// (which rcgen cannot write back).
fn parse_name(content: &[u8]) -> Result<Option<Vec<NameAttribute>>, DerError> {
    let mut rdns = Reader::new(content);
    let mut attributes = Vec::new();
    while rdns.peek_tag().is_some() {
        let rdn = rdns.expect(SET, "name")?;
        let mut rdn = Reader::new(rdn.content);
        let attribute = rdn.expect(SEQUENCE, "name attribute")?;
        if rdn.peek_tag().is_some() {
            return Ok(None);
        }
        let mut attribute = Reader::new(attribute.content);
        let oid = attribute.expect(OID, "name attribute type")?;
        let value = attribute.read("name attribute value")?;
        attribute.finish("name attribute")?;
        attributes.push(NameAttribute {
            oid: parse_oid(oid.content)?,
            string_tag: value.tag,
            value: value.content.to_vec(),
        });
    }
    Ok(Some(attributes))
}

/// OID content bytes to arcs: base-128 groups, the first packing two arcs.
fn parse_oid(content: &[u8]) -> Result<Vec<u64>, DerError> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    let mut pending = false;
    for &byte in content {
        if value > (u64::MAX >> 7) {
            return Err(err("object identifier", "arc too large"));
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        pending = byte & 0x80 != 0;
        if !pending {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if pending || arcs.is_empty() {
        return Err(err("object identifier", "truncated"));
    }
    Ok(arcs)
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`),
/// the only forms RFC 5280 allows.
fn parse_time(tlv: Tlv<'_>, field: &'static str) -> Result<OffsetDateTime, DerError> {
    let text = std::str::from_utf8(tlv.content)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or(err(field, "not ASCII"))?;
    let (year, rest) = match (tlv.tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy: i32 = digits(&text[..2], field)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4], field)?, &text[4..]),
        _ => return Err(err(field, "not a UTCTime or GeneralizedTime in Zulu form")),
    };
    if !rest.ends_with('Z') {
        return Err(err(field, "not in UTC (no trailing Z)"));
    }
    let month: u8 = digits(&rest[0..2], field)?;
    let month = Month::try_from(month).map_err(|_| err(field, "bad month"))?;
    let date = Date::from_calendar_date(year, month, digits(&rest[2..4], field)?)
        .map_err(|_| err(field, "bad date"))?;
    let time = Time::from_hms(
        digits(&rest[4..6], field)?,
        digits(&rest[6..8], field)?,
        digits(&rest[8..10], field)?,
    )
    .map_err(|_| err(field, "bad time of day"))?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

fn digits<T: std::str::FromStr>(text: &str, field: &'static str) -> Result<T, DerError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(field, "not a number"));
    }
    text.parse().map_err(|_| err(field, "not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_identifiers() {
        // 2.5.4.3 (commonName) and 1.2.840.10045.2.1 (ecPublicKey).
        assert_eq!(parse_oid(&[0x55, 0x04, 0x03]).unwrap(), vec![2, 5, 4, 3]);
        assert_eq!(
            parse_oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]).unwrap(),
            vec![1, 2, 840, 10045, 2, 1]
        );
        assert!(parse_oid(&[0x2a, 0x86]).is_err());
        assert!(parse_oid(&[]).is_err());
    }

    #[test]
    fn times_in_both_forms() {
        let utc = Tlv {
            tag: UTC_TIME,
            content: b"491231235959Z",
            raw: &[],
        };
        let t = parse_time(utc, "t").unwrap();
        assert_eq!((t.year(), t.month(), t.day()), (2049, Month::December, 31));
        let generalized = Tlv {
            tag: GENERALIZED_TIME,
            content: b"20500101000000Z",
            raw: &[],
        };
        assert_eq!(parse_time(generalized, "t").unwrap().year(), 2050);
        let local = Tlv {
            tag: UTC_TIME,
            content: b"4912312359590",
            raw: &[],
        };
        assert!(parse_time(local, "t").is_err());
    }

    #[test]
    fn refuses_truncated_and_indefinite_lengths() {
        assert_eq!(
            parse_certificate(&[0x30, 0x05, 0x01]).unwrap_err().reason,
            "truncated"
        );
        assert_eq!(
            parse_certificate(&[0x30, 0x80, 0x00, 0x00])
                .unwrap_err()
                .reason,
            "indefinite length is not DER"
        );
        assert_eq!(
            parse_certificate(&[0x30, 0x00, 0x00]).unwrap_err().reason,
            "unexpected trailing bytes"
        );
        assert!(parse_certificate(&[]).is_err());
    }
}

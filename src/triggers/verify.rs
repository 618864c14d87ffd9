//! Verification of webhook deliveries: HMAC signatures (plain or timestamped), the
//! Standard Webhooks scheme, shared tokens, basic authentication and allowed addresses.
//! Signatures are always checked over the raw bytes as received, in constant time.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use crate::rules::{
    BasicCheck, HmacAlgorithm, HmacCheck, SignatureEncoding, StandardCheck, TokenCheck,
    Verification,
};

/// Why a delivery failed verification; logged at DEBUG and counted, never sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("address {0} is not allowed")]
    Address(IpAddr),
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("missing query parameter {0}")]
    MissingQuery(String),
    #[error("wrong token")]
    WrongToken,
    #[error("wrong credentials")]
    WrongCredentials,
    #[error("the signature is not valid {0}")]
    Undecodable(&'static str),
    #[error("wrong signature")]
    WrongSignature,
    #[error("the timestamp is not a number")]
    BadTimestamp,
    #[error("stale timestamp: {0} s from now")]
    StaleTimestamp(i64),
}

impl Rejection {
    /// A short label for counting rejections by reason.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Address(_) => "address",
            Rejection::MissingHeader(_) | Rejection::MissingQuery(_) => "missing",
            Rejection::WrongToken | Rejection::WrongCredentials => "credentials",
            Rejection::Undecodable(_) | Rejection::WrongSignature => "signature",
            Rejection::BadTimestamp | Rejection::StaleTimestamp(_) => "timestamp",
        }
    }
}

/// What a check reads of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The sender's address, after trusted proxies.
    pub peer: IpAddr,
    /// Now, in Unix seconds.
    pub now: i64,
}

impl Delivery<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Runs every check of a verification; the first that fails decides.
pub fn verify(v: &Verification, d: &Delivery<'_>) -> Result<(), Rejection> {
    if !v.allow_ips.is_empty() && !v.allow_ips.iter().any(|net| net.contains(&d.peer)) {
        return Err(Rejection::Address(d.peer));
    }
    if let Some(token) = &v.token {
        check_token(token, d)?;
    }
    if let Some(basic) = &v.basic {
        check_basic(basic, d)?;
    }
    if let Some(hmac) = &v.hmac {
        check_hmac(hmac, d)?;
    }
    if let Some(standard) = &v.standard {
        check_standard(standard, d)?;
    }
    Ok(())
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn check_token(check: &TokenCheck, d: &Delivery<'_>) -> Result<(), Rejection> {
    let given = if let Some(name) = &check.header {
        d.header(name)
            .map(|v| v.trim().trim_start_matches("Bearer ").to_owned())
            .ok_or_else(|| Rejection::MissingHeader(name.clone()))?
    } else if let Some(param) = &check.query {
        form_urlencoded::parse(d.query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == param)
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| Rejection::MissingQuery(param.clone()))?
    } else {
        return Err(Rejection::WrongToken);
    };
    if check.secrets.iter().any(|s| equal(s, given.as_bytes())) {
        Ok(())
    } else {
        Err(Rejection::WrongToken)
    }
}

fn check_basic(check: &BasicCheck, d: &Delivery<'_>) -> Result<(), Rejection> {
    let header = d
        .header("authorization")
        .ok_or_else(|| Rejection::MissingHeader("authorization".into()))?;
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or(Rejection::WrongCredentials)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Rejection::WrongCredentials)?;
    let expected = format!("{}:{}", check.username, check.password);
    if equal(&decoded, expected.as_bytes()) {
        Ok(())
    } else {
        Err(Rejection::WrongCredentials)
    }
}

/// Computes an HMAC of the parts, concatenated.
fn mac(algorithm: HmacAlgorithm, secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC takes keys of any length, so this cannot fail.
        match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
            Ok(mut mac) => {
                for part in parts {
                    mac.update(part);
                }
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(secret, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(secret, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(secret, parts),
    }
}

fn decode(encoding: SignatureEncoding, text: &str) -> Result<Vec<u8>, Rejection> {
    match encoding {
        SignatureEncoding::Hex => {
            hex::decode(text.trim()).map_err(|_| Rejection::Undecodable("hex"))
        }
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| Rejection::Undecodable("base64")),
    }
}

/// Parses a timestamp in seconds or milliseconds and checks it against the tolerance.
fn fresh(text: &str, now: i64, tolerance: Duration) -> Result<(), Rejection> {
    let value: i64 = text.trim().parse().map_err(|_| Rejection::BadTimestamp)?;
    // Milliseconds since 1970 pass 10^11 in 1973; seconds will not until the year 5138.
    let seconds = if value.unsigned_abs() > 100_000_000_000 {
        value / 1000
    } else {
        value
    };
    let skew = seconds.saturating_sub(now);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(Rejection::StaleTimestamp(skew));
    }
    Ok(())
}

fn check_hmac(check: &HmacCheck, d: &Delivery<'_>) -> Result<(), Rejection> {
    let header = d
        .header(&check.header)
        .ok_or_else(|| Rejection::MissingHeader(check.header.clone()))?;

    // The signatures offered, and the timestamp they cover, if any.
    let (signatures, timestamp): (Vec<&str>, Option<String>) = match &check.timestamp {
        None => (vec![header], None),
        Some(ts) => match &ts.header {
            Some(name) => {
                let value = d
                    .header(name)
                    .ok_or_else(|| Rejection::MissingHeader(name.clone()))?;
                (vec![header], Some(value.trim().to_owned()))
            }
            None => {
                // `t=<timestamp>,v1=<signature>[,v1=<signature>]`
                let mut t = None;
                let mut sigs = Vec::new();
                for item in header.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", value)) => t = Some(value.to_owned()),
                        Some(("v1", value)) => sigs.push(value),
                        _ => {}
                    }
                }
                (sigs, Some(t.ok_or(Rejection::BadTimestamp)?))
            }
        },
    };
    if let (Some(ts), Some(spec)) = (&timestamp, &check.timestamp) {
        fresh(ts, d.now, spec.tolerance)?;
    }
    let mut any_decoded = false;
    for signature in signatures {
        let signature = signature.trim();
        let Some(signature) = signature.strip_prefix(check.prefix.as_str()) else {
            continue;
        };
        let Ok(given) = decode(check.encoding, signature) else {
            continue;
        };
        any_decoded = true;
        for secret in &check.secrets {
            let expected = match &timestamp {
                Some(ts) => mac(check.algorithm, secret, &[ts.as_bytes(), b".", d.body]),
                None => mac(check.algorithm, secret, &[d.body]),
            };
            if equal(&expected, &given) {
                return Ok(());
            }
        }
    }
    if any_decoded {
        Err(Rejection::WrongSignature)
    } else {
        Err(Rejection::Undecodable(match check.encoding {
            SignatureEncoding::Hex => "hex",
            SignatureEncoding::Base64 => "base64",
        }))
    }
}

fn check_standard(check: &StandardCheck, d: &Delivery<'_>) -> Result<(), Rejection> {
    let id = d
        .header("webhook-id")
        .ok_or_else(|| Rejection::MissingHeader("webhook-id".into()))?;
    let timestamp = d
        .header("webhook-timestamp")
        .ok_or_else(|| Rejection::MissingHeader("webhook-timestamp".into()))?;
    let signatures = d
        .header("webhook-signature")
        .ok_or_else(|| Rejection::MissingHeader("webhook-signature".into()))?;
    fresh(timestamp, d.now, check.tolerance)?;
    let parts: [&[u8]; 5] = [
        id.as_bytes(),
        b".",
        timestamp.trim().as_bytes(),
        b".",
        d.body,
    ];
    for secret in &check.secrets {
        let expected = mac(HmacAlgorithm::Sha256, secret, &parts);
        for offered in signatures.split_whitespace() {
            let Some(encoded) = offered.strip_prefix("v1,") else {
                continue;
            };
            if let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded)
                && equal(&expected, &given)
            {
                return Ok(());
            }
        }
    }
    Err(Rejection::WrongSignature)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rules::TimestampCheck;
    use axum::http::HeaderValue;

    const NOW: i64 = 1_790_000_000;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn delivery<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Delivery<'a> {
        Delivery {
            headers,
            query: None,
            body,
            peer: "127.0.0.1".parse().unwrap(),
            now: NOW,
        }
    }

    fn hmac_check(
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: &str,
    ) -> HmacCheck {
        HmacCheck {
            secrets: vec![b"s3cret".to_vec()],
            header: "x-signature".into(),
            algorithm,
            encoding,
            prefix: prefix.into(),
            timestamp: None,
        }
    }

    fn only(check: HmacCheck) -> Verification {
        Verification {
            hmac: Some(check),
            ..Verification::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    const BODY: &[u8] = br#"{"email":"jane@example.com","first_name":"Jane"}"#;

    #[test]
    fn every_algorithm_and_encoding_passes_with_the_right_signature() {
        for algorithm in [
            HmacAlgorithm::Sha1,
            HmacAlgorithm::Sha256,
            HmacAlgorithm::Sha512,
        ] {
            let sig = mac(algorithm, b"s3cret", &[BODY]);
            for (encoding, text) in [
                (SignatureEncoding::Hex, hex::encode(&sig)),
                (SignatureEncoding::Base64, b64(&sig)),
            ] {
                let h = headers(&[("x-signature", format!("sha={text}"))]);
                let v = only(hmac_check(algorithm, encoding, "sha="));
                assert_eq!(
                    verify(&v, &delivery(&h, BODY)),
                    Ok(()),
                    "{algorithm:?} {encoding:?}"
                );
                let wrong = headers(&[("x-signature", format!("sha={}", hex::encode([0u8; 20])))]);
                assert!(verify(&v, &delivery(&wrong, BODY)).is_err());
            }
        }
    }

    #[test]
    fn a_reserialized_body_fails() {
        let sig = hex::encode(mac(HmacAlgorithm::Sha256, b"s3cret", &[BODY]));
        let h = headers(&[("x-signature", sig)]);
        let reserialized =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap())
                .unwrap();
        let v = only(hmac_check(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "",
        ));
        assert_eq!(
            verify(&v, &delivery(&h, &reserialized)),
            Err(Rejection::WrongSignature)
        );
    }

    #[test]
    fn a_header_in_other_case_passes() {
        // Header names arrive in any case; the map is case-insensitive by construction.
        let sig = hex::encode(mac(HmacAlgorithm::Sha256, b"s3cret", &[BODY]));
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(b"X-SIGNATURE").unwrap(),
            HeaderValue::from_str(&sig).unwrap(),
        );
        let v = only(hmac_check(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "",
        ));
        assert_eq!(verify(&v, &delivery(&h, BODY)), Ok(()));
    }

    #[test]
    fn a_form_body_is_checked_as_raw_bytes() {
        let raw = b"email=jane%40example.com&first_name=Jane";
        let decoded_again = b"email=jane@example.com&first_name=Jane";
        let sig = hex::encode(mac(HmacAlgorithm::Sha256, b"s3cret", &[raw]));
        let h = headers(&[("x-signature", sig)]);
        let v = only(hmac_check(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "",
        ));
        assert_eq!(verify(&v, &delivery(&h, raw)), Ok(()));
        assert_eq!(
            verify(&v, &delivery(&h, decoded_again)),
            Err(Rejection::WrongSignature)
        );
    }

    #[test]
    fn a_rotated_secret_passes() {
        let sig = hex::encode(mac(HmacAlgorithm::Sha256, b"new-secret", &[BODY]));
        let h = headers(&[("x-signature", sig)]);
        let mut check = hmac_check(HmacAlgorithm::Sha256, SignatureEncoding::Hex, "");
        check.secrets = vec![b"old-secret".to_vec(), b"new-secret".to_vec()];
        assert_eq!(verify(&only(check.clone()), &delivery(&h, BODY)), Ok(()));
        check.secrets = vec![b"old-secret".to_vec()];
        assert_eq!(
            verify(&only(check), &delivery(&h, BODY)),
            Err(Rejection::WrongSignature)
        );
    }

    fn timestamped(header: Option<&str>) -> Verification {
        let mut check = hmac_check(HmacAlgorithm::Sha256, SignatureEncoding::Hex, "");
        check.timestamp = Some(TimestampCheck {
            header: header.map(str::to_owned),
            tolerance: Duration::from_secs(300),
        });
        only(check)
    }

    #[test]
    fn t_v1_signatures_check_the_timestamp_both_ways() {
        let v = timestamped(None);
        for (offset, ok) in [
            (0, true),
            (-290, true),
            (-360, false),
            (360, false),
            (290, true),
        ] {
            let ts = (NOW + offset).to_string();
            let sig = hex::encode(mac(
                HmacAlgorithm::Sha256,
                b"s3cret",
                &[ts.as_bytes(), b".", BODY],
            ));
            let h = headers(&[("x-signature", format!("t={ts},v1=deadbeef,v1={sig}"))]);
            let result = verify(&v, &delivery(&h, BODY));
            assert_eq!(result.is_ok(), ok, "offset {offset}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(Rejection::StaleTimestamp(_))));
            }
        }
    }

    #[test]
    fn a_timestamp_header_in_milliseconds_passes() {
        let v = timestamped(Some("x-timestamp"));
        let ts = (NOW * 1000 + 123).to_string();
        let sig = hex::encode(mac(
            HmacAlgorithm::Sha256,
            b"s3cret",
            &[ts.as_bytes(), b".", BODY],
        ));
        let h = headers(&[("x-signature", sig.clone()), ("x-timestamp", ts)]);
        assert_eq!(verify(&v, &delivery(&h, BODY)), Ok(()));
        let stale = ((NOW - 361) * 1000).to_string();
        let h = headers(&[("x-signature", sig), ("x-timestamp", stale)]);
        assert!(matches!(
            verify(&v, &delivery(&h, BODY)),
            Err(Rejection::StaleTimestamp(_))
        ));
        let h = headers(&[("x-signature", "00".into())]);
        assert_eq!(
            verify(&v, &delivery(&h, BODY)),
            Err(Rejection::MissingHeader("x-timestamp".into()))
        );
    }

    #[test]
    fn standard_webhooks_signatures() {
        let key = b"0123456789abcdef0123456789abcdef".to_vec();
        let check = StandardCheck {
            secrets: vec![b"other-key-000000".to_vec(), key.clone()],
            tolerance: Duration::from_secs(300),
        };
        let v = Verification {
            standard: Some(check),
            ..Verification::default()
        };
        let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
        let sign = |ts: i64| {
            let ts = ts.to_string();
            b64(&mac(
                HmacAlgorithm::Sha256,
                &key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", BODY],
            ))
        };
        let good = headers(&[
            ("webhook-id", id.into()),
            ("webhook-timestamp", NOW.to_string()),
            ("webhook-signature", format!("v1,bm90IGl0 v1,{}", sign(NOW))),
        ]);
        assert_eq!(verify(&v, &delivery(&good, BODY)), Ok(()));
        let old = headers(&[
            ("webhook-id", id.into()),
            ("webhook-timestamp", (NOW - 360).to_string()),
            ("webhook-signature", format!("v1,{}", sign(NOW - 360))),
        ]);
        assert!(matches!(
            verify(&v, &delivery(&old, BODY)),
            Err(Rejection::StaleTimestamp(_))
        ));
        let other_id = headers(&[
            ("webhook-id", "msg_other".into()),
            ("webhook-timestamp", NOW.to_string()),
            ("webhook-signature", format!("v1,{}", sign(NOW))),
        ]);
        assert_eq!(
            verify(&v, &delivery(&other_id, BODY)),
            Err(Rejection::WrongSignature)
        );
    }

    #[test]
    fn tokens_in_headers_and_queries() {
        let v = Verification {
            token: Some(TokenCheck {
                secrets: vec![b"tok-1".to_vec(), b"tok-2".to_vec()],
                header: Some("x-token".into()),
                query: None,
            }),
            ..Verification::default()
        };
        let h = headers(&[("x-token", "tok-2".into())]);
        assert_eq!(verify(&v, &delivery(&h, BODY)), Ok(()));
        let h = headers(&[("x-token", "tok-3".into())]);
        assert_eq!(verify(&v, &delivery(&h, BODY)), Err(Rejection::WrongToken));

        let v = Verification {
            token: Some(TokenCheck {
                secrets: vec![b"a b&c".to_vec()],
                header: None,
                query: Some("key".into()),
            }),
            ..Verification::default()
        };
        let empty = HeaderMap::new();
        let mut d = delivery(&empty, BODY);
        d.query = Some("x=1&key=a+b%26c");
        assert_eq!(verify(&v, &d), Ok(()));
        d.query = Some("x=1");
        assert_eq!(verify(&v, &d), Err(Rejection::MissingQuery("key".into())));
    }

    #[test]
    fn basic_credentials() {
        let v = Verification {
            basic: Some(BasicCheck {
                username: "forms".into(),
                password: "pa:ss".into(),
            }),
            ..Verification::default()
        };
        let good = headers(&[("authorization", format!("Basic {}", b64(b"forms:pa:ss")))]);
        assert_eq!(verify(&v, &delivery(&good, BODY)), Ok(()));
        let bad = headers(&[("authorization", format!("Basic {}", b64(b"forms:nope")))]);
        assert_eq!(
            verify(&v, &delivery(&bad, BODY)),
            Err(Rejection::WrongCredentials)
        );
    }

    #[test]
    fn allowed_addresses_and_ranges() {
        let v = Verification {
            allow_ips: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::1/128".parse().unwrap(),
            ],
            ..Verification::default()
        };
        let h = HeaderMap::new();
        let mut d = delivery(&h, BODY);
        d.peer = "192.0.2.77".parse().unwrap();
        assert_eq!(verify(&v, &d), Ok(()));
        d.peer = "2001:db8::1".parse().unwrap();
        assert_eq!(verify(&v, &d), Ok(()));
        d.peer = "198.51.100.1".parse().unwrap();
        assert!(matches!(verify(&v, &d), Err(Rejection::Address(_))));
    }

    #[test]
    fn garbage_signatures_are_rejected_not_panicked_on() {
        let v = timestamped(None);
        for text in [
            "",
            ",,,",
            "t=",
            "t=abc,v1=zz",
            "v1=00",
            "t=99999999999999999999999,v1=00",
        ] {
            let h = headers(&[("x-signature", text.into())]);
            assert!(verify(&v, &delivery(&h, BODY)).is_err(), "{text}");
        }
    }
}

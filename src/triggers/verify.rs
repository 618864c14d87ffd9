//! Signature checks of webhook deliveries, always over the raw bytes as received and
//! compared in constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::rules::{HmacAlgorithm, HmacCheck, SignatureEncoding};

/// Why a delivery failed verification; logged at DEBUG, never sent to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("the signature is not {0}")]
    Undecodable(&'static str),
    #[error("wrong signature")]
    WrongSignature,
}

fn decode_signature(check: &HmacCheck, text: &str) -> Result<Vec<u8>, Rejection> {
    let text = text.trim();
    let text = text.strip_prefix(check.prefix.as_str()).unwrap_or(text);
    match check.encoding {
        SignatureEncoding::Hex => hex::decode(text).map_err(|_| Rejection::Undecodable("hex")),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| Rejection::Undecodable("base64")),
    }
}

fn verify_mac<M: Mac + hmac::digest::KeyInit>(secret: &[u8], body: &[u8], sig: &[u8]) -> bool {
    match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            mac.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

/// Checks an HMAC signature header against the raw body.
pub fn check_hmac(check: &HmacCheck, header: Option<&str>, body: &[u8]) -> Result<(), Rejection> {
    let header = header.ok_or_else(|| Rejection::MissingHeader(check.header.clone()))?;
    if !header.trim().starts_with(check.prefix.as_str()) {
        return Err(Rejection::WrongSignature);
    }
    let signature = decode_signature(check, header)?;
    let ok = match check.algorithm {
        HmacAlgorithm::Sha1 => verify_mac::<Hmac<sha1::Sha1>>(&check.secret, body, &signature),
        HmacAlgorithm::Sha256 => verify_mac::<Hmac<sha2::Sha256>>(&check.secret, body, &signature),
        HmacAlgorithm::Sha512 => verify_mac::<Hmac<sha2::Sha512>>(&check.secret, body, &signature),
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::WrongSignature)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sign_hex(secret: &[u8], body: &[u8]) -> String {
        let mut mac =
            <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn check(prefix: &str, encoding: SignatureEncoding) -> HmacCheck {
        HmacCheck {
            secret: b"s3cret".to_vec(),
            header: "x-signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding,
            prefix: prefix.into(),
        }
    }

    #[test]
    fn accepts_a_correct_prefixed_hex_signature() {
        let body = br#"{"email":"a@example.com"}"#;
        let header = format!("sha256={}", sign_hex(b"s3cret", body));
        assert_eq!(
            check_hmac(
                &check("sha256=", SignatureEncoding::Hex),
                Some(&header),
                body
            ),
            Ok(())
        );
    }

    #[test]
    fn rejects_a_reserialized_body() {
        let body = br#"{"email":"a@example.com"}"#;
        let header = format!("sha256={}", sign_hex(b"s3cret", body));
        let other = br#"{"email": "a@example.com"}"#;
        assert_eq!(
            check_hmac(
                &check("sha256=", SignatureEncoding::Hex),
                Some(&header),
                other
            ),
            Err(Rejection::WrongSignature)
        );
    }

    #[test]
    fn accepts_base64_and_rejects_missing_or_garbled_headers() {
        let body = b"first_name=Jane&email=jane%40example.com";
        let mut mac =
            <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let c = check("", SignatureEncoding::Base64);
        assert_eq!(check_hmac(&c, Some(&sig), body), Ok(()));
        assert_eq!(
            check_hmac(&c, None, body),
            Err(Rejection::MissingHeader("x-signature".into()))
        );
        assert_eq!(
            check_hmac(&c, Some("!!!"), body),
            Err(Rejection::Undecodable("base64"))
        );
    }
}

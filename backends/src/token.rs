//! A small token-minting kit: the signing half of the `auth` service, also used by the
//! end-to-end tests and the load bench.
//!
//! Keys are generated at run time (never committed): HMAC secrets from the system RNG, RSA 2048,
//! P-256 / P-384 and Ed25519 key pairs from aws-lc-rs. Each [`SigningKey`] knows its algorithm and
//! `kid`, exports its public half as SPKI PEM and as a JWK, and signs JWTs whose header carries
//! `alg` and `kid`.
//!
//! ```no_run
//! use std::time::Duration;
//! use backends::token::{claims, jwks, Algorithm, SigningKey};
//!
//! let key = SigningKey::generate(Algorithm::ES256, "k1");
//! let token = key.sign(&claims("https://auth.test", "shop", "user-1", Duration::from_secs(300)));
//! let document = jwks(&[&key]); // serve as /.well-known/jwks.json
//! # let _ = (token, document);
//! ```
// Key generation and signing fail only when the OS RNG or the crypto library is broken; a test kit
// panics then (with the reason) rather than making every caller handle an impossible error.
#![allow(clippy::expect_used, clippy::panic)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::EncodingKey;
pub use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

/// Bytes of randomness in a generated HMAC secret (hex-encoded, so the secret text is twice as long).
const HMAC_RANDOM_BYTES: usize = 32;

/// A private signing key with its algorithm and key id.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    kid: String,
    encoding: EncodingKey,
    material: Material,
}

/// What the public half (or, for HMAC, the shared secret) is made of.
#[derive(Clone)]
enum Material {
    Hmac { secret: Vec<u8> },
    Rsa { spki_der: Vec<u8>, n: Vec<u8>, e: Vec<u8> },
    Ec { spki_der: Vec<u8>, crv: &'static str, x: Vec<u8>, y: Vec<u8> },
    Ed25519 { spki_der: Vec<u8>, x: Vec<u8> },
}

impl fmt::Debug for SigningKey {
    /// Algorithm and kid only: never the private key or the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("algorithm", &self.algorithm).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key for `algorithm` with key id `kid`: HS* a random secret (64 hex characters, 256
    /// bits), RS* / PS* RSA 2048 (slow-ish: tens of milliseconds), ES256 P-256, ES384 P-384, EdDSA Ed25519.
    ///
    /// # Panics
    /// If the system RNG or key generation fails.
    pub fn generate(algorithm: Algorithm, kid: &str) -> SigningKey {
        SigningKey::try_generate(algorithm, kid).unwrap_or_else(|e| panic!("generating a {algorithm:?} key: {e:#}"))
    }

    /// Like [`SigningKey::generate`], returning the failure.
    pub fn try_generate(algorithm: Algorithm, kid: &str) -> anyhow::Result<SigningKey> {
        use Algorithm::*;
        match algorithm {
            HS256 | HS384 | HS512 => {
                let mut random = [0u8; HMAC_RANDOM_BYTES];
                aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
                Ok(SigningKey::hmac(algorithm, kid, hex(&random).into_bytes()))
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => rsa(algorithm, kid),
            ES256 => ecdsa(algorithm, kid, &ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
            ES384 => ecdsa(algorithm, kid, &ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            EdDSA => ed25519(kid),
            other => anyhow::bail!("the token kit cannot generate keys for {other:?}"),
        }
    }

    /// An HMAC key (`HS256`/`HS384`/`HS512`) with the given secret, e.g. to sign with bytes an attacker
    /// knows (a public key's PEM in an algorithm-confusion attempt).
    ///
    /// # Panics
    /// If `algorithm` is not an HMAC algorithm.
    pub fn hmac(algorithm: Algorithm, kid: &str, secret: impl Into<Vec<u8>>) -> SigningKey {
        assert!(
            matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
            "SigningKey::hmac with non-HMAC algorithm {algorithm:?}"
        );
        let secret = secret.into();
        SigningKey {
            algorithm,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(&secret),
            material: Material::Hmac { secret },
        }
    }

    /// A new key like this one (same algorithm, new key material) under another `kid`.
    pub fn regenerate(&self, kid: &str) -> SigningKey {
        SigningKey::generate(self.algorithm, kid)
    }

    /// The same key material under another `kid` (what a JWKS with a renamed key would publish).
    pub fn with_kid(&self, kid: &str) -> SigningKey {
        SigningKey { kid: kid.to_owned(), ..self.clone() }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The JWS / JWK name of the algorithm (`"RS256"`, `"EdDSA"`, ...).
    pub fn algorithm_name(&self) -> String {
        algorithm_name(self.algorithm)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The HMAC shared secret (ASCII text for generated keys, so it fits an environment variable);
    /// `None` for asymmetric keys.
    pub fn secret(&self) -> Option<&[u8]> {
        match &self.material {
            Material::Hmac { secret } => Some(secret),
            _ => None,
        }
    }

    /// The public key as SPKI (`-----BEGIN PUBLIC KEY-----`) PEM, lines of 64 characters, with a
    /// final newline.
    ///
    /// # Panics
    /// For an HMAC key, which has no public half (see [`SigningKey::secret`]).
    pub fn public_pem(&self) -> String {
        match &self.material {
            Material::Rsa { spki_der, .. } | Material::Ec { spki_der, .. } | Material::Ed25519 { spki_der, .. } => {
                pem("PUBLIC KEY", spki_der)
            }
            Material::Hmac { .. } => {
                panic!("{:?} key `{}` is symmetric: it has no public PEM", self.algorithm, self.kid)
            }
        }
    }

    /// The key as a JWK with `kty`, `kid`, `alg`, `use: "sig"` and the key parameters (base64url
    /// without padding): `n`/`e` (RSA), `crv`/`x`/`y` (EC), `crv: "Ed25519"`/`x` (OKP). For an HMAC
    /// key this is an `oct` JWK whose `k` IS the secret: never publish it.
    pub fn jwk(&self) -> Value {
        let mut jwk = match &self.material {
            Material::Rsa { n, e, .. } => json!({ "kty": "RSA", "n": base64url(n), "e": base64url(e) }),
            Material::Ec { crv, x, y, .. } => json!({ "kty": "EC", "crv": crv, "x": base64url(x), "y": base64url(y) }),
            Material::Ed25519 { x, .. } => json!({ "kty": "OKP", "crv": "Ed25519", "x": base64url(x) }),
            Material::Hmac { secret } => json!({ "kty": "oct", "k": base64url(secret) }),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.algorithm_name());
        jwk["use"] = json!("sig");
        jwk
    }

    /// A compact JWT of `claims` with header `{"typ":"JWT","alg":ALG,"kid":KID}`.
    ///
    /// # Panics
    /// If signing fails (see [`SigningKey::try_sign`]).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Like [`SigningKey::sign`], returning the failure: for a service, which must not panic.
    pub fn try_sign(&self, claims: &Value) -> jsonwebtoken::errors::Result<String> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// A compact JWT with a header of the caller's making (its `alg` must be this key's algorithm,
    /// since that is what signs it; leave `kid` out, add `x5t`, ...).
    ///
    /// # Panics
    /// If the header's `alg` does not fit the key, or signing fails.
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding)
            .unwrap_or_else(|e| panic!("signing with {:?} key `{}`: {e}", self.algorithm, self.kid))
    }
}

/// `{"keys": [jwk, ...]}`: a JWKS document publishing `keys`.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() })
}

/// Standard claims for a token valid from now for `lifetime`: `iss`, `aud` (a string), `sub`,
/// `iat` = `nbf` = now, `exp` = now + lifetime (seconds since the epoch). Modify the returned
/// object freely (`claims["scope"] = json!("a b")`, `claims["exp"] = json!(now() - 60)`, ...).
pub fn claims(issuer: &str, audience: &str, subject: &str, lifetime: Duration) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs(),
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// base64url of `value` serialized as JSON: one segment of a hand-made token, e.g.
/// `format!("{}.{}.", segment(&json!({"alg": "none"})), segment(&claims))`.
pub fn segment(value: &Value) -> String {
    base64url(value.to_string().as_bytes())
}

/// The JWS / JWK name of `algorithm` (`"RS256"`, `"EdDSA"`, ...): its serde name.
pub fn algorithm_name(algorithm: Algorithm) -> String {
    match serde_json::to_value(algorithm) {
        Ok(Value::String(name)) => name,
        _ => format!("{algorithm:?}"),
    }
}

/// base64url without padding (RFC 7515 section 2).
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa(algorithm: Algorithm, kid: &str) -> anyhow::Result<SigningKey> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let pkcs8 = pair.as_der().map_err(|_| anyhow::anyhow!("encoding the RSA key as PKCS#8 failed"))?;
    let spki_der = pair.public_key().as_der().map_err(|_| anyhow::anyhow!("encoding the RSA public key failed"))?;
    let numbers = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    Ok(SigningKey {
        algorithm,
        kid: kid.to_owned(),
        // jsonwebtoken reads a PKCS#8 private key from PEM (its DER form would have to be PKCS#1).
        encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())?,
        material: Material::Rsa { spki_der: spki_der.as_ref().to_vec(), n: numbers.n, e: numbers.e },
    })
}

fn ecdsa(
    algorithm: Algorithm,
    kid: &str,
    signing: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
    crv: &'static str,
) -> anyhow::Result<SigningKey> {
    let pair = EcdsaKeyPair::generate(signing).map_err(|_| anyhow::anyhow!("{crv} key generation failed"))?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| anyhow::anyhow!("encoding the {crv} key as PKCS#8 failed"))?;
    let spki_der = pair.public_key().as_der().map_err(|_| anyhow::anyhow!("encoding the {crv} public key failed"))?;
    // The public key bytes are the uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    anyhow::ensure!(point.len() % 2 == 1 && point.first() == Some(&4), "unexpected {crv} public point encoding");
    let half = point.len() / 2;
    Ok(SigningKey {
        algorithm,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        material: Material::Ec {
            spki_der: spki_der.as_ref().to_vec(),
            crv,
            x: point[1..=half].to_vec(),
            y: point[half + 1..].to_vec(),
        },
    })
}

fn ed25519(kid: &str) -> anyhow::Result<SigningKey> {
    let pair = Ed25519KeyPair::generate().map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| anyhow::anyhow!("encoding the Ed25519 key as PKCS#8 failed"))?;
    let spki_der = pair.public_key().as_der().map_err(|_| anyhow::anyhow!("encoding the Ed25519 public key failed"))?;
    Ok(SigningKey {
        algorithm: Algorithm::EdDSA,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        material: Material::Ed25519 { spki_der: spki_der.as_ref().to_vec(), x: pair.public_key().as_ref().to_vec() },
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    use super::*;

    const ISSUER: &str = "https://auth.test";
    const AUDIENCE: &str = "shop";
    const ASYMMETRIC: [Algorithm; 8] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::PS256,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS512,
    ];

    fn validation(algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation
    }

    fn token(key: &SigningKey) -> (String, Value) {
        let mut claims = claims(ISSUER, AUDIENCE, "user-1", Duration::from_secs(300));
        claims["scope"] = json!("cart:read cart:write");
        (key.sign(&claims), claims)
    }

    fn verify(token: &str, key: &DecodingKey, algorithm: Algorithm) -> Value {
        decode::<Value>(token, key, &validation(algorithm)).unwrap_or_else(|e| panic!("{algorithm:?}: {e}")).claims
    }

    #[test]
    fn token_asymmetric_tokens_verify_with_the_public_pem_and_the_jwk() {
        for algorithm in ASYMMETRIC {
            let key = SigningKey::generate(algorithm, "k1");
            let (token, claims) = token(&key);

            let pem = key.public_pem();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
            assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
            let from_pem = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .unwrap_or_else(|e| panic!("{algorithm:?} PEM: {e}\n{pem}"));
            assert_eq!(verify(&token, &from_pem, algorithm), claims);

            let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap_or_else(|e| panic!("{algorithm:?} JWK: {e}"));
            let from_jwk = DecodingKey::from_jwk(&jwk).unwrap_or_else(|e| panic!("{algorithm:?} JWK: {e}"));
            assert_eq!(verify(&token, &from_jwk, algorithm), claims);
        }
    }

    #[test]
    fn token_hmac_tokens_verify_with_the_secret_and_the_oct_jwk() {
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let key = SigningKey::generate(algorithm, "h1");
            let secret = key.secret().unwrap();
            assert!(secret.len() >= 32 && secret.is_ascii(), "secret must fit an env var: {secret:?}");
            let (token, claims) = token(&key);
            assert_eq!(verify(&token, &DecodingKey::from_secret(secret), algorithm), claims);
            let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
            assert_eq!(verify(&token, &DecodingKey::from_jwk(&jwk).unwrap(), algorithm), claims);
        }
        let a = SigningKey::generate(Algorithm::HS256, "a");
        let b = SigningKey::generate(Algorithm::HS256, "b");
        assert_ne!(a.secret(), b.secret(), "secrets are random");
    }

    #[test]
    fn token_header_names_alg_and_kid() {
        for algorithm in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let key = SigningKey::generate(algorithm, "kid-7");
            let header = decode_header(token(&key).0).unwrap();
            assert_eq!((header.alg, header.kid.as_deref()), (algorithm, Some("kid-7")));
        }
    }

    #[test]
    fn token_jwk_has_the_public_members_only() {
        let cases = [
            (Algorithm::RS256, "RSA", &["n", "e"][..], None),
            (Algorithm::ES256, "EC", &["x", "y"][..], Some("P-256")),
            (Algorithm::ES384, "EC", &["x", "y"][..], Some("P-384")),
            (Algorithm::EdDSA, "OKP", &["x"][..], Some("Ed25519")),
        ];
        for (algorithm, kty, members, crv) in cases {
            let key = SigningKey::generate(algorithm, "k");
            let jwk = key.jwk();
            assert_eq!(jwk["kty"], kty);
            assert_eq!(jwk["kid"], "k");
            assert_eq!(jwk["alg"], algorithm_name(algorithm));
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["crv"].as_str(), crv);
            for member in members {
                let value = jwk[member].as_str().unwrap_or_else(|| panic!("{kty}: no {member} in {jwk}"));
                assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{value}");
            }
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{kty} JWK leaks `{private}`: {jwk}");
            }
        }
        assert_eq!(SigningKey::generate(Algorithm::RS256, "k").jwk()["e"], "AQAB");
    }

    #[test]
    fn token_jwks_lists_every_key() {
        let (a, b) = (SigningKey::generate(Algorithm::ES256, "a"), SigningKey::generate(Algorithm::EdDSA, "b"));
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks(&[&a, &b])).unwrap();
        assert_eq!(set.keys.len(), 2);
        assert!(set.find("a").is_some() && set.find("b").is_some());
    }

    #[test]
    fn token_another_key_or_a_tampered_token_does_not_verify() {
        let key = SigningKey::generate(Algorithm::ES256, "k");
        let decoding = DecodingKey::from_ec_pem(key.public_pem().as_bytes()).unwrap();
        let (genuine, _) = token(&key);
        assert!(decode::<Value>(&genuine, &decoding, &validation(Algorithm::ES256)).is_ok());

        let (forged, _) = token(&key.regenerate("k"));
        assert!(decode::<Value>(&forged, &decoding, &validation(Algorithm::ES256)).is_err(), "another key");
        let (signed, signature) = genuine.rsplit_once('.').unwrap();
        let middle = signature.len() / 2;
        let flipped = if &signature[middle..=middle] == "A" { "B" } else { "A" };
        let tampered = format!("{signed}.{}{flipped}{}", &signature[..middle], &signature[middle + 1..]);
        assert!(decode::<Value>(&tampered, &decoding, &validation(Algorithm::ES256)).is_err(), "tampered");

        let renamed = key.with_kid("k2");
        assert_eq!((renamed.kid(), renamed.public_pem()), ("k2", key.public_pem()));
    }

    #[test]
    fn token_claims_are_valid_now_for_the_lifetime() {
        let claims = claims(ISSUER, AUDIENCE, "u", Duration::from_secs(60));
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 60));
        assert!(iat.abs_diff(now()) <= 5);
        assert_eq!((&claims["iss"], &claims["aud"], &claims["sub"]), (&json!(ISSUER), &json!(AUDIENCE), &json!("u")));
    }

    #[test]
    fn token_segment_is_base64url_json() {
        assert_eq!(segment(&json!({"alg": "none"})), "eyJhbGciOiJub25lIn0");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}

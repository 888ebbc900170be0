//! Publisher keys and manifest signatures.
//!
//! A publisher signs `"shoal/manifest/v1\0" || content id` with Ed25519
//! (the prefix keeps these signatures from being valid for anything else).
//! Receivers accept a manifest only when the signing key is in their
//! [`TrustedKeys`] and the manifest names that key as its publisher.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use bytes::Bytes;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;

use crate::content_id::ContentId;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::pb;

const SIGNING_CONTEXT: &[u8] = b"shoal/manifest/v1\0";
const PUBLIC_PREFIX: &str = "ed25519:";

/// Short, stable name of a public key: the first 8 bytes of its BLAKE3
/// hash in hex. A lookup hint only; verification always uses the full key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Problems with key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("public key {input:?} is not of the form \"ed25519:<64 hex digits>\"")]
    BadPublicKey { input: String },
    #[error("secret key is not a PKCS#8 PEM Ed25519 key: {0}")]
    BadSecretKey(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// A publisher's Ed25519 verifying key, written `ed25519:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn key_id(&self) -> KeyId {
        KeyId(hex::encode(
            &blake3::hash(self.0.as_bytes()).as_bytes()[..8],
        ))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Reads a file holding one `ed25519:<hex>` line.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| KeyError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        text.trim().parse()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadPublicKey {
            input: s.to_owned(),
        };
        let hex_part = s.strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut raw).map_err(|_| bad())?;
        VerifyingKey::from_bytes(&raw).map(Self).map_err(|_| bad())
    }
}

/// A publisher's secret signing key. Stored as PKCS#8 PEM, so standard
/// tools (openssl) can read it too.
pub struct PublisherKey(SigningKey);

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherKey({})", self.public().key_id())
    }
}

impl PublisherKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| KeyError::BadSecretKey(e.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| KeyError::BadSecretKey(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| KeyError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        Self::from_pem(&text)
    }

    fn sign_content_id(&self, id: &ContentId) -> Signature {
        self.0.sign(&signing_message(id))
    }
}

fn signing_message(id: &ContentId) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + 32);
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(id.as_bytes());
    msg
}

/// The publisher keys a receiver accepts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(BTreeMap<KeyId, PublicKey>);

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: PublicKey) {
        self.0.insert(key.key_id(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, id: &str) -> Option<&PublicKey> {
        self.0.get(&KeyId(id.to_owned()))
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        let mut t = Self::new();
        for k in iter {
            t.insert(k);
        }
        t
    }
}

/// Why a signed manifest was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest is not signed")]
    MissingSignature,
    #[error("signature is {len} bytes; Ed25519 signatures are 64")]
    MalformedSignature { len: usize },
    #[error(
        "signed by key {key_id}, which is not a trusted publisher here; add its public key to the trusted publishers to accept it"
    )]
    UntrustedKey { key_id: String },
    #[error("signature is by key {signer} but the manifest names publisher {publisher}")]
    KeyMismatch { signer: String, publisher: String },
    #[error(
        "signature by key {key_id} does not verify: the manifest was altered or signed with another key"
    )]
    BadSignature { key_id: String },
}

/// A manifest's canonical bytes with the publisher's signature: the file
/// `shoal pkg create` writes and peers exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    manifest_bytes: Bytes,
    key_id: String,
    signature: Bytes,
}

/// A signed manifest whose signature verified against trusted keys.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub content_id: ContentId,
    pub signed: SignedManifest,
}

impl SignedManifest {
    /// Signs a manifest. Its `publisher_key_id` must name `key`.
    pub fn sign(manifest: &Manifest, key: &PublisherKey) -> Result<Self, VerifyError> {
        let key_id = key.public().key_id();
        if manifest.publisher_key_id != key_id.as_str() {
            return Err(VerifyError::KeyMismatch {
                signer: key_id.0,
                publisher: manifest.publisher_key_id.clone(),
            });
        }
        let manifest_bytes = manifest.encode()?;
        let id = ContentId::of_manifest_bytes(&manifest_bytes);
        let sig = key.sign_content_id(&id);
        Ok(Self {
            manifest_bytes,
            key_id: key_id.0,
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        })
    }

    /// Parses the envelope only; [`SignedManifest::verify`] checks the rest.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES + 1024 {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let pb = pb::SignedManifest::decode(bytes).map_err(ManifestError::Decode)?;
        Ok(Self::from(pb))
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    pub fn to_pb(&self) -> pb::SignedManifest {
        pb::SignedManifest {
            manifest: self.manifest_bytes.clone(),
            signature: (!self.signature.is_empty() || !self.key_id.is_empty()).then(|| {
                pb::Signature {
                    key_id: self.key_id.clone(),
                    signature: self.signature.clone(),
                }
            }),
        }
    }

    pub fn content_id(&self) -> ContentId {
        ContentId::of_manifest_bytes(&self.manifest_bytes)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn manifest_bytes(&self) -> &Bytes {
        &self.manifest_bytes
    }

    /// Decodes and validates the manifest without checking the signature:
    /// for inspection only, never for installing.
    pub fn manifest_unverified(&self) -> Result<Manifest, ManifestError> {
        Manifest::decode(&self.manifest_bytes)
    }

    /// Checks everything: the manifest is canonical and valid, the signer
    /// is trusted, the manifest names the signer, and the signature holds.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<VerifiedManifest, VerifyError> {
        if self.signature.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        let sig_bytes: [u8; 64] =
            self.signature
                .as_ref()
                .try_into()
                .map_err(|_| VerifyError::MalformedSignature {
                    len: self.signature.len(),
                })?;
        let manifest = Manifest::decode(&self.manifest_bytes)?;
        let key = trusted
            .get(&self.key_id)
            .ok_or_else(|| VerifyError::UntrustedKey {
                key_id: self.key_id.clone(),
            })?;
        if manifest.publisher_key_id != self.key_id {
            return Err(VerifyError::KeyMismatch {
                signer: self.key_id.clone(),
                publisher: manifest.publisher_key_id.clone(),
            });
        }
        let content_id = self.content_id();
        key.0
            .verify_strict(
                &signing_message(&content_id),
                &Signature::from_bytes(&sig_bytes),
            )
            .map_err(|_| VerifyError::BadSignature {
                key_id: self.key_id.clone(),
            })?;
        Ok(VerifiedManifest {
            manifest,
            content_id,
            signed: self.clone(),
        })
    }
}

impl From<pb::SignedManifest> for SignedManifest {
    fn from(pb: pb::SignedManifest) -> Self {
        let (key_id, signature) = pb
            .signature
            .map(|s| (s.key_id, s.signature))
            .unwrap_or_default();
        Self {
            manifest_bytes: pb.manifest,
            key_id,
            signature,
        }
    }
}

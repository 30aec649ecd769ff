//! Personal data protection: per-lead data keys, wrapped by a key-encryption
//! key (KEK), and a keyed hash of emails for matching without the address.
//!
//! Each personal field is sealed with XChaCha20-Poly1305 under the lead's data
//! key, with the lead id and field name as associated data, so a sealed value
//! cannot be moved to another lead or field. Deleting a lead's wrapped key
//! (erasure) leaves its sealed fields in the log unreadable forever.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use leadger_domain::{Email, LeadId};
use sha2::Sha256;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("read key-encryption key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("create key-encryption key file {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("key-encryption key file {path} must hold 64 hex characters (32 bytes)")]
    Malformed { path: String },
    #[error("data key of lead {0} does not unwrap under this key-encryption key")]
    Unwrap(LeadId),
    #[error("sealed {field} of lead {lead} does not open: {why}")]
    Open { lead: LeadId, field: &'static str, why: &'static str },
}

/// The key-encryption key and the email index key derived from it.
pub struct Vault {
    kek: XChaCha20Poly1305,
    email_index_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(..)")
    }
}

/// How [`Vault::open`] treats a missing KEK file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKek {
    Create,
    Fail,
}

impl Vault {
    pub fn from_key(kek: [u8; 32]) -> Self {
        let kek = Zeroizing::new(kek);
        let mut index_mac = <Hmac<Sha256> as Mac>::new_from_slice(kek.as_slice()).expect("hmac takes any key length");
        index_mac.update(b"leadger email index v1");
        let email_index_key = Zeroizing::new(<[u8; 32]>::from(index_mac.finalize().into_bytes()));
        Self { kek: XChaCha20Poly1305::new(Key::from_slice(kek.as_slice())), email_index_key }
    }

    /// Reads the KEK file (64 hex characters), or creates one with a fresh
    /// random key (mode 0600). Returns whether it was created.
    pub fn open(path: &Path, missing: MissingKek) -> Result<(Self, bool), VaultError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut key = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), key.as_mut_slice())
                    .map_err(|_| VaultError::Malformed { path: shown })?;
                Ok((Self::from_key(*key), false))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && missing == MissingKek::Create => {
                let key = Zeroizing::new(<[u8; 32]>::from(XChaCha20Poly1305::generate_key(&mut OsRng)));
                write_new_secret_file(path, hex::encode(key.as_slice()).as_bytes())
                    .map_err(|source| VaultError::Create { path: shown, source })?;
                Ok((Self::from_key(*key), true))
            }
            Err(source) => Err(VaultError::Read { path: shown, source }),
        }
    }

    /// A fresh data key for a new lead, and its wrapped form for storage.
    pub fn new_data_key(&self, lead: LeadId) -> (DataKey, String) {
        let key = Zeroizing::new(<[u8; 32]>::from(XChaCha20Poly1305::generate_key(&mut OsRng)));
        let wrapped = seal_with(&self.kek, lead.as_uuid().as_bytes(), key.as_slice());
        (DataKey::from_bytes(lead, &key), wrapped)
    }

    pub fn unwrap_key(&self, lead: LeadId, wrapped: &str) -> Result<DataKey, VaultError> {
        let key = open_with(&self.kek, lead.as_uuid().as_bytes(), wrapped).ok_or(VaultError::Unwrap(lead))?;
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(key.as_slice().try_into().map_err(|_| VaultError::Unwrap(lead))?);
        Ok(DataKey::from_bytes(lead, &key))
    }

    /// The keyed hash (hex HMAC-SHA256) of the normalized email: equal for the
    /// same person, useless without the KEK.
    pub fn email_index(&self, email: &Email) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.email_index_key.as_slice()).expect("any key length");
        mac.update(email.normalized().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

fn write_new_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// A lead's data key, bound to the lead.
#[derive(Clone)]
pub struct DataKey {
    lead: LeadId,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.lead)
    }
}

impl DataKey {
    fn from_bytes(lead: LeadId, key: &[u8; 32]) -> Self {
        Self { lead, cipher: XChaCha20Poly1305::new(Key::from_slice(key)) }
    }

    /// Seals one personal field: base64 of nonce and ciphertext.
    pub fn seal(&self, field: &'static str, plaintext: &str) -> String {
        seal_with(&self.cipher, &self.associated_data(field), plaintext.as_bytes())
    }

    pub fn open(&self, field: &'static str, sealed: &str) -> Result<String, VaultError> {
        let plaintext = open_with(&self.cipher, &self.associated_data(field), sealed).ok_or(VaultError::Open {
            lead: self.lead,
            field,
            why: "authentication failed",
        })?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| VaultError::Open { lead: self.lead, field, why: "not UTF-8" })
    }

    fn associated_data(&self, field: &str) -> Vec<u8> {
        let mut aad = self.lead.as_uuid().as_bytes().to_vec();
        aad.extend_from_slice(field.as_bytes());
        aad
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> String {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext =
        cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).expect("encryption of in-memory data cannot fail");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ciphertext);
    BASE64.encode(sealed)
}

fn open_with(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = BASE64.decode(sealed).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad }).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(n: u128) -> LeadId {
        LeadId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn sealed_fields_open_only_for_their_lead_and_field() {
        let vault = Vault::from_key([7; 32]);
        let (key, wrapped) = vault.new_data_key(lead(1));
        let sealed = key.seal("email", "ada@example.com");
        assert!(!sealed.contains("ada"));
        let reopened = vault.unwrap_key(lead(1), &wrapped).expect("unwraps");
        assert_eq!(reopened.open("email", &sealed).expect("opens"), "ada@example.com");
        assert!(reopened.open("name", &sealed).is_err(), "bound to the field");
        assert!(vault.unwrap_key(lead(2), &wrapped).is_err(), "bound to the lead");
        assert!(Vault::from_key([8; 32]).unwrap_key(lead(1), &wrapped).is_err(), "bound to the KEK");
    }

    #[test]
    fn email_index_matches_case_insensitively_and_depends_on_the_kek() {
        let vault = Vault::from_key([7; 32]);
        let a = Email::parse("email", "Ada@Example.com").expect("valid");
        let b = Email::parse("email", "ada@example.COM").expect("valid");
        assert_eq!(vault.email_index(&a), vault.email_index(&b));
        assert_ne!(vault.email_index(&a), Vault::from_key([8; 32]).email_index(&a));
        assert!(!vault.email_index(&a).contains("ada"));
    }

    #[test]
    fn kek_file_is_created_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("leadger-vault-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("leadger.kek");
        assert!(matches!(Vault::open(&path, MissingKek::Fail), Err(VaultError::Read { .. })));
        let (first, created) = Vault::open(&path, MissingKek::Create).expect("created");
        assert!(created);
        let (second, created) = Vault::open(&path, MissingKek::Create).expect("read back");
        assert!(!created);
        let email = Email::parse("email", "a@b.co").expect("valid");
        assert_eq!(first.email_index(&email), second.email_index(&email));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not hex").expect("overwrite");
        assert!(matches!(Vault::open(&path, MissingKek::Create), Err(VaultError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}

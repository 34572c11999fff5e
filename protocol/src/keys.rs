//! Key files: generate, store with mode 0600, load (refusing a secret key others can read) and
//! show the public key.
//!
//! The file holds one line, `ed25519-seed:` followed by the 32-byte secret seed in lowercase
//! hex. The public key is derived from it and shown in base64.

use crate::signing::{PublicKey, Signable, SignedEnvelope};
use ed25519_dalek::{Signer, SigningKey};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

const PREFIX: &str = "ed25519-seed:";

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists and would be overwritten.
    #[error(
        "{path} already exists; refusing to overwrite a key (move it away first if you really mean to replace it)"
    )]
    AlreadyExists {
        /// The key file.
        path: PathBuf,
    },
    /// The file is missing.
    #[error("no key file at {path}; create one with `keygen`")]
    Missing {
        /// The key file.
        path: PathBuf,
    },
    /// Other users may read the secret key.
    #[error(
        "{path} is readable by other users (mode {mode:o}); a secret key must be private: run `chmod 600 {path}`"
    )]
    WorldReadable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key file.
    #[error("{path} is not a gridmesh key file: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("cannot access key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// An ed25519 key pair that signs canonical messages.
#[derive(Clone)]
pub struct SigningKeyPair {
    key: SigningKey,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeyPair(public: {})", self.public_key())
    }
}

impl SigningKeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        SigningKeyPair {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// The key with this 32-byte secret seed (RFC 8032's "secret key").
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKeyPair {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// The underlying ed25519-dalek key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs arbitrary bytes (canonical messages go through
    /// [`SignedEnvelope::sign`]).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes the key to a new file readable only by its owner (mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
        writeln!(file, "{PREFIX}{}", hex::encode(self.seed())).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Generates a key and saves it to a new file at `path`.
    pub fn generate_file(path: &Path) -> Result<Self, KeyFileError> {
        let key = Self::generate();
        key.save(path)?;
        Ok(key)
    }

    /// Loads a key file, refusing one that users other than its owner may read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyFileError::Missing {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let metadata = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::WorldReadable {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = |reason: &str| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let hex_seed = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| malformed("it does not start with `ed25519-seed:`"))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_seed, &mut seed)
            .map_err(|_| malformed("the seed is not 64 hex characters"))?;
        Ok(Self::from_seed(seed))
    }
}

/// Signing with a key pair. It lives here, beside the key, so that `signing` (envelopes and
/// verification) needs nothing from `keys`: the dependency goes one way only.
impl SignedEnvelope {
    /// Encodes `message` canonically and signs the bytes.
    pub fn sign<T: Signable>(message: &T, key: &SigningKeyPair) -> Self {
        Self::sign_bytes(message.encode(), key)
    }

    /// Signs already-encoded canonical bytes.
    pub fn sign_bytes(payload: Vec<u8>, key: &SigningKeyPair) -> Self {
        let signature = key.sign_raw(&payload);
        SignedEnvelope {
            payload,
            signature,
            public_key: key.public_key(),
        }
    }
}

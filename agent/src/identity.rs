//! This device's long-term identity: a P-256 key made on first start and
//! kept in the data directory. The device id is the SHA-256 of the public
//! key, so it is stable for as long as the key file is kept.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use blazedb_proto::DeviceId;
use p256::SecretKey;
use sha2::{Digest, Sha256};

/// The device id a public key stands for: the SHA-256 of its SEC1 form.
pub fn device_id_of(key: &p256::PublicKey) -> DeviceId {
    DeviceId(Sha256::digest(key.to_sec1_bytes()).into())
}

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "device.key";

/// The device's key pair and the id derived from it.
#[derive(Clone)]
pub struct Identity {
    secret: SecretKey,
    id: DeviceId,
    new: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("id", &self.id).finish()
    }
}

/// The identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("device key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file holds something else.
    #[error("device key {0} is not a P-256 secret key; move it away to make a new identity")]
    Malformed(String),
    /// The OS gave no randomness.
    #[error("no randomness from the OS to make a device key: {0}")]
    Random(String),
}

impl Identity {
    /// Loads the identity from `dir`, making a new one on first start.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let secret = SecretKey::from_slice(&bytes)
                    .map_err(|_| IdentityError::Malformed(path.display().to_string()))?;
                // Keep the key private even if someone loosened the mode.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io)?;
                Ok(Identity::from_secret(secret, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = Identity::generate()?.secret;
                crate::private_file::write(&path, &secret.to_bytes()).map_err(io)?;
                Ok(Identity::from_secret(secret, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Makes a new identity that lives only in memory, as the hub
    /// benchmark's simulated devices use.
    pub fn generate() -> Result<Identity, IdentityError> {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
            // Almost every 32-byte string is a valid scalar.
            if let Ok(k) = SecretKey::from_slice(&bytes) {
                return Ok(Identity::from_secret(k, true));
            }
        }
    }

    fn from_secret(secret: SecretKey, new: bool) -> Identity {
        let id = device_id_of(&secret.public_key());
        Identity { secret, id, new }
    }

    /// Whether the identity was made by this start: nothing was written
    /// under it before.
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        self.id
    }

    /// The secret key, for the mesh's certificates.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.device_id(), b.device_id());
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_malformed_key_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(KEY_FILE), b"nope").expect("write");
        let err = Identity::load_or_create(dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("not a P-256 secret key"), "{err}");
    }
}

//! Key files: 0600 on creation, refused when others can read them, clear errors.

use gridmesh_protocol::keys::{KeyFileError, SigningKeyPair};
use std::os::unix::fs::PermissionsExt;

#[test]
fn generate_store_load_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.key");
    let key = SigningKeyPair::generate_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = SigningKeyPair::load(&path).unwrap();
    assert_eq!(loaded.public_key(), key.public_key());
    assert_eq!(key.public_key().to_string().len(), 44);
    assert!(matches!(
        SigningKeyPair::generate_file(&path),
        Err(KeyFileError::AlreadyExists { .. })
    ));
}

#[test]
fn refuses_a_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.key");
    SigningKeyPair::generate_file(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SigningKeyPair::load(&path).unwrap_err();
    assert!(matches!(
        err,
        KeyFileError::WorldReadable { mode: 0o644, .. }
    ));
    let message = err.to_string();
    assert!(message.contains("readable by other users"), "{message}");
    assert!(
        message.contains(&format!("chmod 600 {}", path.display())),
        "{message}"
    );
}

#[test]
fn missing_and_malformed_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.key");
    let err = SigningKeyPair::load(&missing).unwrap_err();
    assert!(err.to_string().contains("keygen"), "{err}");
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "hello").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        SigningKeyPair::load(&junk),
        Err(KeyFileError::Malformed { .. })
    ));
}

//! Files written whole or not at all: a temporary file beside the destination, synced, then
//! renamed over it (keeping the permissions of the file it replaces), so a reader, or a crash,
//! sees the old file or the new one, never half of one.

use std::io::{self, Write};
use std::path::Path;

pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write(dest, bytes, None)
}

/// Like `write_atomic`, readable and writable by the owner only (0600), whatever the file it
/// replaces allowed: for secrets.
pub(crate) fn write_private(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write(dest, bytes, Some(std::fs::Permissions::from_mode(0o600)))
}

fn write(dest: &Path, bytes: &[u8], mode: Option<std::fs::Permissions>) -> io::Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".npg-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    match (mode, std::fs::metadata(dest)) {
        (Some(mode), _) => tmp.as_file().set_permissions(mode)?,
        (None, Ok(old)) => tmp.as_file().set_permissions(old.permissions())?,
        (None, Err(_)) => {}
    }
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_keeping_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn private_files_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

//! Where a Unix listener's socket file goes, and what may be done to a file
//! already there.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use masse_core::{BindContext, Error, Result};

/// The longest socket path the kernel takes: `sun_path` is 108 bytes on
/// Linux, with a terminating NUL (104 on the BSDs and macOS).
#[cfg(target_os = "linux")]
pub(crate) const MAX_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
pub(crate) const MAX_PATH: usize = 103;

/// The default directory: `$XDG_RUNTIME_DIR/masse` if that variable names a
/// directory, else `<temp dir>/masse-<uid>`. Created (mode 0700) if missing;
/// one another user owns, or others may write to, is refused.
pub(crate) fn default_dir(uid: u32) -> Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(runtime) if runtime.is_absolute() && runtime.is_dir() => runtime.join("masse"),
        _ => std::env::temp_dir().join(format!("masse-{uid}")),
    };
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode 0700) or checks that the existing one is `uid`'s and
/// writable by nobody else.
pub(crate) fn private_dir(dir: &Path, uid: u32) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io_context(e, format!("create {}", dir.display()))),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io_context(e, format!("stat {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a directory; cannot put unix sockets there",
            dir.display()
        )));
    }
    if meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::Config(format!(
            "{} belongs to another user or others may write to it; refusing to put unix sockets \
             there (remove it, or choose a path with UnixInterface::at)",
            dir.display()
        )));
    }
    Ok(())
}

/// `<namespace>.<name>.<16 hex of the instance>.sock` in `dir`, or
/// `<32 hex>.sock` (a hash of the same) if that is too long for a socket
/// address.
pub(crate) fn default_path(dir: &Path, ctx: &BindContext) -> PathBuf {
    let instance = ctx.instance.to_string();
    let short = &instance[..instance.len().min(16)];
    let named = dir.join(format!("{}.{}.{short}.sock", ctx.namespace, ctx.name));
    if named.as_os_str().len() <= MAX_PATH {
        return named;
    }
    let mut digest = String::with_capacity(32);
    for salt in [0_u8, 1] {
        let mut h = DefaultHasher::new();
        (salt, ctx.namespace.as_str(), ctx.name.as_str(), &instance).hash(&mut h);
        digest.push_str(&format!("{:016x}", h.finish()));
    }
    dir.join(format!("{digest}.sock"))
}

/// Removes the sockets that earlier instances of this node left in `dir`
/// under the default name (`<namespace>.<name>.<16 hex>.sock`, not `own`)
/// and that nobody accepts on: a node killed before it could remove its own
/// (SIGKILL, a crash, a power cut) leaves one per run, and its next run,
/// with a new instance, binds another path. A live socket (another instance
/// still running), a file that is not a socket and hashed names stay.
/// Returns how many went; a directory it cannot read is no error (the bind
/// goes on).
pub(crate) async fn sweep_earlier(dir: &Path, ctx: &BindContext, own: &Path) -> usize {
    let prefix = format!("{}.{}.", ctx.namespace, ctx.name);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot list the socket directory; no sweep");
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(instance) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".sock"))
        else {
            continue;
        };
        let path = entry.path();
        if instance.len() != 16 || !instance.bytes().all(|b| b.is_ascii_hexdigit()) || path == own {
            continue;
        }
        if !matches!(inspect(&path).await, Ok(Existing::Stale)) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove a stale unix socket");
            }
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed unix sockets that earlier instances of this node left behind");
    }
    removed
}

/// What is at a socket path before binding it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Nothing: bind.
    Nothing,
    /// A socket file nobody accepts on (its process died): remove, then bind.
    Stale,
}

/// Looks at `path` before binding: nothing, a stale socket (removable), or
/// an error for a live socket (`AddrInUse`) and for anything that is not a
/// socket (never removed).
pub(crate) async fn inspect(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(Error::io_context(e, format!("stat {}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::io_context(
            std::io::Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; not removing it",
            ),
            format!("bind unix://{}", path.display()),
        ));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(Error::io_context(
            std::io::Error::new(
                ErrorKind::AddrInUse,
                "another process accepts on this socket",
            ),
            format!("bind unix://{}", path.display()),
        )),
        // A full backlog: someone is there.
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(Error::io_context(
            std::io::Error::new(
                ErrorKind::AddrInUse,
                "another process listens on this socket",
            ),
            format!("bind unix://{}", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Existing::Stale),
        Err(e) => Err(Error::io_context(e, format!("probe {}", path.display()))),
    }
}

/// The device and inode of the file at `path`, if any.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use masse_core::InstanceId;

    fn ctx(ns: &str, name: &str) -> BindContext {
        BindContext::new(
            ns.parse().unwrap(),
            name.parse().unwrap(),
            InstanceId::random(),
        )
    }

    #[test]
    fn default_names_carry_namespace_name_and_instance() {
        let c = ctx("prod", "billing-7");
        let p = default_path(Path::new("/run/user/1000/masse"), &c);
        let file = p.file_name().unwrap().to_str().unwrap();
        let instance = c.instance.to_string();
        assert_eq!(file, format!("prod.billing-7.{}.sock", &instance[..16]));
    }

    #[test]
    fn names_too_long_for_a_socket_address_are_hashed() {
        let long = "n".repeat(100);
        let c = ctx("prod", &long);
        let dir = Path::new("/run/user/1000/masse");
        let p = default_path(dir, &c);
        assert!(p.as_os_str().len() <= MAX_PATH, "{}", p.display());
        assert_eq!(p.parent(), Some(dir));
        let file = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(file.len(), 32 + ".sock".len(), "{file}");
        // Same node, same path; another instance, another path.
        assert_eq!(default_path(dir, &c), p);
        assert_ne!(default_path(dir, &ctx("prod", &long)), p);
    }

    #[test]
    fn a_shared_or_foreign_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let uid = std::fs::metadata(tmp.path()).unwrap().uid();
        private_dir(&dir, uid).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        private_dir(&dir, uid).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(private_dir(&dir, uid), Err(Error::Config(_))));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(private_dir(&dir, uid + 1), Err(Error::Config(_))));
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(private_dir(&file, uid), Err(Error::Config(_))));
    }
}

//! Reading file-system metadata into tree nodes, and applying it back on
//! restore.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use crate::tree::{Node, NodeKind, Timestamp, Xattr};

/// Caches uid and gid to name lookups, which otherwise cost a passwd/group
/// file parse per entry.
#[derive(Default)]
pub struct OwnerNames {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

impl OwnerNames {
    pub fn user(&self, uid: u32) -> Option<String> {
        let mut cache = self.users.lock().ok()?;
        cache
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
            })
            .clone()
    }

    pub fn group(&self, gid: u32) -> Option<String> {
        let mut cache = self.groups.lock().ok()?;
        cache
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
            })
            .clone()
    }
}

pub fn kind_of(meta: &Metadata) -> NodeKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

/// The file's modification time.
pub fn mtime(meta: &Metadata) -> Timestamp {
    Timestamp { sec: meta.mtime(), nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32 }
}

/// The file's status change time.
pub fn ctime(meta: &Metadata) -> Timestamp {
    Timestamp { sec: meta.ctime(), nsec: meta.ctime_nsec().clamp(0, 999_999_999) as u32 }
}

/// A node describing `meta`; content, subtree and target are left empty.
pub fn node_from_metadata(name: &OsStr, meta: &Metadata, owners: &OwnerNames) -> Node {
    let kind = kind_of(meta);
    let mut node = Node::new(name.as_bytes().to_vec(), kind);
    node.mode = meta.mode() & 0o7777;
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.user = owners.user(meta.uid());
    node.group = owners.group(meta.gid());
    node.mtime = mtime(meta);
    node.ctime = ctime(meta);
    node.size = if kind == NodeKind::File { meta.len() } else { 0 };
    node.inode = meta.ino();
    node.device = meta.dev();
    node.links = meta.nlink();
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        node.rdev = meta.rdev();
    }
    node
}

/// Reads the extended attributes of an entry (of a symlink itself, not its
/// target). A file system without extended attributes gives none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        // An attribute removed between list and get is simply gone.
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr { name: name.as_bytes().to_vec(), value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(nix::libc::ENOTSUP)
}

/// True when this process may set any owner (it runs as root).
pub fn can_chown() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Applies ownership, permissions and times to a restored entry. Ownership
/// first, since changing the owner clears setuid and setgid bits.
pub fn apply(path: &Path, node: &Node, chown: bool) -> std::io::Result<()> {
    if chown {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(nix::unistd::Uid::from_raw(node.uid)),
            Some(nix::unistd::Gid::from_raw(node.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
    }
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        match xattr::set(path, name, &x.value) {
            Ok(()) => {}
            // Restoring to a file system without them loses nothing else.
            Err(e) if unsupported(&e) => break,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("extended attribute {}: {e}", String::from_utf8_lossy(&x.name)),
                ));
            }
        }
    }
    if node.kind != NodeKind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime.sec, node.mtime.nsec);
    filetime::set_symlink_file_times(path, mtime, mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_applies_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let owners = OwnerNames::default();
        let mut node = node_from_metadata(OsStr::new("f"), &meta, &owners);
        assert_eq!(node.kind, NodeKind::File);
        assert_eq!(node.size, 3);
        node.mode = 0o640;
        node.xattrs = vec![Xattr { name: b"user.coffer.test".to_vec(), value: b"\x00\xffvalue".to_vec() }];
        node.mtime = Timestamp { sec: 1_000_000_000, nsec: 123_456_789 };
        apply(&p, &node, false).unwrap();
        let after = node_from_metadata(OsStr::new("f"), &std::fs::symlink_metadata(&p).unwrap(), &owners);
        assert_eq!(after.mode, 0o640);
        // ext4, xfs, btrfs and tmpfs (Linux 6.6+) all keep user attributes.
        assert_eq!(read_xattrs(&p).unwrap(), node.xattrs);
        assert_eq!(after.mtime, node.mtime);
    }
}

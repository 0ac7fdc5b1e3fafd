//! Trees: one object per directory, listing its entries sorted by name.
//!
//! A tree holds everything needed to restore its entries (names as raw bytes,
//! kind, permissions, ownership, times with nanoseconds, sizes, symlink
//! targets, the chunk list of each file, the subtree of each directory) and
//! what the next backup needs to tell whether a file changed (inode, device,
//! ctime).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const TREE_VERSION: u32 = 1;

/// What kind of file system object a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One chunk of a file: its id and its plaintext length. Keeping the length
/// lets restore and mount find the chunk that holds any offset without
/// fetching the chunks before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub Id, pub u32);

/// An extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name as the file system gave it: any bytes but `/` and NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// For a file, the bytes stored (the sum of its chunk lengths).
    pub size: u64,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

impl Node {
    /// A node with the given name and kind and everything else zero.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            size: 0,
            inode: 0,
            device: 0,
            links: 0,
            rdev: 0,
            target: None,
            xattrs: Vec::new(),
            content: Vec::new(),
            subtree: None,
        }
    }

    /// The name for display (lossy for names that are not UTF-8).
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// Checks that a name is safe to create inside a directory: not empty, not
/// `.` or `..`, and without `/` or NUL. Restore relies on this to never write
/// outside its target, whatever a tree says.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// A directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub version: u32,
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn new(mut nodes: Vec<Node>) -> Tree {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Tree { version: TREE_VERSION, nodes }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Parses and validates a tree's plaintext. `name` is used in errors.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Tree> {
        let tree: Tree =
            rmp_serde::from_slice(bytes).map_err(|e| Error::corrupt("tree", name, format!("does not parse: {e}")))?;
        if tree.version != TREE_VERSION {
            return Err(Error::corrupt("tree", name, format!("unknown tree version {}", tree.version)));
        }
        for (i, node) in tree.nodes.iter().enumerate() {
            if !valid_name(&node.name) {
                return Err(Error::corrupt("tree", name, format!("invalid entry name {:?}", node.name_lossy())));
            }
            if i > 0 && tree.nodes[i - 1].name >= node.name {
                return Err(Error::corrupt("tree", name, "entries are not sorted and unique"));
            }
            let ok = match node.kind {
                NodeKind::File => node.subtree.is_none() && node.target.is_none(),
                NodeKind::Dir => node.subtree.is_some() && node.content.is_empty(),
                NodeKind::Symlink => node.target.is_some() && node.content.is_empty(),
                _ => node.content.is_empty() && node.subtree.is_none(),
            };
            if !ok {
                return Err(Error::corrupt(
                    "tree",
                    name,
                    format!("entry {:?} has fields of another kind", node.name_lossy()),
                ));
            }
        }
        Ok(tree)
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Tree {
        let mut f = Node::new(b"photo\xff.jpg".to_vec(), NodeKind::File);
        f.content = vec![ChunkRef(Id([1; 32]), 100), ChunkRef(Id([2; 32]), 50)];
        f.size = 150;
        f.mtime = Timestamp { sec: 1_700_000_000, nsec: 123_456_789 };
        let mut d = Node::new(b"2024".to_vec(), NodeKind::Dir);
        d.subtree = Some(Id([3; 32]));
        let mut l = Node::new(b"link".to_vec(), NodeKind::Symlink);
        l.target = Some(b"../x".to_vec());
        Tree::new(vec![f, d, l])
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(t.nodes[0].name, b"2024");
        let back = Tree::from_bytes("t", &t.to_bytes()).unwrap();
        assert_eq!(back, t);
        assert!(back.find(b"link").is_some());
        assert!(back.find(b"nope").is_none());
    }

    #[test]
    fn rejects_unsafe_or_unsorted() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0"] {
            let mut t = sample();
            t.nodes[0].name = bad.to_vec();
            assert!(Tree::from_bytes("t", &rmp_serde::to_vec_named(&t).unwrap()).is_err(), "{bad:?}");
        }
        let mut t = sample();
        t.nodes.swap(0, 1);
        assert!(Tree::from_bytes("t", &rmp_serde::to_vec_named(&t).unwrap()).is_err());
        let mut t = sample();
        t.nodes[0].subtree = None;
        assert!(Tree::from_bytes("t", &rmp_serde::to_vec_named(&t).unwrap()).is_err());
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let _ = Tree::from_bytes("t", &data);
        }

        #[test]
        fn mutated_trees_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let mut bytes = sample().to_bytes();
            let i = pos % bytes.len();
            bytes[i] = val;
            let _ = Tree::from_bytes("t", &bytes);
        }
    }
}

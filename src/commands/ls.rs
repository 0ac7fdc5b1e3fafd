use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use coffer_core::tree::{Node, NodeKind};
use coffer_core::walk;
use serde::Serialize;

use crate::cli::{GlobalArgs, LsArgs};
use crate::exit;
use crate::output::{mode_string, node_time};

#[derive(Serialize)]
struct JsonNode<'a> {
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    user: &'a Option<String>,
    group: &'a Option<String>,
    size: u64,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn print_node(out: &mut impl Write, g: &GlobalArgs, long: bool, path: &Path, node: &Node) -> Result<()> {
    let shown = Path::new("/").join(path);
    if g.json {
        let j = JsonNode {
            path: shown.to_string_lossy().into_owned(),
            name: node.name_lossy().into_owned(),
            kind: node.kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            user: &node.user,
            group: &node.group,
            size: node.size,
            mtime: jiff::Timestamp::new(node.mtime.sec, node.mtime.nsec as i32)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            target: node.target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
        };
        writeln!(out, "{}", serde_json::to_string(&j)?)?;
    } else if long {
        let owner = node.user.clone().unwrap_or_else(|| node.uid.to_string());
        let group = node.group.clone().unwrap_or_else(|| node.gid.to_string());
        let target = node.target.as_ref().map(|t| format!(" -> {}", String::from_utf8_lossy(t))).unwrap_or_default();
        writeln!(
            out,
            "{} {:>8} {:>8} {:>12} {} {}{target}",
            mode_string(node),
            owner,
            group,
            node.size,
            node_time(&node.mtime),
            shown.display()
        )?;
    } else {
        writeln!(out, "{}", shown.display())?;
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, a: &LsArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let base = a.path.clone().unwrap_or_else(|| PathBuf::from("/"));
    let rel: PathBuf = walk::snapshot_components(&base)?
        .iter()
        .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes_compat(c)))
        .collect();
    let start_tree = match walk::find(&repo, &snap.tree, &rel)? {
        None => Some(snap.tree),
        Some(node) => {
            print_node(&mut out, g, a.long, &rel, &node)?;
            if node.kind == NodeKind::Dir { node.subtree } else { None }
        }
    };
    if let Some(tree) = start_tree {
        walk::walk(&repo, &tree, &rel, &mut |path, node| {
            print_node(&mut out, g, a.long, path, node).map_err(|e| coffer_core::Error::InvalidInput(e.to_string()))?;
            Ok(true)
        })?;
    }
    out.flush()?;
    Ok(exit::OK)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

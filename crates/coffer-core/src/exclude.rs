//! What a backup leaves out.
//!
//! Patterns follow restic's conventions: a pattern without `/` matches an
//! entry's name at any depth; a pattern with `/` matches the absolute path (a
//! relative one matches at any depth); `*` stays within one path component
//! and `**` spans several. An excluded directory is not descended into.
//! Besides patterns, a directory can be left out because it is tagged (a
//! `CACHEDIR.TAG`, or a marker file the user names), and a file because it is
//! too large.

use std::io::Read;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// The signature that starts a valid `CACHEDIR.TAG` (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Patterns split by what they match against.
#[derive(Clone, Debug, Default)]
struct PatternSet {
    by_name: Option<GlobSet>,
    by_path: Option<GlobSet>,
}

impl PatternSet {
    fn new(patterns: &[String], case_insensitive: bool) -> Result<PatternSet> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        let (mut names, mut paths) = (0, 0);
        for raw in patterns {
            let pat = raw.trim_end_matches('/');
            if pat.is_empty() {
                continue;
            }
            let build = |p: &str| {
                GlobBuilder::new(p)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .case_insensitive(case_insensitive)
                    .build()
                    .map_err(|e| Error::InvalidInput(format!("bad exclude pattern {raw:?}: {e}")))
            };
            if !pat.contains('/') {
                by_name.add(build(pat)?);
                names += 1;
            } else if pat.starts_with('/') {
                by_path.add(build(pat)?);
                paths += 1;
            } else {
                by_path.add(build(&format!("**/{pat}"))?);
                paths += 1;
            }
        }
        let finish = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>> {
            if n == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|e| Error::InvalidInput(format!("bad exclude patterns: {e}")))
        };
        Ok(PatternSet { by_name: finish(by_name, names)?, by_path: finish(by_path, paths)? })
    }

    fn matches(&self, path: &Path) -> bool {
        let by_name = match (&self.by_name, path.file_name()) {
            (Some(set), Some(name)) => set.is_match(Path::new(name)),
            _ => false,
        };
        by_name || self.by_path.as_ref().is_some_and(|set| set.is_match(path))
    }

    fn is_empty(&self) -> bool {
        self.by_name.is_none() && self.by_path.is_none()
    }
}

/// A marker file whose presence excludes its directory (`NAME` or
/// `NAME:HEADER`, where the file must start with HEADER).
#[derive(Clone, Debug)]
struct Marker {
    name: String,
    header: Option<Vec<u8>>,
}

impl Marker {
    fn present_in(&self, dir: &Path) -> bool {
        let path = dir.join(&self.name);
        match &self.header {
            None => std::fs::symlink_metadata(&path).is_ok(),
            Some(header) => {
                let mut buf = vec![0u8; header.len()];
                std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut buf)).is_ok() && buf == *header
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Excludes {
    patterns: PatternSet,
    ipatterns: PatternSet,
    markers: Vec<Marker>,
    larger_than: Option<u64>,
}

impl Excludes {
    /// Case-sensitive patterns (`--exclude`).
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        Ok(Excludes { patterns: PatternSet::new(patterns, false)?, ..Excludes::default() })
    }

    /// Adds case-insensitive patterns (`--iexclude`).
    pub fn case_insensitive(mut self, patterns: &[String]) -> Result<Excludes> {
        self.ipatterns = PatternSet::new(patterns, true)?;
        Ok(self)
    }

    /// Leaves out directories that hold a valid `CACHEDIR.TAG` (`--exclude-caches`).
    pub fn caches(mut self) -> Excludes {
        self.markers.push(Marker { name: "CACHEDIR.TAG".into(), header: Some(CACHEDIR_SIGNATURE.to_vec()) });
        self
    }

    /// Leaves out directories that contain a file of this name
    /// (`--exclude-if-present NAME[:HEADER]`).
    pub fn if_present(mut self, spec: &str) -> Result<Excludes> {
        let (name, header) = match spec.split_once(':') {
            Some((n, h)) => (n, Some(h.as_bytes().to_vec())),
            None => (spec, None),
        };
        if name.is_empty() || name.contains('/') {
            return Err(Error::InvalidInput(format!("--exclude-if-present needs a file name, not {spec:?}")));
        }
        self.markers.push(Marker { name: name.to_string(), header });
        Ok(self)
    }

    /// Leaves out files larger than `bytes` (`--exclude-larger-than`).
    pub fn larger_than(mut self, bytes: u64) -> Excludes {
        self.larger_than = Some(bytes);
        self
    }

    /// Reads patterns from a file: one per line, `#` starts a comment line,
    /// blank lines are skipped.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.ipatterns.is_empty() && self.markers.is_empty() && self.larger_than.is_none()
    }

    /// Whether the entry at absolute path `path` is excluded by a pattern.
    pub fn is_excluded(&self, path: &Path) -> bool {
        self.patterns.matches(path) || self.ipatterns.matches(path)
    }

    /// Whether a directory is excluded by a marker file inside it.
    pub fn is_tagged_dir(&self, dir: &Path) -> bool {
        self.markers.iter().any(|m| m.present_in(dir))
    }

    /// Whether a file of this size is excluded.
    pub fn is_too_large(&self, size: u64) -> bool {
        self.larger_than.is_some_and(|limit| size > limit)
    }
}

/// Parses a size such as `500`, `64K`, `2.5M`, `1G` or `1T` (binary units,
/// as restic reads them; a trailing `B` or `iB` is allowed).
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::InvalidInput(format!("{text:?} is not a size (examples: 500K, 20M, 1.5G)"));
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * scale as f64;
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_style_patterns() {
        let ex = Excludes::new(&["*.tmp".into(), "/home/ana/cache".into(), "thumbs/*.jpg".into(), "**/.git".into()])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/home/ana/a.tmp")));
        assert!(ex.is_excluded(Path::new("/x/y/z.tmp")));
        assert!(!ex.is_excluded(Path::new("/x/y/z.tmp.keep")));
        assert!(ex.is_excluded(Path::new("/home/ana/cache")));
        assert!(!ex.is_excluded(Path::new("/other/home/ana/cache")));
        assert!(ex.is_excluded(Path::new("/p/thumbs/a.jpg")));
        assert!(!ex.is_excluded(Path::new("/p/thumbs/sub/a.jpg")), "* stays in one component");
        assert!(ex.is_excluded(Path::new("/src/proj/.git")));
        assert!(!ex.is_excluded(Path::new("/home/ana/photo.jpg")));
        assert!(!ex.is_excluded(Path::new("/home/ana/A.TMP")), "case-sensitive");
        assert!(Excludes::new(&[]).unwrap().is_empty());
        assert!(Excludes::new(&["[".into()]).is_err());
    }

    #[test]
    fn case_insensitive_patterns() {
        let ex = Excludes::new(&[]).unwrap().case_insensitive(&["*.tmp".into(), "/Home/*/CACHE".into()]).unwrap();
        assert!(ex.is_excluded(Path::new("/x/A.TMP")));
        assert!(ex.is_excluded(Path::new("/home/ana/cache")));
        assert!(!ex.is_excluded(Path::new("/x/a.jpg")));
    }

    #[test]
    fn markers_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let fake = dir.path().join("fake");
        let marked = dir.path().join("marked");
        for d in [&cache, &fake, &marked] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(cache.join("CACHEDIR.TAG"), [CACHEDIR_SIGNATURE, b"\n# a cache"].concat()).unwrap();
        std::fs::write(fake.join("CACHEDIR.TAG"), b"not a signature").unwrap();
        std::fs::write(marked.join(".nobackup"), b"").unwrap();
        let ex = Excludes::default().caches().if_present(".nobackup").unwrap().larger_than(100);
        assert!(ex.is_tagged_dir(&cache));
        assert!(!ex.is_tagged_dir(&fake), "a CACHEDIR.TAG without the signature does not count");
        assert!(ex.is_tagged_dir(&marked));
        assert!(!ex.is_tagged_dir(dir.path()));
        assert!(ex.is_too_large(101) && !ex.is_too_large(100));
        let headed = Excludes::default().if_present("CACHEDIR.TAG:Signature: 8a477f").unwrap();
        assert!(headed.is_tagged_dir(&cache) && !headed.is_tagged_dir(&fake));
        assert!(Excludes::default().if_present("a/b").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500").unwrap(), 500);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("2.5M").unwrap(), 2_621_440);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in ["", "M", "1X", "-1K", "one"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

//! Exclude patterns, with restic's conventions: a pattern without `/`
//! matches an entry's name at any depth; a pattern with `/` matches the
//! absolute path (a relative one matches at any depth); `*` stays within one
//! path component and `**` spans several. An excluded directory is not
//! descended into.

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct Excludes {
    by_name: Option<GlobSet>,
    by_path: Option<GlobSet>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
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
        Ok(Excludes { by_name: finish(by_name, names)?, by_path: finish(by_path, paths)? })
    }

    /// Reads patterns from a file: one per line, `#` starts a comment line,
    /// blank lines are skipped.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_none() && self.by_path.is_none()
    }

    /// Whether the entry at absolute path `path` is excluded.
    pub fn is_excluded(&self, path: &Path) -> bool {
        let by_name = match (&self.by_name, path.file_name()) {
            (Some(set), Some(name)) => set.is_match(Path::new(name)),
            _ => false,
        };
        by_name || self.by_path.as_ref().is_some_and(|set| set.is_match(path))
    }
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
        assert!(Excludes::new(&[]).unwrap().is_empty());
        assert!(Excludes::new(&["[".into()]).is_err());
    }
}

//! Writing object files past the page cache (`O_DIRECT`).
//!
//! A backup writes every new chunk once and does not read it back. Through
//! the page cache each byte is first copied into a freshly allocated page
//! and written back later: on the 2-core machine coffer is tuned on, that
//! copy cost about a second of CPU per GiB written, a sixth of a first
//! backup's CPU time, and it evicts the user's own files from memory. With
//! `O_DIRECT` the device reads the bytes straight from the buffer the object
//! was encrypted in.
//!
//! `O_DIRECT` wants the buffer, the file offset and the length aligned to the
//! device's logical block size. The encoder starts every chunk and tree at an
//! aligned address ([`crate::blob::OBJECT_ALIGN`]); objects have any length,
//! so the last partial block is copied into a small aligned buffer, rounded
//! up to [`ALIGN`] with zeros, and the file is then truncated to the object's
//! length. Objects that are not aligned in memory (the small snapshot, lock
//! and key objects) are copied whole the same way.
//!
//! File systems that refuse direct I/O (tmpfs on older kernels, some FUSE
//! and network file systems) answer `EINVAL`; the first refusal turns direct
//! writes off for the backend and the object is written through the page
//! cache instead, so nothing depends on direct I/O working.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of buffer, offset and length: a page, which covers every
/// logical block size in common use (512 and 4096 bytes).
pub(super) const ALIGN: usize = crate::blob::OBJECT_ALIGN;

/// Direct writes for one backend: whether the file system accepts them.
pub(super) struct DirectWriter {
    enabled: AtomicBool,
}

/// Whether an error means "this file system does not do direct I/O here"
/// rather than a real failure to write.
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EINVAL) | Some(nix::libc::EOPNOTSUPP))
}

impl DirectWriter {
    pub(super) fn new(enabled: bool) -> DirectWriter {
        DirectWriter { enabled: AtomicBool::new(enabled) }
    }

    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Creates `path` (which must not exist) and writes `data` to it with
    /// direct I/O. Returns the open file, not yet fsynced, or `None` when
    /// the file system refused direct I/O: then no file is left at `path`
    /// and the caller writes the object through the page cache.
    ///
    /// When `data` starts at an [`ALIGN`]ed address (the encoder places
    /// chunks and trees there), its whole blocks go to the device straight
    /// from it; only the last partial block, or all of an unaligned object,
    /// is copied into an aligned buffer first.
    pub(super) fn create(&self, path: &Path, data: &[u8]) -> io::Result<Option<File>> {
        if !self.enabled() {
            return Ok(None);
        }
        let file =
            match std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(nix::libc::O_DIRECT).open(path)
            {
                Ok(f) => f,
                Err(e) if refused(&e) => {
                    self.disable(&e);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
        let len = data.len();
        let in_place = if data.as_ptr().align_offset(ALIGN) == 0 { len - len % ALIGN } else { 0 };
        let written = write_all_aligned(&file, &data[..in_place], 0).and_then(|()| {
            let rest = &data[in_place..];
            if rest.is_empty() {
                return Ok(());
            }
            write_copy(&file, rest, in_place as u64)
        });
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(path);
            if refused(&e) {
                self.disable(&e);
                return Ok(None);
            }
            return Err(e);
        }
        if !len.is_multiple_of(ALIGN) {
            file.set_len(len as u64)?;
        }
        Ok(Some(file))
    }

    fn disable(&self, why: &io::Error) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::debug!("direct I/O refused ({why}); writing objects through the page cache");
        }
    }
}

/// Writes `bytes` at `offset` (aligned) through an aligned copy, padded with
/// zeros to whole blocks. Only a chunk's last partial block, or a small
/// unaligned object, comes this way, so the buffer is not worth keeping.
fn write_copy(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    let padded = bytes.len().next_multiple_of(ALIGN);
    let mut buf = vec![0u8; padded + ALIGN];
    let start = buf.as_ptr().align_offset(ALIGN);
    match start.checked_add(padded).and_then(|end| buf.get_mut(start..end)) {
        Some(aligned) => {
            aligned[..bytes.len()].copy_from_slice(bytes);
            write_all_aligned(file, aligned, offset)
        }
        // align_offset may decline to compute an offset (usize::MAX); never
        // seen for u8 pointers. Reported as a refusal, so that the page
        // cache, always correct, takes over.
        None => Err(io::Error::from_raw_os_error(nix::libc::EINVAL)),
    }
}

/// Writes all of `buf` at `offset`. A short write leaves the next offset
/// unaligned, which direct I/O refuses with `EINVAL`: the caller then falls
/// back to the page cache, so short writes cost speed, never data.
fn write_all_aligned(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file system accepted no bytes")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data` at an address `shift` bytes past an aligned one.
    fn placed(data: &[u8], shift: usize) -> (Vec<u8>, std::ops::Range<usize>) {
        let mut buf: Vec<u8> = Vec::with_capacity(2 * ALIGN + data.len());
        let at = buf.as_ptr().align_offset(ALIGN) + shift;
        buf.resize(at, 0xee);
        buf.extend_from_slice(data);
        (buf, at..at + data.len())
    }

    #[test]
    fn objects_of_every_length_and_placement_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirectWriter::new(true);
        let lengths = [0usize, 1, 100, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 17, 4 * ALIGN, (1 << 20) + 5];
        for (i, len) in lengths.into_iter().enumerate() {
            // Aligned (written in place), and off by 1 and 16 (copied).
            for shift in [0, 1, 16] {
                let data: Vec<u8> = (0..len).map(|j| (j * 31 + i + shift) as u8).collect();
                let (buf, range) = placed(&data, shift);
                assert_eq!(buf[range.clone()].as_ptr().align_offset(ALIGN) == 0, shift == 0);
                let path = dir.path().join(format!("o{i}-{shift}"));
                match w.create(&path, &buf[range]).unwrap() {
                    Some(f) => f.sync_all().unwrap(),
                    None => {
                        // Refused: no file is left; the caller writes it.
                        assert!(!path.exists());
                        std::fs::write(&path, &data).unwrap();
                    }
                }
                assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}, shift {shift}");
            }
        }
    }

    #[test]
    fn an_existing_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        std::fs::write(&path, b"first").unwrap();
        let w = DirectWriter::new(true);
        let err = w.create(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
    }

    #[test]
    fn disabled_writer_leaves_the_write_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirectWriter::new(false);
        let path = dir.path().join("o");
        assert!(w.create(&path, b"abc").unwrap().is_none());
        assert!(!path.exists());
    }
}

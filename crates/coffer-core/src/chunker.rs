//! Content-defined chunking: FastCDC 2020 with a gear table that comes from
//! the repository's key.
//!
//! With the crate's public table, boundaries depend only on the content, so
//! the sequence of object sizes fingerprints a known file. A secret table
//! makes the boundaries secret too. The crate's own `seed` option only XORs
//! one u64 into the public table, which leaves the table's structure public,
//! so the whole table is derived from the key instead.

use std::io::Read;

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Chunker parameters, stored in the repository's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// The algorithm; only [`ChunkerParams::FASTCDC_KEYED`] exists today.
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalisation level, 0 to 3.
    pub normalization: u8,
}

impl ChunkerParams {
    pub const FASTCDC_KEYED: &'static str = "fastcdc2020-keyed-gear";

    /// Largest chunk any repository may declare; decoders use it as the bound
    /// on a chunk's plaintext.
    pub const MAX_CHUNK: u32 = v2020::MAXIMUM_MAX as u32;

    /// Checks the parameters before they are used. The crate only
    /// debug-asserts them, and odd sizes silently shift boundaries.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidInput(format!("chunker parameters {self:?}: {why}")));
        if self.algorithm != Self::FASTCDC_KEYED {
            return bad("unknown chunker algorithm (this repository needs a newer coffer)");
        }
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return bad("sizes must be even");
        }
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            || !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            || !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
        {
            return bad("sizes out of FastCDC's range");
        }
        if !(min < avg && avg < max) {
            return bad("need min < avg < max");
        }
        if self.normalization > 3 {
            return bad("normalization must be 0 to 3");
        }
        Ok(())
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            algorithm: Self::FASTCDC_KEYED.to_string(),
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            normalization: 1,
        }
    }
}

/// Finds chunk boundaries.
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Where a window of `max` zero bytes is cut. The hash restarts at each
    /// chunk, so this is one constant per key: long runs of zeros (holes of
    /// sparse files, zeroed disk images) are chunked without being scanned.
    zero_cut: std::sync::OnceLock<usize>,
}

impl zeroize::Zeroize for Chunker {
    fn zeroize(&mut self) {
        self.gear.zeroize();
        self.gear_ls.zeroize();
    }
}

impl Drop for Chunker {
    /// The tables are derived from the master key, and knowing them helps
    /// guess chunk boundaries: they do not outlive the chunker.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl zeroize::ZeroizeOnDrop for Chunker {}

/// True when every byte is zero; stops at the first one that is not, so it
/// costs nothing on ordinary data. Comparing 16-byte words lets the
/// compiler vectorise the loop.
pub fn is_zero(data: &[u8]) -> bool {
    let (words, tail) = data.as_chunks::<16>();
    words.iter().all(|w| *w == [0u8; 16]) && tail.iter().all(|&b| b == 0)
}

impl Chunker {
    pub fn new(params: &ChunkerParams, gear: &[u64; 256]) -> Result<Chunker> {
        params.validate()?;
        let level = match params.normalization {
            0 => v2020::Normalization::Level0,
            1 => v2020::Normalization::Level1,
            2 => v2020::Normalization::Level2,
            _ => v2020::Normalization::Level3,
        };
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, level);
        // The shifted table must be exactly `gear << 1`: FastCDC 2020 consumes
        // two bytes per step, and any other relation makes the boundaries
        // after an odd-length insertion differ from those before it.
        let mut table = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        table.copy_from_slice(gear);
        for (ls, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *ls = g << 1;
        }
        Ok(Chunker {
            gear: table,
            gear_ls,
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max: params.max_size as usize,
            mask_s,
            mask_l,
            zero_cut: std::sync::OnceLock::new(),
        })
    }

    /// The cut point of a window of `max` zero bytes.
    fn zero_cut(&self) -> usize {
        *self.zero_cut.get_or_init(|| self.scan(&vec![0u8; self.max]))
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The length of the next chunk at the start of `data`.
    ///
    /// `data` must hold at least `max_size` bytes unless it is the end of the
    /// stream, or the boundary found may not be the one the whole stream has.
    pub fn next_boundary(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        if data.len() >= self.max && is_zero(&data[..self.max]) {
            return self.zero_cut();
        }
        self.scan(data)
    }

    fn scan(&self, data: &[u8]) -> usize {
        let (_, len) = v2020::cut_gear(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        len.max(1)
    }

    /// All chunk lengths of an in-memory buffer (used by tests and benches).
    pub fn split<'a>(&'a self, mut data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::from_fn(move || {
            if data.is_empty() {
                return None;
            }
            let n = self.next_boundary(data);
            let (head, tail) = data.split_at(n);
            data = tail;
            Some(head)
        })
    }
}

/// Reads a stream and yields its chunks, one buffer at a time.
///
/// The look-ahead buffer is consumed from an offset and compacted only when
/// the unread tail is small, so each byte is copied once into the buffer and
/// once into its chunk, however large the look-ahead window.
pub struct StreamChunker<'c, R> {
    chunker: &'c Chunker,
    reader: R,
    buf: Vec<u8>,
    /// Start of the unread data in `buf`.
    pos: usize,
    /// Expected length of the stream, to size the first read.
    size_hint: usize,
    eof: bool,
}

impl<'c, R: std::io::Read> StreamChunker<'c, R> {
    pub fn new(chunker: &'c Chunker, reader: R) -> Self {
        Self::with_buffer(chunker, reader, Vec::new(), usize::MAX)
    }

    /// Reuses `buf`'s allocation (from [`StreamChunker::into_buffer`]), and
    /// reads about `size_hint` bytes at first, so that a small file does not
    /// cost a window-sized buffer fill.
    pub fn with_buffer(chunker: &'c Chunker, reader: R, mut buf: Vec<u8>, size_hint: usize) -> Self {
        buf.clear();
        StreamChunker { chunker, reader, buf, pos: 0, size_hint, eof: false }
    }

    /// Gives the buffer back for the next stream.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        self.next_chunk_into(<[u8]>::to_vec)
    }

    /// The next chunk, handed to `make` to copy it out of the look-ahead
    /// buffer into whatever the caller keeps it in.
    pub fn next_chunk_into<T>(&mut self, make: impl FnOnce(&[u8]) -> T) -> std::io::Result<Option<T>> {
        loop {
            let unread = &self.buf[self.pos..];
            if !unread.is_empty() {
                let n = self.chunker.next_boundary(unread);
                // A cut before the end of what has been read is final; one at
                // the end is final only at the end of the stream or at the
                // maximum size. Otherwise read on and look again: the scan
                // stops at the first cut point, so more data cannot move a
                // cut that was found.
                if n < unread.len() || self.eof || n >= self.chunker.max {
                    self.pos += n;
                    return Ok(Some(make(&unread[..n])));
                }
            } else if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// Moves the unread tail (less than one chunk) to the front of the
    /// buffer and reads up to two maximum chunks' worth behind it. Reading
    /// on only when no cut is in sight, rather than whenever less than a
    /// maximum chunk is left, moves a few percent of the bytes instead of
    /// nearly all of them.
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let old = self.buf.len();
        let cap = 2 * self.chunker.max;
        let mut target = cap.min(self.size_hint.saturating_add(1).max(64 * 1024));
        if target <= old {
            target = (2 * old).max(old + 64 * 1024).min(cap).max(old + 1);
        }
        // `read_to_end` fills spare capacity without zeroing it first, and
        // stops only at the limit or at the end of the stream.
        self.buf.reserve_exact(target - old);
        (&mut self.reader).take((target - old) as u64).read_to_end(&mut self.buf)?;
        if self.buf.len() < target {
            self.eof = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn key_material_is_wiped() {
        let mut c = Chunker::new(&small(), &gear(1)).unwrap();
        assert!(c.gear.iter().any(|&g| g != 0));
        zeroize::Zeroize::zeroize(&mut c);
        assert!(c.gear.iter().chain(c.gear_ls.iter()).all(|&g| g == 0), "a table survived");
        // What holds key material wipes it when dropped; without the crates'
        // `zeroize` features these bounds do not hold and this test does
        // not build.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<Chunker>();
        wiped_on_drop::<aes::Aes256>();
        wiped_on_drop::<crate::crypto::Keys>();
        fn wipeable<T: zeroize::Zeroize>() {}
        wipeable::<argon2::Block>();
    }

    fn gear(seed: u64) -> [u64; 256] {
        let bytes = pseudo_random(2048, seed);
        let mut t = [0u64; 256];
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            t[i] = u64::from_le_bytes(c.try_into().unwrap());
        }
        t
    }

    fn small() -> ChunkerParams {
        ChunkerParams { min_size: 2048, avg_size: 8192, max_size: 65536, ..ChunkerParams::default() }
    }

    #[test]
    fn rejects_bad_params() {
        for p in [
            ChunkerParams { min_size: 2049, ..small() },
            ChunkerParams { min_size: 16384, ..small() },
            ChunkerParams { max_size: 64 * 1024 * 1024, ..small() },
            ChunkerParams { algorithm: "rabin".into(), ..small() },
            ChunkerParams { normalization: 4, ..small() },
        ] {
            assert!(Chunker::new(&p, &gear(1)).is_err(), "{p:?}");
        }
        assert!(ChunkerParams::default().validate().is_ok());
    }

    #[test]
    fn chunks_respect_bounds_and_cover_input() {
        let c = Chunker::new(&small(), &gear(1)).unwrap();
        let data = pseudo_random(1 << 20, 9);
        let chunks: Vec<&[u8]> = c.split(&data).collect();
        assert_eq!(chunks.concat(), data);
        for ch in &chunks[..chunks.len() - 1] {
            assert!(ch.len() >= 2048 && ch.len() <= 65536, "{}", ch.len());
        }
        assert!(chunks.len() > 40 && chunks.len() < 400, "{}", chunks.len());
    }

    #[test]
    fn stream_matches_in_memory() {
        let c = Chunker::new(&small(), &gear(2)).unwrap();
        let mut data = pseudo_random(700_001, 3);
        // A hole longer than the maximum chunk, and a run of few distinct
        // bytes, so that forced, zero and scanned cuts all meet short reads.
        data.splice(200_000..200_000, std::iter::repeat_n(0u8, 3 * small().max_size as usize + 123));
        data.splice(50_000..50_000, pseudo_random(90_000, 4).into_iter().map(|b| b & 1));
        let expect: Vec<Vec<u8>> = c.split(&data).map(|s| s.to_vec()).collect();
        // A reader that returns odd-sized short reads.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut buf = Vec::new();
        // Right, too small and too large size hints all give the same chunks.
        for hint in [data.len(), 10, usize::MAX] {
            let mut s = StreamChunker::with_buffer(&c, Trickle(&data), buf, hint);
            let mut got = Vec::new();
            while let Some(ch) = s.next_chunk().unwrap() {
                got.push(ch);
            }
            assert_eq!(got, expect);
            buf = s.into_buffer();
        }
    }

    #[test]
    fn odd_insertion_resynchronises() {
        let c = Chunker::new(&small(), &gear(4)).unwrap();
        let data = pseudo_random(1 << 20, 5);
        let mut edited = data.clone();
        let insert = pseudo_random(101, 6);
        edited.splice(300_000..300_000, insert);
        let a: std::collections::HashSet<&[u8]> = c.split(&data).collect();
        let b: Vec<&[u8]> = c.split(&edited).collect();
        let new = b.iter().filter(|ch| !a.contains(*ch)).count();
        assert!(new <= 2, "{new} new chunks after a 101-byte insertion");
    }

    #[test]
    fn zero_runs_cut_as_if_scanned() {
        let c = Chunker::new(&small(), &gear(8)).unwrap();
        let mut data = pseudo_random(100_000, 1);
        data.extend(std::iter::repeat_n(0u8, 1_000_000));
        data.extend(pseudo_random(100_000, 2));
        let fast: Vec<usize> = c.split(&data).map(|s| s.len()).collect();
        // The reference: scanning every window, never taking the shortcut.
        let mut slow = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = c.scan(rest).max(1);
            slow.push(n);
            rest = &rest[n..];
        }
        assert_eq!(fast, slow);
        assert!(is_zero(&[0; 100]) && !is_zero(&[0, 0, 0, 1]) && is_zero(&[]));
        let mut big = vec![0u8; 1000];
        big[999] = 1;
        assert!(!is_zero(&big));
    }

    #[test]
    fn different_tables_cut_differently() {
        let data = pseudo_random(1 << 20, 7);
        let c1 = Chunker::new(&small(), &gear(10)).unwrap();
        let c2 = Chunker::new(&small(), &gear(20)).unwrap();
        let l1: Vec<usize> = c1.split(&data).map(|c| c.len()).collect();
        let l2: Vec<usize> = c2.split(&data).map(|c| c.len()).collect();
        assert_ne!(l1, l2);
    }
}

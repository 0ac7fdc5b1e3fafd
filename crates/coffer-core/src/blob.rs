//! Encoding and decoding of one stored object.
//!
//! Every object's plaintext is framed the same way before encryption:
//!
//! ```text
//! frame   = header(16) ‖ payload ‖ zero padding up to padme(16 + len(payload))
//! header  = version u8 (1) ‖ compression u8 (0 raw, 1 zstd) ‖ 2 zero bytes
//!           ‖ payload length u32le ‖ plaintext length u32le ‖ 4 zero bytes
//! ```
//!
//! Chunks and trees are then sealed deterministically (no nonce) with the
//! associated data `kind ‖ id ‖ repository id`; snapshots and locks with a
//! random 16-byte nonce stored in front and bound as associated data.
//! `docs/format.md` is the byte-level reference.

use bytes::Bytes;

use crate::crypto::{Keys, NONCE_LEN, ObjectKind, TAG_LEN, fill_random};
use crate::error::{Error, Result};
use crate::id::Id;

const FRAME_VERSION: u8 = 1;
const HEADER_LEN: usize = 16;
const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// Largest plaintext any object may have. Decoders refuse to allocate more,
/// whatever the object's header claims.
pub const MAX_PLAINTEXT: usize = 1 << 30;

/// The most bytes a chunk or tree whose plaintext has at most `max_plain`
/// bytes can be stored as: the tag and the padded frame of the raw
/// plaintext (a compressed payload is kept only when it is smaller). A
/// store's object of that kind that is larger is damaged or hostile, and is
/// refused before it is read.
pub const fn max_stored_len(max_plain: usize) -> u64 {
    padme((HEADER_LEN as u64).saturating_add(max_plain as u64)).saturating_add(TAG_LEN as u64)
}

/// [`max_stored_len`] for an object sealed with [`seal_random`] (its nonce
/// comes in front).
pub const fn max_stored_random_len(max_plain: usize) -> u64 {
    max_stored_len(max_plain).saturating_add(NONCE_LEN as u64)
}

/// Padmé: rounds `len` up so that only O(log log len) bits of it are stored.
/// The overhead is at most about 12%, and a few percent at chunk sizes.
pub const fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - len.leading_zeros(); // floor(log2 len)
    let s = 32 - e.leading_zeros(); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

/// How a plaintext is compressed before it is framed.
#[derive(Clone, Copy, Debug)]
pub struct Compression {
    /// zstd level; 0 disables compression.
    pub level: i32,
}

impl Compression {
    /// Compression is kept only when it saves at least this fraction (1/32,
    /// about 3%); below that, decompressing costs more than the bytes saved.
    const MIN_SAVING_DIVISOR: usize = 32;

    /// Plaintexts at least this long are probed before zstd runs over all
    /// of them (see [`Compression::probe`]).
    const PROBE_MIN_LEN: usize = 128 * 1024;
    /// The probe compresses this many slices, spread evenly over the
    /// plaintext...
    const PROBE_SLICES: usize = 8;
    /// ...of this many bytes each: 32 KiB in all, 3 % of an average chunk.
    const PROBE_SLICE_LEN: usize = 4096;

    /// Compresses `plaintext` into the empty buffer `out`, after `lead`
    /// zero bytes that start at an address aligned to `align` (a power of
    /// two; 1 for none). Returns where those lead bytes start and the
    /// compressed length, or `None` (with `out` empty) when compression is
    /// off or does not save enough.
    fn compress_into(self, plaintext: &[u8], out: &mut Vec<u8>, lead: usize, align: usize) -> Option<(usize, usize)> {
        if self.level == 0 || plaintext.len() < 64 {
            return None;
        }
        let limit = plaintext.len() - plaintext.len() / Self::MIN_SAVING_DIVISOR;
        let mut at = 0;
        // One compression context per thread: creating one per chunk costs
        // an allocation and a table reset each time.
        thread_local! {
            static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let written = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(level, _)| *level != self.level) {
                *slot = Some((self.level, zstd::bulk::Compressor::new(self.level).ok()?));
            }
            let (_, compressor) = slot.as_mut()?;
            if !Self::probe(compressor, plaintext) {
                return None;
            }
            // Only now: most chunks of a photo library fail the probe, and
            // need no second buffer at all. With room for the padding too,
            // so that the frame never moves (and stays aligned) when padded.
            out.reserve_exact(align - 1 + lead - HEADER_LEN + padme((HEADER_LEN + limit) as u64) as usize);
            at = aligned_offset(out, align);
            out.resize(at + lead, 0);
            // Writes into `out`'s spare capacity, after the lead bytes,
            // without zero-filling it first.
            let mut cursor = std::io::Cursor::new(&mut *out);
            cursor.set_position((at + lead) as u64);
            compressor.compress_to_buffer(plaintext, &mut cursor).ok()
        });
        match written {
            Some(n) if n < limit && out.len() == at + lead + n => Some((at, n)),
            _ => {
                out.clear();
                None
            }
        }
    }

    /// Whether zstd is worth running over a large plaintext: false when
    /// slices spread over it do not compress at all.
    ///
    /// Most of a photo library is JPEG and HEIC data that zstd cannot
    /// shrink; running it over every byte only to keep the raw bytes cost a
    /// quarter of backup's CPU time. The probe compresses eight 4 KiB slices
    /// taken at even intervals (3 % of the work) and gives up only when they
    /// save less than 1/64 together, half of what the whole plaintext must
    /// save to be kept compressed. A plaintext that is compressible in only
    /// some places (a RAW file's preview next to its sensor data) compresses
    /// in at least one slice almost always: with 30 % of it incompressible
    /// in 64 KiB runs, all eight slices miss the rest with a chance of
    /// 0.3^8 ≈ 7e-5, and then the chunk is only stored raw, never lost.
    /// The decision depends only on the plaintext, so the encoding stays
    /// deterministic.
    fn probe(compressor: &mut zstd::bulk::Compressor<'static>, plaintext: &[u8]) -> bool {
        if plaintext.len() < Self::PROBE_MIN_LEN {
            return true;
        }
        let sample_len = Self::PROBE_SLICES * Self::PROBE_SLICE_LEN;
        let stride = (plaintext.len() - Self::PROBE_SLICE_LEN) / (Self::PROBE_SLICES - 1);
        let mut sample = Vec::with_capacity(sample_len);
        for i in 0..Self::PROBE_SLICES {
            let at = i * stride;
            sample.extend_from_slice(&plaintext[at..at + Self::PROBE_SLICE_LEN]);
        }
        let limit = sample_len - sample_len / (2 * Self::MIN_SAVING_DIVISOR);
        let mut out = Vec::with_capacity(limit);
        matches!(compressor.compress_to_buffer(&sample, &mut out), Ok(n) if n < limit)
    }
}

/// Builds the frame of a plaintext (header, payload, padding).
pub fn frame(plaintext: &[u8], compression: Compression) -> Vec<u8> {
    frame_after(plaintext, compression, 0)
}

/// Builds the frame after `headroom` zero bytes, so that the caller can
/// seal it in place with the tag in front, without moving the frame.
fn frame_after(plaintext: &[u8], compression: Compression, headroom: usize) -> Vec<u8> {
    let payload_at = headroom + HEADER_LEN;
    let mut out = Vec::new();
    let (method, payload_len) = match compression.compress_into(plaintext, &mut out, payload_at, 1) {
        Some((_, n)) => (COMPRESSION_ZSTD, n),
        None => {
            // Room for the largest result: the raw plaintext, padded.
            out.reserve_exact(headroom + padme((HEADER_LEN + plaintext.len()) as u64) as usize);
            out.resize(payload_at, 0);
            out.extend_from_slice(plaintext);
            (COMPRESSION_NONE, plaintext.len())
        }
    };
    finish_frame(&mut out, headroom, method, payload_len, plaintext.len());
    out
}

/// Writes the header in front of a payload that sits at `headroom +
/// HEADER_LEN` in `out`, and pads the frame.
fn finish_frame(out: &mut Vec<u8>, headroom: usize, method: u8, payload_len: usize, plain_len: usize) {
    let header = &mut out[headroom..headroom + HEADER_LEN];
    header.fill(0);
    header[0] = FRAME_VERSION;
    header[1] = method;
    header[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[8..12].copy_from_slice(&(plain_len as u32).to_le_bytes());
    let total = padme((HEADER_LEN + payload_len) as u64) as usize;
    out.resize(headroom + total, 0);
}

/// Where stored chunks and trees start in memory: a page boundary, so that a
/// local store can hand them to the device with `O_DIRECT` as they are,
/// without copying them into an aligned buffer first.
pub const OBJECT_ALIGN: usize = 4096;

/// How far into `buf`'s allocation the first `align`-aligned address lies
/// (0 when the allocation cannot be aligned, which costs speed, not data).
pub(crate) fn aligned_offset(buf: &[u8], align: usize) -> usize {
    match buf.as_ptr().align_offset(align) {
        off if off < align => off,
        _ => 0,
    }
}

/// A chunk's plaintext, held after room for the tag and the frame header and
/// with capacity for the padding, so that a chunk stored raw (most of a photo
/// library) is framed and sealed where it lies instead of being copied into
/// a new buffer. The stored object will start at an [`OBJECT_ALIGN`]-aligned
/// address of the buffer.
pub struct Plaintext {
    buf: Vec<u8>,
    /// Where the object (its tag) starts in `buf`.
    start: usize,
}

impl Plaintext {
    const HEADROOM: usize = TAG_LEN + HEADER_LEN;

    pub fn copy_of(data: &[u8]) -> Plaintext {
        let object_len = TAG_LEN + padme((HEADER_LEN + data.len()) as u64) as usize;
        let mut buf = Vec::with_capacity(OBJECT_ALIGN - 1 + object_len);
        let start = aligned_offset(&buf, OBJECT_ALIGN);
        buf.resize(start + Self::HEADROOM, 0);
        buf.extend_from_slice(data);
        Plaintext { buf, start }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start + Self::HEADROOM..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start - Self::HEADROOM
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame, after [`TAG_LEN`] bytes of room, and where that room
    /// starts in the returned buffer: byte for byte what [`frame_after`]
    /// builds, compressed into a new buffer when zstd saves enough, else in
    /// this buffer.
    fn into_frame(mut self, compression: Compression) -> (Vec<u8>, usize) {
        let plain_len = self.len();
        let mut out = Vec::new();
        if let Some((at, n)) = compression.compress_into(self.as_slice(), &mut out, Self::HEADROOM, OBJECT_ALIGN) {
            finish_frame(&mut out, at + TAG_LEN, COMPRESSION_ZSTD, n, plain_len);
            return (out, at);
        }
        finish_frame(&mut self.buf, self.start + TAG_LEN, COMPRESSION_NONE, plain_len, plain_len);
        (self.buf, self.start)
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// What a validated frame holds.
struct FrameInfo {
    method: u8,
    payload: std::ops::Range<usize>,
    plain_len: usize,
}

/// Checks a frame's header, padding and limits before anything is allocated.
fn check_frame(frame: &[u8], max_len: usize) -> std::result::Result<FrameInfo, String> {
    if frame.len() < HEADER_LEN {
        return Err(format!("frame of {} bytes is shorter than its header", frame.len()));
    }
    let u32_at = |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]) as usize;
    if frame[0] != FRAME_VERSION {
        return Err(format!("unknown frame version {}", frame[0]));
    }
    if frame[2..4] != [0, 0] || frame[12..16] != [0, 0, 0, 0] {
        return Err("reserved header bytes are not zero".into());
    }
    let payload_len = u32_at(4);
    let plain_len = u32_at(8);
    let payload = HEADER_LEN..HEADER_LEN + payload_len;
    if payload.end > frame.len() {
        return Err(format!("payload length {payload_len} runs past the end of the object"));
    }
    if frame[payload.end..].iter().any(|&b| b != 0) {
        return Err("padding is not zero".into());
    }
    if padme(payload.end as u64) != frame.len() as u64 {
        return Err("padding length is wrong".into());
    }
    let limit = max_len.min(MAX_PLAINTEXT);
    if plain_len > limit {
        return Err(format!("plaintext of {plain_len} bytes exceeds the limit of {limit}"));
    }
    match frame[1] {
        COMPRESSION_NONE if payload_len != plain_len => Err("raw payload length differs from plaintext length".into()),
        COMPRESSION_NONE | COMPRESSION_ZSTD => Ok(FrameInfo { method: frame[1], payload, plain_len }),
        m => Err(format!("unknown compression method {m}")),
    }
}

/// Decompresses a zstd payload whose plaintext length is already checked.
fn decompress(payload: &[u8], plain_len: usize) -> std::result::Result<Vec<u8>, String> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(payload, plain_len).map_err(|e| format!("zstd: {e}")),
            None => Err("zstd: no decompression context".to_string()),
        }
    })?;
    if out.len() != plain_len {
        return Err(format!("decompressed to {} bytes, header says {plain_len}", out.len()));
    }
    Ok(out)
}

/// Reverses [`frame`], refusing plaintexts longer than `max_len`.
pub fn unframe(frame: &[u8], max_len: usize) -> std::result::Result<Vec<u8>, String> {
    let info = check_frame(frame, max_len)?;
    let payload = &frame[info.payload];
    match info.method {
        COMPRESSION_NONE => Ok(payload.to_vec()),
        _ => decompress(payload, info.plain_len),
    }
}

/// A decoded plaintext, left where it was decrypted: a raw payload stays
/// in the buffer it arrived in, after the tag and the frame header, instead
/// of being moved to its front (a memmove of nearly every restored or
/// mounted byte).
#[derive(Debug)]
pub struct Decoded {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Decoded {
    /// The plaintext as a vector of its own (moved to the buffer's front
    /// when it does not start there).
    pub fn into_vec(self) -> Vec<u8> {
        let Decoded { mut buf, range } = self;
        if range.start != 0 {
            buf.copy_within(range.clone(), 0);
        }
        buf.truncate(range.len());
        buf
    }

    /// The memory this plaintext holds: its buffer's capacity, which
    /// includes the tag, the frame header and the padding it came with.
    pub fn footprint(&self) -> usize {
        self.buf.capacity()
    }
}

impl std::ops::Deref for Decoded {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

fn deterministic_headers<'a>(kind: ObjectKind, id: &'a Id, repo_id: &'a [u8; 32]) -> [&'a [u8]; 3] {
    [kind.tag(), &id.0, repo_id]
}

/// Encodes a chunk or tree whose id is already known. Deterministic: the same
/// plaintext in the same repository always gives the same object.
pub fn encode(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    id: &Id,
    plaintext: &[u8],
    compression: Compression,
) -> Vec<u8> {
    let mut sealed = frame_after(plaintext, compression, TAG_LEN);
    keys.seal_in_place(kind, &deterministic_headers(kind, id, repo_id), &mut sealed);
    sealed
}

/// Like [`encode`], taking the plaintext by value: a chunk stored raw is
/// framed and encrypted in its own buffer. Gives the same bytes as
/// [`encode`], starting at an [`OBJECT_ALIGN`]-aligned address.
pub fn encode_owned(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    id: &Id,
    plaintext: Plaintext,
    compression: Compression,
) -> Bytes {
    let (mut buf, start) = plaintext.into_frame(compression);
    keys.seal_in_place(kind, &deterministic_headers(kind, id, repo_id), &mut buf[start..]);
    Bytes::from(buf).slice(start..)
}

/// Decodes a chunk or tree stored under `id`: authenticates it, unframes it,
/// and checks that the plaintext really has that id.
pub fn decode(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    id: &Id,
    stored: &[u8],
    max_len: usize,
) -> Result<Vec<u8>> {
    decode_owned(keys, repo_id, kind, id, stored.to_vec(), max_len).map(Decoded::into_vec)
}

/// Like [`decode`], taking the stored bytes by value: they are decrypted
/// where they lie, and a raw plaintext stays there, which saves two copies
/// of every chunk on restore.
pub fn decode_owned(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    id: &Id,
    mut stored: Vec<u8>,
    max_len: usize,
) -> Result<Decoded> {
    let base = stored.as_ptr() as usize;
    let raw = match decode_in_place(keys, repo_id, kind, id, &mut stored, max_len)? {
        std::borrow::Cow::Borrowed(plain) => (plain.as_ptr() as usize - base, plain.len()),
        std::borrow::Cow::Owned(buf) => return Ok(Decoded { range: 0..buf.len(), buf }),
    };
    Ok(Decoded { buf: stored, range: raw.0..raw.0 + raw.1 })
}

/// Decodes a blob where it lies, in a buffer that may be shared with its
/// neighbours (one ranged read of a pack serves several): a raw plaintext
/// is borrowed from the buffer, a compressed one decompressed into its own.
pub fn decode_in_place<'a>(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    id: &Id,
    stored: &'a mut [u8],
    max_len: usize,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !keys.open_in_place(kind, &deterministic_headers(kind, id, repo_id), stored) {
        return Err(Error::corrupt(
            kind.name(),
            id.to_hex(),
            "does not authenticate (altered, truncated, or stored under the wrong name)",
        ));
    }
    let frame = &stored[TAG_LEN..];
    let info = check_frame(frame, max_len).map_err(|r| Error::corrupt(kind.name(), id.to_hex(), r))?;
    let payload = &frame[info.payload];
    let plaintext = match info.method {
        COMPRESSION_NONE => std::borrow::Cow::Borrowed(payload),
        _ => std::borrow::Cow::Owned(
            decompress(payload, info.plain_len).map_err(|r| Error::corrupt(kind.name(), id.to_hex(), r))?,
        ),
    };
    if keys.id(&plaintext) != *id {
        return Err(Error::corrupt(kind.name(), id.to_hex(), "content does not match its id"));
    }
    Ok(plaintext)
}

/// Seals a snapshot, config or lock under a fresh random nonce. `name` is the
/// object's key in the repository, and `extra` any plaintext that is stored
/// beside the object and must be authenticated with it.
pub fn seal_random(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    name: &str,
    extra: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let framed = frame(plaintext, Compression { level: 3 });
    let sealed = keys.seal(kind, &[kind.tag(), name.as_bytes(), repo_id, extra, &nonce], framed);
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Reverses [`seal_random`].
pub fn open_random(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    name: &str,
    extra: &[u8],
    stored: &[u8],
    max_len: usize,
) -> Result<Vec<u8>> {
    open_random_authentic(keys, repo_id, kind, name, extra, stored, max_len)?
        .map_err(|r| Error::corrupt(kind.name(), name, r))
}

/// [`open_random`], telling an object that does not authenticate (`Err`)
/// from an authentic one whose frame this version cannot read, or whose
/// plaintext is longer than `max_len` (`Ok(Err(why))`): the second was
/// written by a holder of the repository's key, maybe a newer coffer.
pub fn open_random_authentic(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: ObjectKind,
    name: &str,
    extra: &[u8],
    stored: &[u8],
    max_len: usize,
) -> Result<std::result::Result<Vec<u8>, String>> {
    if stored.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::corrupt(kind.name(), name, format!("only {} bytes long", stored.len())));
    }
    let (nonce, sealed) = stored.split_at(NONCE_LEN);
    let framed = keys.open(kind, &[kind.tag(), name.as_bytes(), repo_id, extra, nonce], sealed).ok_or_else(|| {
        Error::corrupt(kind.name(), name, "does not authenticate (altered, truncated, or stored under the wrong name)")
    })?;
    Ok(unframe(&framed, max_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::from_master(&[42u8; 64])
    }

    #[test]
    fn stored_lengths_never_exceed_their_bound() {
        let k = keys();
        let id = Id([1; 32]);
        // Incompressible plaintexts of awkward lengths, and compressible ones.
        for len in [0usize, 1, 63, 64, 4095, 4096, 100_000, 1 << 20] {
            let mut x = 0x1234_5678_u64 ^ len as u64;
            let random: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for plain in [random, vec![7u8; len]] {
                let stored = encode(&k, &[2; 32], ObjectKind::Chunk, &id, &plain, Compression { level: 3 });
                assert!(stored.len() as u64 <= max_stored_len(len), "chunk of {len}: {}", stored.len());
                let sealed = seal_random(&k, &[2; 32], ObjectKind::Lock, "locks/x", b"", &plain);
                assert!(sealed.len() as u64 <= max_stored_random_len(len), "sealed {len}: {}", sealed.len());
            }
        }
        // The bound is tight for raw data: a stored object is never refused
        // by more than padding's worth.
        let raw = encode(&k, &[2; 32], ObjectKind::Chunk, &id, &[5u8; 40], Compression { level: 0 });
        assert_eq!(raw.len() as u64, max_stored_len(40));
    }

    #[test]
    fn padme_values() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(16), 16);
        assert_eq!(padme(17), 18);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1_000_000), 1_015_808);
        for len in [100u64, 9_999, 1 << 20, (1 << 20) + 1, 8_388_608 - 3] {
            let p = padme(len);
            assert!(p >= len && (p - len) as f64 <= len as f64 * 0.12, "{len} -> {p}");
            assert_eq!(padme(p), p, "idempotent");
        }
    }

    #[test]
    fn compression_kept_only_when_it_saves() {
        let text = b"family photos ".repeat(1000);
        let f = frame(&text, Compression { level: 3 });
        assert_eq!(f[1], COMPRESSION_ZSTD);
        assert!(f.len() < text.len() / 10);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let f = frame(&noise, Compression { level: 3 });
        assert_eq!(f[1], COMPRESSION_NONE);
        assert_eq!(unframe(&f, usize::MAX).unwrap(), noise);
    }

    fn xorshift_bytes(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn the_probe_skips_noise_but_not_partly_compressible_data() {
        let level = Compression { level: 2 };
        // 1 MiB of noise: the probe gives up, the frame is raw.
        let noise = xorshift_bytes(1 << 20, 7);
        assert_eq!(frame(&noise, level)[1], COMPRESSION_NONE);
        // RAW-file-like: 64 KiB runs, 30 % noise and 70 % low-entropy bytes.
        let mut mixed = Vec::new();
        for (i, run) in xorshift_bytes(1 << 20, 9).chunks(64 * 1024).enumerate() {
            if i % 10 < 3 {
                mixed.extend_from_slice(run);
            } else {
                mixed.extend(run.iter().map(|b| b & 3));
            }
        }
        let f = frame(&mixed, level);
        assert_eq!(f[1], COMPRESSION_ZSTD);
        assert!(f.len() < mixed.len() * 6 / 10, "{} of {}", f.len(), mixed.len());
        // Compressible only outside the probed slices (each slice noise):
        // stored raw, and still read back exactly.
        let mut sparse = xorshift_bytes(1 << 20, 11);
        let stride = ((1 << 20) - 4096) / 7;
        for gap in 0..7 {
            sparse[gap * stride + 4096..(gap + 1) * stride].fill(0);
        }
        let f = frame(&sparse, level);
        assert_eq!(f[1], COMPRESSION_NONE);
        assert_eq!(unframe(&f, usize::MAX).unwrap(), sparse);
    }

    #[test]
    fn round_trip_and_binding() {
        let k = keys();
        let repo = [1u8; 32];
        let data = b"some chunk".repeat(50);
        let id = k.id(&data);
        let enc = encode(&k, &repo, ObjectKind::Chunk, &id, &data, Compression { level: 3 });
        assert_eq!(enc, encode(&k, &repo, ObjectKind::Chunk, &id, &data, Compression { level: 3 }));
        assert_eq!(decode(&k, &repo, ObjectKind::Chunk, &id, &enc, 1 << 20).unwrap(), data);
        // Another name, another repository, another kind: all rejected.
        let other = k.id(b"other");
        assert!(decode(&k, &repo, ObjectKind::Chunk, &other, &enc, 1 << 20).is_err());
        assert!(decode(&k, &[2u8; 32], ObjectKind::Chunk, &id, &enc, 1 << 20).is_err());
        assert!(decode(&k, &repo, ObjectKind::Tree, &id, &enc, 1 << 20).is_err());
        // The size limit is enforced before decompression.
        assert!(decode(&k, &repo, ObjectKind::Chunk, &id, &enc, 10).is_err());
    }

    #[test]
    fn decoded_raw_payload_stays_in_place() {
        let k = keys();
        let repo = [1u8; 32];
        for (data, raw) in [(xorshift_bytes(300_000, 7), true), (b"some chunk".repeat(5000), false)] {
            let id = k.id(&data);
            let enc = encode(&k, &repo, ObjectKind::Chunk, &id, &data, Compression { level: 2 });
            let decoded = decode_owned(&k, &repo, ObjectKind::Chunk, &id, enc.clone(), 1 << 20).unwrap();
            assert_eq!(&*decoded, data.as_slice());
            // A raw payload is read where it was decrypted, after the tag
            // and the header; the buffer it came in is what it holds.
            assert_eq!(decoded.range.start != 0, raw);
            assert!(decoded.footprint() >= decoded.len());
            if raw {
                assert_eq!(decoded.footprint(), enc.capacity());
            }
            assert_eq!(decoded.into_vec(), data);
        }
    }

    #[test]
    fn sealed_round_trip() {
        let k = keys();
        let repo = [3u8; 32];
        let a = seal_random(&k, &repo, ObjectKind::Snapshot, "snapshots/x", b"", b"hello");
        let b = seal_random(&k, &repo, ObjectKind::Snapshot, "snapshots/x", b"", b"hello");
        assert_ne!(a, b, "random nonce");
        assert_eq!(open_random(&k, &repo, ObjectKind::Snapshot, "snapshots/x", b"", &a, 100).unwrap(), b"hello");
        assert!(open_random(&k, &repo, ObjectKind::Snapshot, "snapshots/y", b"", &a, 100).is_err());
        assert!(open_random(&k, &repo, ObjectKind::Snapshot, "snapshots/x", b"e", &a, 100).is_err());
    }

    /// The in-place path must give exactly the bytes of the copying one:
    /// the encoding is deterministic, and a chunk stored by either is the
    /// same object.
    #[test]
    fn owned_encoding_matches_copying_encoding() {
        let k = keys();
        let repo = [5u8; 32];
        let mut half = xorshift_bytes(300_000, 3);
        for b in half.iter_mut().step_by(2) {
            *b &= 3;
        }
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"x".to_vec(),
            b"abc".repeat(100),
            xorshift_bytes(100, 1),
            xorshift_bytes(200_000, 2), // probed, stored raw
            half,                       // probed, compressed
            vec![0u8; 1 << 20],
        ];
        for data in cases {
            for level in [0, 2] {
                let c = Compression { level };
                let id = k.id(&data);
                let want = encode(&k, &repo, ObjectKind::Chunk, &id, &data, c);
                let got = encode_owned(&k, &repo, ObjectKind::Chunk, &id, Plaintext::copy_of(&data), c);
                assert_eq!(got, want, "length {} level {level}", data.len());
                assert_eq!(got.as_ptr().align_offset(OBJECT_ALIGN), 0, "length {} level {level}", data.len());
                assert_eq!(decode(&k, &repo, ObjectKind::Chunk, &id, &got, 1 << 21).unwrap(), data);
            }
        }
    }

    proptest! {
        #[test]
        fn frame_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), level in 0i32..4) {
            let f = frame(&data, Compression { level });
            let (owned, start) = Plaintext::copy_of(&data).into_frame(Compression { level });
            prop_assert_eq!(owned.as_ptr().wrapping_add(start).align_offset(OBJECT_ALIGN), 0);
            prop_assert_eq!(&owned[start..start + TAG_LEN], &[0u8; TAG_LEN][..]);
            prop_assert_eq!(&owned[start + TAG_LEN..], &f[..]);
            prop_assert_eq!(f.len() as u64, padme(f.len() as u64));
            prop_assert_eq!(unframe(&f, usize::MAX).unwrap(), data);
        }

        #[test]
        fn unframe_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = unframe(&data, 1 << 20);
        }

        #[test]
        fn unframe_mutated_frames(data in proptest::collection::vec(any::<u8>(), 0..2000), pos in any::<usize>(), val in any::<u8>()) {
            let mut f = frame(&data, Compression { level: 1 });
            let i = pos % f.len();
            f[i] = val;
            let _ = unframe(&f, 1 << 20);
        }
    }
}

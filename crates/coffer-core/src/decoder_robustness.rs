//! Robustness of every decoder of untrusted bytes.
//!
//! For each decoder: random bytes never make it panic or allocate without
//! bound; a valid encoding decodes to the original; and a valid encoding that
//! has been altered (a byte flipped, truncated, extended, spliced) is always
//! rejected when the object is authenticated. The fuzz targets in `fuzz/`
//! explore the same decoders for longer; these tests keep the properties in
//! the ordinary `cargo test` run.
//!
//! Allocation bounds are checked with a thin wrapper around the system
//! allocator that records, per thread and only while a probe is active, the
//! largest single allocation requested. It is the global allocator of this
//! crate's unit-test binary only (`#[cfg(test)]`).

use std::sync::OnceLock;

use proptest::prelude::*;

use crate::blob::{self, Compression, MAX_PLAINTEXT};
use crate::chunker::ChunkerParams;
use crate::config::{self, ConfigBody, ConfigHeader};
use crate::crypto::{Keys, NONCE_LEN, ObjectKind};
use crate::error::Error;
use crate::id::Id;
use crate::index::{Index, IndexedPack};
use crate::key::{KdfParams, KeyEnvelope};
use crate::pack::{self, PackEntry, PackKind, PackWriter};
use crate::snapshot::{MAX_SNAPSHOT_LEN, SNAPSHOT_VERSION, Snapshot, Summary};
use crate::tree::{ChunkRef, Node, NodeKind, Timestamp, Tree, Xattr};

const REPO: [u8; 32] = [3u8; 32];
const MAX_CHUNK: usize = ChunkerParams::MAX_CHUNK as usize;
const MAX_TREE: usize = crate::repo::MAX_TREE_LEN;
const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
const PASSWORD: &[u8] = b"correct horse";

/// The largest single allocation a decoder may make on small random input:
/// serde pre-allocates at most 1 MiB for a sequence whatever its header
/// claims, and the frame tests use a limit of 1 MiB.
const RANDOM_INPUT_ALLOC_BOUND: usize = (1 << 20) + (64 << 10);

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::from_master(&[7u8; 64]))
}

mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Probe;

    thread_local! {
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = ACTIVE.try_with(|active| {
            if active.get() {
                let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            }
        });
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the
    // bookkeeping touches only `const`-initialised thread-locals without
    // destructors, which never allocate.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Probe = Probe;

    /// Runs `f` and returns its result with the largest single allocation
    /// (in bytes) it requested on this thread.
    pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        ACTIVE.with(|a| a.set(true));
        let out = f();
        ACTIVE.with(|a| a.set(false));
        (out, LARGEST.with(|l| l.get()))
    }
}

use alloc_probe::largest_allocation;

// ---------------------------------------------------------------------------
// Mutations

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip { pos: usize, mask: u8 },
    /// Keep only the first `keep % len` bytes.
    Truncate { keep: usize },
    /// Add bytes at the end.
    Append(Vec<u8>),
    /// Replace `remove` bytes at `pos` with `insert`.
    Splice { pos: usize, remove: usize, insert: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..=255).prop_map(|(pos, mask)| Mutation::Flip { pos, mask }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        2 => (any::<usize>(), 0usize..24, proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(pos, remove, insert)| Mutation::Splice { pos, remove, insert }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn apply(muts: &[Mutation], original: &[u8]) -> Vec<u8> {
    let mut b = original.to_vec();
    for m in muts {
        match m {
            Mutation::Flip { pos, mask } => {
                if !b.is_empty() {
                    let i = pos % b.len();
                    b[i] ^= mask;
                }
            }
            Mutation::Truncate { keep } => {
                if !b.is_empty() {
                    b.truncate(keep % b.len());
                }
            }
            Mutation::Append(extra) => b.extend_from_slice(extra),
            Mutation::Splice { pos, remove, insert } => {
                let at = pos % (b.len() + 1);
                let end = (at + remove).min(b.len());
                b.splice(at..end, insert.iter().copied());
            }
        }
    }
    b
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

// ---------------------------------------------------------------------------
// Valid values

fn id() -> impl Strategy<Value = Id> {
    any::<[u8; 32]>().prop_map(Id)
}

fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != 0 && *b != b'/'), 1..16)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
}

fn node() -> impl Strategy<Value = Node> {
    let kind = prop_oneof![
        Just(NodeKind::File),
        Just(NodeKind::Dir),
        Just(NodeKind::Symlink),
        Just(NodeKind::Fifo),
        Just(NodeKind::Socket),
        Just(NodeKind::CharDevice),
        Just(NodeKind::BlockDevice),
    ];
    let ids = (id(), proptest::collection::vec((id(), any::<u32>()), 0..5), bytes(40));
    let attrs = (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of("[a-z]{0,8}"),
        proptest::option::of("[a-z]{0,8}"),
        timestamp(),
        timestamp(),
        any::<(u64, u64, u64, u64, u64)>(),
    );
    let xattrs = proptest::collection::vec((bytes(12), bytes(24)), 0..3);
    (entry_name(), kind, ids, attrs, xattrs).prop_map(
        |(name, kind, (subtree, content, target), (mode, uid, gid, user, group, mtime, ctime, nums), xattrs)| {
            let mut n = Node::new(name, kind);
            n.mode = mode & 0o7777;
            n.uid = uid;
            n.gid = gid;
            n.user = user;
            n.group = group;
            n.mtime = mtime;
            n.ctime = ctime;
            (n.size, n.inode, n.device, n.links, n.rdev) = nums;
            n.xattrs = xattrs.into_iter().map(|(name, value)| Xattr { name, value }).collect();
            match kind {
                NodeKind::File => n.content = content.into_iter().map(|(i, l)| ChunkRef(i, l)).collect(),
                NodeKind::Dir => n.subtree = Some(subtree),
                NodeKind::Symlink => n.target = Some(target),
                _ => {}
            }
            n
        },
    )
}

fn tree() -> impl Strategy<Value = Tree> {
    proptest::collection::vec(node(), 0..8).prop_map(|mut nodes| {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        Tree::new(nodes)
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let who = ("[a-z0-9.-]{1,12}", "[a-z]{1,8}", any::<u32>(), any::<u32>());
    let what = (
        proptest::collection::vec("/[a-zA-Z0-9/ ]{0,20}", 1..4),
        proptest::collection::vec("[a-z]{1,6}", 0..3),
        id(),
        proptest::option::of(id()),
        any::<u64>(),
        proptest::option::of(id()),
    );
    let summary = any::<[u64; 12]>().prop_map(|s| Summary {
        files_new: s[0],
        files_changed: s[1],
        files_unchanged: s[2],
        dirs: s[3],
        bytes_read: s[4],
        bytes_total: s[5],
        bytes_added: s[6],
        chunks_added: s[7],
        trees_added: s[8],
        errors: s[9],
        duration_ms: s[10],
        files_changed_while_read: s[11],
    });
    (0i64..4_000_000_000, 0i32..1_000_000_000, who, what, summary).prop_map(
        |(sec, nsec, (host, user, uid, gid), (paths, tags, tree, parent, host_sequence, host_previous), summary)| {
            let time = jiff::Timestamp::new(sec, nsec).map(|t| t.to_string()).unwrap_or_default();
            Snapshot {
                version: SNAPSHOT_VERSION,
                time,
                host,
                user,
                uid,
                gid,
                paths,
                tags,
                tree,
                parent,
                host_sequence,
                host_previous,
                summary,
                // Both absent and present (a rewritten snapshot's).
                original: parent.filter(|_| host_sequence % 2 == 0),
                program_version: format!("coffer {}", crate::VERSION),
            }
        },
    )
}

/// Chunk plaintexts: random (incompressible) or repetitive (compressed).
fn chunk_plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![bytes(3000), (bytes(40), 1usize..200).prop_map(|(unit, n)| unit.repeat(n)),]
}

fn sealed_config() -> &'static (ConfigHeader, ConfigBody, Vec<u8>) {
    static CONFIG: OnceLock<(ConfigHeader, ConfigBody, Vec<u8>)> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let header = ConfigHeader { version: config::FORMAT_VERSION, repo_id: REPO };
        let body = ConfigBody::new(ChunkerParams::default());
        let stored = body.encode(keys(), &header);
        (header, body, stored)
    })
}

fn sealed_envelope() -> &'static (KeyEnvelope, Vec<u8>) {
    static ENV: OnceLock<(KeyEnvelope, Vec<u8>)> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = KeyEnvelope::seal(keys(), PASSWORD, FAST, "host", "user").expect("seal");
        let bytes = env.to_bytes();
        (env, bytes)
    })
}

fn snapshot_name(id: &Id) -> String {
    format!("snapshots/{}", id.to_hex())
}

/// Opens a stored snapshot as `Repository::load_snapshot` does.
fn load_snapshot(id: &Id, stored: &[u8]) -> crate::Result<Snapshot> {
    let plain =
        blob::open_random(keys(), &REPO, ObjectKind::Snapshot, &snapshot_name(id), b"", stored, MAX_SNAPSHOT_LEN)?;
    if keys().id(&plain) != *id {
        return Err(Error::corrupt("snapshot", id.to_hex(), "content does not match its id"));
    }
    Snapshot::from_bytes(&id.to_hex(), &plain)
}

/// Decodes a stored tree as `Repository::decode_tree` does.
fn load_tree(id: &Id, stored: &[u8]) -> crate::Result<Tree> {
    let plain = blob::decode(keys(), &REPO, ObjectKind::Tree, id, stored, MAX_TREE)?;
    Tree::from_bytes(&id.to_hex(), &plain)
}

/// Opens an envelope only when its parameters are cheap (a mutation can turn
/// them into anything up to the clamp of 4 GiB).
fn open_if_cheap(env: &KeyEnvelope) -> Option<crate::Result<Option<Keys>>> {
    let p = env.params;
    (p.memory_kib <= 1024 && p.iterations <= 4 && p.parallelism <= 4).then(|| env.open("keys/k", PASSWORD))
}

/// A frame header as `blob::frame` writes it.
fn frame_header(compression: u8, payload_len: u32, plain_len: u32) -> Vec<u8> {
    let mut h = vec![1, compression, 0, 0];
    h.extend_from_slice(&payload_len.to_le_bytes());
    h.extend_from_slice(&plain_len.to_le_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// A well-formed frame (correct padding) around `payload`, with any header.
fn hand_frame(compression: u8, payload: &[u8], plain_len: u32) -> Vec<u8> {
    let mut f = frame_header(compression, payload.len() as u32, plain_len);
    f.extend_from_slice(payload);
    let total = blob::padme(f.len() as u64) as usize;
    f.resize(total, 0);
    f
}

#[test]
fn allocation_probe_sees_large_allocations() {
    let (v, largest) = largest_allocation(|| Vec::<u8>::with_capacity(3 << 20));
    assert!(v.capacity() >= 3 << 20);
    assert!(largest >= 3 << 20, "probe saw only {largest} bytes");
    let (_, largest) = largest_allocation(|| ());
    assert_eq!(largest, 0);
}

// ---------------------------------------------------------------------------
// Huge claimed lengths

const HUGE: u32 = 0xFFFF_FFF0;

#[test]
fn frame_claiming_huge_plaintext_is_rejected_without_allocating_it() {
    // A real zstd frame of 100 KiB of zeros: small payload, and a decoder that
    // trusted the header would allocate the claimed length before inflating.
    let payload = zstd::bulk::compress(&vec![0u8; 100 << 10], 3).expect("zstd");
    for (compression, payload, plain_len) in [
        (1u8, &payload[..], HUGE),
        (1, &payload[..], u32::MAX),
        (1, &payload[..], (MAX_PLAINTEXT + 1) as u32),
        (1, &[][..], HUGE),
        (0, &payload[..], HUGE),
    ] {
        let f = hand_frame(compression, payload, plain_len);
        for max in [usize::MAX, MAX_PLAINTEXT, MAX_CHUNK, 1 << 20] {
            let (res, largest) = largest_allocation(|| blob::unframe(&f, max));
            assert!(res.is_err(), "claimed {plain_len:#x} with limit {max} was accepted");
            assert!(
                largest < 1 << 20,
                "unframe allocated {largest} bytes for a frame of {} bytes claiming {plain_len:#x}",
                f.len()
            );
        }
    }

    // Raw frame whose payload length field is huge: runs past the end.
    let mut f = frame_header(0, HUGE, HUGE);
    f.resize(64, 0);
    let (res, largest) = largest_allocation(|| blob::unframe(&f, usize::MAX));
    assert!(res.is_err());
    assert!(largest < 1 << 20);
}

#[test]
fn limit_is_the_callers_not_only_the_global_one() {
    // Within MAX_PLAINTEXT but above the caller's limit: rejected before zstd
    // allocates the claimed length.
    let payload = zstd::bulk::compress(&vec![0u8; 100 << 10], 3).expect("zstd");
    let claimed = (MAX_CHUNK + 1) as u32;
    let f = hand_frame(1, &payload, claimed);
    let (res, largest) = largest_allocation(|| blob::unframe(&f, MAX_CHUNK));
    assert!(res.is_err());
    assert!(largest < 1 << 20, "allocated {largest} bytes before checking the limit");
    // One byte over a small limit, raw.
    let f = hand_frame(0, &[1u8; 101], 101);
    assert!(blob::unframe(&f, 100).is_err());
    assert_eq!(blob::unframe(&f, 101).expect("at the limit"), vec![1u8; 101]);
}

#[test]
fn authentic_object_claiming_huge_plaintext_is_rejected_without_allocating_it() {
    // Even an object sealed with the right key (a buggy or malicious client of
    // the same repository) cannot make a reader allocate what it claims.
    let k = keys();
    let payload = zstd::bulk::compress(&vec![0u8; 100 << 10], 3).expect("zstd");
    let f = hand_frame(1, &payload, HUGE);
    for kind in [ObjectKind::Chunk, ObjectKind::Tree] {
        let id = Id([1; 32]);
        let stored = k.seal(kind, &[kind.tag(), &id.0, &REPO], f.clone());
        let (res, largest) = largest_allocation(|| blob::decode(k, &REPO, kind, &id, &stored, usize::MAX));
        assert!(res.is_err());
        assert!(largest < 1 << 20, "{kind:?}: allocated {largest} bytes");
    }
    let name = "snapshots/x";
    let nonce = [5u8; NONCE_LEN];
    let kind = ObjectKind::Snapshot;
    let mut stored = nonce.to_vec();
    stored.extend_from_slice(&k.seal(kind, &[kind.tag(), name.as_bytes(), &REPO, b"", &nonce], f));
    let (res, largest) = largest_allocation(|| blob::open_random(k, &REPO, kind, name, b"", &stored, usize::MAX));
    assert!(res.is_err());
    assert!(largest < 1 << 20, "open_random allocated {largest} bytes");
}

#[test]
fn messagepack_length_prefixes_do_not_preallocate() {
    // A tree and a snapshot whose arrays, strings and byte strings claim
    // 4 GiB entries: parsing must fail on the missing bytes, not allocate.
    let huge_array = [0xdd, 0xff, 0xff, 0xff, 0xf0];
    let huge_bin = [0xc6, 0xff, 0xff, 0xff, 0xf0];
    let huge_str = [0xdb, 0xff, 0xff, 0xff, 0xf0];
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    // {"version": 1, "nodes": [<4G entries>]}
    let mut t = vec![0x82, 0xa7];
    t.extend_from_slice(b"version");
    t.push(0x01);
    t.push(0xa5);
    t.extend_from_slice(b"nodes");
    inputs.push([&t[..], &huge_array].concat());
    // nodes: [ {"name": <bin of 4G>} ]
    inputs.push([&t[..], &[0x91, 0x81, 0xa4], b"name", &huge_bin].concat());
    // nodes: [ {"content": [<4G>]} ]
    inputs.push([&t[..], &[0x91, 0x81, 0xa7], b"content", &huge_array].concat());
    // Top-level array form, and bare huge headers.
    inputs.push([&[0x92, 0x01][..], &huge_array].concat());
    inputs.push(huge_array.to_vec());
    inputs.push(huge_bin.to_vec());
    inputs.push(huge_str.to_vec());
    // {"version": 1, "time": <str of 4G>}
    inputs.push([&[0x82, 0xa7][..], b"version", &[0x01, 0xa4], b"time", &huge_str].concat());
    // {"version": 1, "paths": [<4G>]}
    inputs.push([&[0x82, 0xa7][..], b"version", &[0x01, 0xa5], b"paths", &huge_array].concat());
    for input in &inputs {
        let (res, largest) = largest_allocation(|| Tree::from_bytes("t", input));
        assert!(res.is_err());
        assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "Tree::from_bytes({input:02x?}) allocated {largest}");
        let (res, largest) = largest_allocation(|| Snapshot::from_bytes("s", input));
        assert!(res.is_err());
        assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "Snapshot::from_bytes({input:02x?}) allocated {largest}");
        let (res, largest) = largest_allocation(|| KeyEnvelope::from_bytes("k", input));
        assert!(res.is_err());
        assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "KeyEnvelope::from_bytes({input:02x?}) allocated {largest}");
    }
}

#[test]
fn oversized_key_envelope_is_refused_before_parsing() {
    let mut big = sealed_envelope().1.clone();
    big.resize(crate::key::MAX_ENVELOPE_LEN + 1, 0);
    assert!(KeyEnvelope::from_bytes("k", &big).is_err());
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every decoder, fed random bytes: no panic, no large allocation, and
    /// nothing authenticated.
    #[test]
    fn random_bytes(data in bytes(2048), tag in any::<u8>()) {
        let k = keys();
        // Half the cases start like the real thing, to get past the first check.
        let data = match tag % 4 {
            0 => [&config::MAGIC[..], &[1, 0, 0, 0], &data].concat(),
            1 => [&[1u8, tag % 3, 0, 0][..], &data].concat(),
            _ => data,
        };
        let check = |what: &str, largest: usize| {
            prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "{} allocated {} bytes", what, largest);
            Ok(())
        };

        let (res, largest) = largest_allocation(|| KeyEnvelope::from_bytes("k", &data));
        check("KeyEnvelope::from_bytes", largest)?;
        if let Ok(env) = res
            && let Some(opened) = open_if_cheap(&env)
        {
            prop_assert!(!matches!(opened, Ok(Some(_))), "a random envelope opened");
        }
        let (res, largest) = largest_allocation(|| ConfigBody::decode(k, &data));
        check("ConfigBody::decode", largest)?;
        prop_assert!(res.is_err());
        let (_, largest) = largest_allocation(|| Snapshot::from_bytes("s", &data));
        check("Snapshot::from_bytes", largest)?;
        let (_, largest) = largest_allocation(|| Tree::from_bytes("t", &data));
        check("Tree::from_bytes", largest)?;
        let (res, largest) = largest_allocation(|| blob::unframe(&data, 1 << 20));
        check("blob::unframe", largest)?;
        if let Ok(plain) = res {
            prop_assert!(plain.len() <= 1 << 20);
        }
        for (kind, max) in [(ObjectKind::Chunk, MAX_CHUNK), (ObjectKind::Tree, MAX_TREE)] {
            let id = Id([tag; 32]);
            let (res, largest) = largest_allocation(|| blob::decode(k, &REPO, kind, &id, &data, max));
            check("blob::decode", largest)?;
            prop_assert!(res.is_err(), "random {:?} authenticated", kind);
        }
        for kind in [ObjectKind::Snapshot, ObjectKind::Config, ObjectKind::Lock] {
            let (res, largest) =
                largest_allocation(|| blob::open_random(k, &REPO, kind, "x", b"", &data, MAX_SNAPSHOT_LEN));
            check("blob::open_random", largest)?;
            prop_assert!(res.is_err(), "random {:?} authenticated", kind);
        }
    }

    /// Random bytes sealed as an authentic frame: `decode` agrees with
    /// `unframe`, and never allocates more than its limit.
    #[test]
    fn authentic_random_frames(data in bytes(2048), header in any::<[u8; 16]>(), use_header in any::<bool>()) {
        let k = keys();
        let mut data = data;
        if use_header {
            // A plausible header (version 1, known compression, zero reserved
            // bytes), random lengths.
            let mut h = header;
            h[0] = 1;
            h[1] %= 2;
            h[2..4].fill(0);
            h[12..16].fill(0);
            data.splice(0..0, h);
        }
        let direct = blob::unframe(&data, 1 << 20);
        let id = match &direct { Ok(p) => k.id(p), Err(_) => Id([9; 32]) };
        let stored = k.seal(ObjectKind::Chunk, &[ObjectKind::Chunk.tag(), &id.0, &REPO], data.clone());
        let (decoded, largest) = largest_allocation(|| blob::decode(k, &REPO, ObjectKind::Chunk, &id, &stored, 1 << 20));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND + 2 * stored.len(), "decode allocated {}", largest);
        match (direct, decoded) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "unframe {:?} but decode {:?}", a.map(|v| v.len()), b.map(|v| v.len())),
        }
    }

}

// The tamper-rejection properties are the point of the AEAD: run them more.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Chunk objects: encode, then decode (unchanged: the original; mutated:
    /// rejected; under the other kind: rejected).
    #[test]
    fn chunk_objects(plain in chunk_plaintext(), level in 0i32..4, muts in mutations()) {
        let k = keys();
        let id = k.id(&plain);
        let stored = blob::encode(k, &REPO, ObjectKind::Chunk, &id, &plain, Compression { level });
        prop_assert_eq!(&blob::decode(k, &REPO, ObjectKind::Chunk, &id, &stored, MAX_CHUNK).expect("decodes"), &plain);
        prop_assert!(blob::decode(k, &REPO, ObjectKind::Tree, &id, &stored, MAX_CHUNK).is_err());
        let bad = apply(&muts, &stored);
        prop_assume!(bad != stored);
        let res = blob::decode(k, &REPO, ObjectKind::Chunk, &id, &bad, MAX_CHUNK);
        prop_assert!(
            matches!(res, Err(Error::Corrupt { .. })),
            "tampered chunk accepted: {:?} -> {:?}", muts, res.map(|p| p.len())
        );
    }

    /// Tree objects: the full path (Tree → MessagePack → frame → seal), then
    /// back, unchanged and mutated.
    #[test]
    fn tree_objects(t in tree(), level in 0i32..4, muts in mutations()) {
        let k = keys();
        let plain = t.to_bytes();
        prop_assert_eq!(&Tree::from_bytes("t", &plain).expect("plaintext parses"), &t);
        let id = k.id(&plain);
        let stored = blob::encode(k, &REPO, ObjectKind::Tree, &id, &plain, Compression { level });
        prop_assert_eq!(&load_tree(&id, &stored).expect("decodes"), &t);
        let bad = apply(&muts, &stored);
        prop_assume!(bad != stored);
        let res = load_tree(&id, &bad);
        prop_assert!(res.is_err(), "tampered tree accepted: {:?}", muts);
    }

    /// Tree plaintexts (after authentication) with mutations: no panic, and
    /// whatever is accepted still has safe, sorted, unique names.
    #[test]
    fn tree_plaintext_mutations(t in tree(), muts in mutations()) {
        let bad = apply(&muts, &t.to_bytes());
        let (res, largest) = largest_allocation(|| Tree::from_bytes("t", &bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND + 4 * bad.len(), "allocated {}", largest);
        if let Ok(back) = res {
            for (i, n) in back.nodes.iter().enumerate() {
                prop_assert!(crate::tree::valid_name(&n.name));
                if i > 0 {
                    prop_assert!(back.nodes[i - 1].name < n.name);
                }
            }
        }
    }

    /// Snapshot objects: sealed under a random nonce and their own name.
    #[test]
    fn snapshot_objects(s in snapshot(), muts in mutations()) {
        let k = keys();
        let plain = s.to_bytes();
        prop_assert_eq!(&Snapshot::from_bytes("s", &plain).expect("plaintext parses"), &s);
        let id = k.id(&plain);
        let stored = blob::seal_random(k, &REPO, ObjectKind::Snapshot, &snapshot_name(&id), b"", &plain);
        prop_assert_eq!(&load_snapshot(&id, &stored).expect("opens"), &s);
        // Stored under another snapshot's name: rejected.
        prop_assert!(load_snapshot(&Id([0; 32]), &stored).is_err());
        let bad = apply(&muts, &stored);
        prop_assume!(bad != stored);
        let res = load_snapshot(&id, &bad);
        prop_assert!(res.is_err(), "tampered snapshot accepted: {:?}", muts);
    }

    /// Snapshot plaintexts with mutations: no panic, bounded allocation.
    #[test]
    fn snapshot_plaintext_mutations(s in snapshot(), muts in mutations()) {
        let bad = apply(&muts, &s.to_bytes());
        let (res, largest) = largest_allocation(|| Snapshot::from_bytes("s", &bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND + 4 * bad.len(), "allocated {}", largest);
        if let Ok(back) = res {
            prop_assert_eq!(back.version, SNAPSHOT_VERSION);
            prop_assert!(back.timestamp().is_ok());
        }
    }

    /// The config object: plaintext header bound to the sealed body.
    #[test]
    fn config_objects(muts in mutations()) {
        let (header, body, stored) = sealed_config();
        let (h, b) = ConfigBody::decode(keys(), stored).expect("decodes");
        prop_assert_eq!(&h, header);
        prop_assert_eq!(&b, body);
        let bad = apply(&muts, stored);
        prop_assume!(&bad != stored);
        let res = ConfigBody::decode(keys(), &bad);
        prop_assert!(res.is_err(), "tampered config accepted: {:?}", muts);
    }

    /// Key envelopes: plaintext MessagePack, every field bound as associated
    /// data. A mutated envelope either fails to parse, fails to open, or
    /// parses to exactly the original envelope.
    #[test]
    fn key_envelopes(muts in mutations()) {
        let (env, stored) = sealed_envelope();
        let back = KeyEnvelope::from_bytes("k", stored).expect("parses");
        prop_assert_eq!(&back, env);
        let opened = back.open("k", PASSWORD).expect("opens").expect("right password");
        prop_assert_eq!(opened.master(), keys().master());

        let bad = apply(&muts, stored);
        prop_assume!(&bad != stored);
        let (res, largest) = largest_allocation(|| KeyEnvelope::from_bytes("k", &bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "allocated {}", largest);
        if let Ok(parsed) = res
            && let Some(Ok(Some(_))) = open_if_cheap(&parsed)
        {
            prop_assert_eq!(&parsed, env, "a different envelope opened: {:?}", muts);
        }
    }

    /// A config body that authenticates but does not parse or validate is
    /// rejected, never panics.
    #[test]
    fn authentic_config_with_random_body(body in bytes(512)) {
        let (header, _, _) = sealed_config();
        let hdr = header.to_bytes();
        let sealed = blob::seal_random(keys(), &REPO, ObjectKind::Config, config::NAME, &hdr, &body);
        let stored = [&hdr[..], &sealed].concat();
        let _ = ConfigBody::decode(keys(), &stored);
    }
}

fn pack_kind() -> impl Strategy<Value = PackKind> {
    prop_oneof![Just(PackKind::Data), Just(PackKind::Tree)]
}

/// Up to a dozen blob-sized byte strings with their ids, as a pack holds.
fn pack_blobs() -> impl Strategy<Value = Vec<(Id, Vec<u8>, u32)>> {
    proptest::collection::vec((id(), proptest::collection::vec(any::<u8>(), 1..300), any::<u32>()), 1..12)
}

fn indexed_pack() -> impl Strategy<Value = IndexedPack> {
    (id(), pack_kind(), proptest::collection::vec((id(), 1u32..1 << 20, any::<u32>()), 0..8)).prop_map(
        |(id, kind, blobs)| {
            let mut offset = 0u32;
            let blobs: Vec<PackEntry> = blobs
                .into_iter()
                .map(|(id, length, raw_length)| {
                    let e = PackEntry { id, offset, length, raw_length };
                    offset += length;
                    e
                })
                .collect();
            IndexedPack { id, kind, length: u64::from(offset) + 4096, blobs }
        },
    )
}

// Pack headers and index objects: what format 2 reads before any blob.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A whole pack: its header decodes to the entries written, and any
    /// change to the pack's bytes is caught — by its name (the keyed hash
    /// of its bytes, as `check --read-data` and `pack::verify` test it),
    /// and, where the change reaches the header or trailer, by the header's
    /// authentication too. Nothing altered ever decodes to other entries.
    #[test]
    fn packs(kind in pack_kind(), blobs in pack_blobs(), muts in mutations()) {
        let k = keys();
        let mut w = PackWriter::new(kind);
        prop_assert!(w.add(Id([1u8; 32]), &[], 0).is_err(), "an empty blob is never written");
        for (id, data, raw) in &blobs {
            w.add(*id, data, *raw).expect("fits");
        }
        let pack = w.finish(k, &REPO);
        let stored = pack.bytes.to_vec();
        let entries = pack::verify(k, &REPO, kind, &pack.id, &stored).expect("a pack verifies");
        prop_assert_eq!(&entries, &pack.entries);
        let other = if kind == PackKind::Data { PackKind::Tree } else { PackKind::Data };
        prop_assert!(pack::decode_header(k, &REPO, other, &pack.id, stored.len() as u64, &stored).is_err());
        prop_assert!(pack::decode_header(k, &[4u8; 32], kind, &pack.id, stored.len() as u64, &stored).is_err());

        let bad = apply(&muts, &stored);
        prop_assume!(bad != stored);
        prop_assert!(pack::verify(k, &REPO, kind, &pack.id, &bad).is_err(), "altered pack verified: {:?}", muts);
        let (res, largest) =
            largest_allocation(|| pack::decode_header(k, &REPO, kind, &pack.id, bad.len() as u64, &bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "allocated {}", largest);
        if let Ok(decoded) = res {
            // Only a change to the blob area leaves the header intact; then
            // it still describes exactly the blobs that were written.
            prop_assert_eq!(&decoded, &pack.entries, "an altered header decoded: {:?}", muts);
        }
    }

    /// Index objects: sealed, opened to the same packs; altered, or opened
    /// under another name or repository, rejected.
    #[test]
    fn index_objects(packs in proptest::collection::vec(indexed_pack(), 0..6), muts in mutations()) {
        let k = keys();
        let index = Index { packs };
        let (id, stored) = index.seal(k, &REPO);
        prop_assert_eq!(&Index::open(k, &REPO, &id, &stored).expect("opens"), &index);
        let elsewhere = Id([9u8; 32]);
        prop_assert!(Index::open(k, &REPO, &elsewhere, &stored).is_err());
        prop_assert!(Index::open(k, &[4u8; 32], &id, &stored).is_err());

        let bad = apply(&muts, &stored);
        prop_assume!(bad != stored);
        let (res, largest) = largest_allocation(|| Index::open(k, &REPO, &id, &bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "allocated {}", largest);
        prop_assert!(matches!(res, Err(Error::Corrupt { .. })), "altered index opened: {:?}", muts);
    }

    /// An index plaintext that is altered and then sealed (a writer's bug,
    /// not an operator's change) decodes to something consistent or is
    /// refused, never panics or allocates without bound.
    #[test]
    fn index_plaintext_mutations(packs in proptest::collection::vec(indexed_pack(), 0..6), muts in mutations()) {
        let plain = Index { packs }.encode();
        let bad = apply(&muts, &plain);
        let (res, largest) = largest_allocation(|| Index::decode(&bad));
        prop_assert!(largest <= RANDOM_INPUT_ALLOC_BOUND, "allocated {}", largest);
        if let Ok(index) = res {
            prop_assert_eq!(index.encode(), bad);
        }
    }
}

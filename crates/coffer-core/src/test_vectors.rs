//! Key-derivation test vectors (see docs/format.md).
//!
//! Every constant below is copied from `docs/format.md`, where it was
//! computed with an independent implementation (Python's `blake3` package and
//! a from-scratch AES-PMAC-SIV). If one of these tests fails, the repository
//! format has changed: existing repositories would no longer open.

use crate::blob::{self, Compression, padme};
use crate::chunker::{Chunker, ChunkerParams, StreamChunker};
use crate::config::{ConfigHeader, FORMAT_VERSION};
use crate::crypto::{self, Keys, ObjectKind, context};
use crate::repo::object_key;

/// The master key of the vectors: the bytes 0x00, 0x01, …, 0x3f.
fn master() -> [u8; 64] {
    let mut m = [0u8; 64];
    for (i, b) in m.iter_mut().enumerate() {
        *b = i as u8;
    }
    m
}

/// The repository id of the vectors: the bytes 0x40, 0x41, …, 0x5f.
fn repo_id() -> [u8; 32] {
    let mut r = [0u8; 32];
    for (i, b) in r.iter_mut().enumerate() {
        *b = 0x40 + i as u8;
    }
    r
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector is hex")
}

const ID_KEY: &str = "543662aa41929f6c1a17ad41b85d8adb7cae47b661a51f7e9a55460fce5cb097";

const AEAD_KEYS: [(ObjectKind, &str, &str); 5] = [
    (
        ObjectKind::Chunk,
        context::CHUNK,
        "c75183fe760c11361b634969b31fe604f5bfd3e46c541d5ea840e05a8c823151\
         a409ff390b1e138e2d1756da6c39879932498fbb8d3c9147506d8429d8ab1268",
    ),
    (
        ObjectKind::Tree,
        context::TREE,
        "7be86f3f5a4a0e92ca258756ce021fc0b9eaa0410fb9faa28bd906337bb3f6fc\
         9eed219df3029b072b217d97f2cccba7d3d3293fadc326f5220bbaa98adc6ff2",
    ),
    (
        ObjectKind::Snapshot,
        context::SNAPSHOT,
        "04d8b489353502c38e020d55737a5cd15e2af9515ebd5edba0bbd4ed670f1904\
         83cfe8f29b7666a6c108f1f0654dd9c545e6c085db35ab4b62a619bbc75ad372",
    ),
    (
        ObjectKind::Config,
        context::CONFIG,
        "a7fc3ae3541130496d0878e721e3ac82d788603233126e6e380ad13700976def\
         1c226540592d5eba2b16b37446b40e50167b093ead0ff260b3393674493295d1",
    ),
    (
        ObjectKind::Lock,
        context::LOCK,
        "7a564aae9cc5e8ceabdc5fdedab858080b33181434634d8660329f64adac2978\
         0fe5aa4941e406eb0f2e8ab60a4472694f84bbb0ed1281203339ef2d94773c4e",
    ),
];

const GEAR_FIRST_32: &str = "842ba6e6119ec30073394ed9939dd10c88720872aa82f39deb986413f4ff6105";
const GEAR_TABLE_BLAKE3: &str = "438cbc79ae8b347048e099aa275edabf1a28946b984f3907b5d2fd3b35ec736a";
const ID_OF_COFFER: &str = "fa430b734b8a2315a0a37ce268f13e7ac4298c5070cb9ddb8c0aa8a24a1c6176";

#[test]
fn context_strings() {
    // The contexts are part of the format; their exact bytes are in the doc.
    let expected = [
        (context::ID, "coffer 2026-11-27 object id key v1", 34),
        (context::CHUNK, "coffer 2026-11-27 chunk aead key v1", 35),
        (context::TREE, "coffer 2026-11-27 tree aead key v1", 34),
        (context::SNAPSHOT, "coffer 2026-11-27 snapshot aead key v1", 38),
        (context::CONFIG, "coffer 2026-11-27 config aead key v1", 36),
        (context::LOCK, "coffer 2026-11-27 lock aead key v1", 34),
        (context::GEAR, "coffer 2026-11-27 chunker gear table v1", 39),
    ];
    for (actual, text, len) in expected {
        assert_eq!(actual, text);
        assert_eq!(actual.len(), len, "{text}");
    }
}

#[test]
fn derived_subkeys() {
    let m = master();
    let mut id_key = [0u8; 32];
    crypto::derive(&m, context::ID, &mut id_key);
    assert_eq!(hex::encode(id_key), ID_KEY);
    for (kind, ctx, expected) in AEAD_KEYS {
        let mut key = [0u8; 64];
        crypto::derive(&m, ctx, &mut key);
        assert_eq!(hex::encode(key), expected, "{kind:?}");
    }
    let mut gear = [0u8; 2048];
    crypto::derive(&m, context::GEAR, &mut gear);
    assert_eq!(hex::encode(&gear[..32]), GEAR_FIRST_32);
    assert_eq!(blake3::hash(&gear).to_hex().as_str(), GEAR_TABLE_BLAKE3);
    // The XOF output is a prefix code: a shorter read is a prefix of a longer one.
    let mut short = [0u8; 32];
    crypto::derive(&m, context::CHUNK, &mut short);
    assert_eq!(hex::encode(short), &AEAD_KEYS[0].2[..64]);
}

#[test]
fn keys_from_master_use_the_documented_subkeys() {
    let keys = Keys::from_master(&master());
    assert_eq!(keys.master(), &master());

    // The id key: keyed BLAKE3 of "coffer".
    assert_eq!(keys.id(b"coffer").to_hex(), ID_OF_COFFER);
    let id_key: [u8; 32] = unhex(ID_KEY).try_into().unwrap();
    assert_eq!(blake3::keyed_hash(&id_key, b"coffer").to_hex().as_str(), ID_OF_COFFER);

    // Each kind seals with exactly its documented key: sealing is
    // deterministic, so equal outputs mean equal keys.
    for (kind, _, hex_key) in AEAD_KEYS {
        let key: [u8; 64] = unhex(hex_key).try_into().unwrap();
        let headers: [&[u8]; 2] = [kind.tag(), b"vector"];
        let plain = b"coffer test vector plaintext".to_vec();
        assert_eq!(keys.seal(kind, &headers, plain.clone()), crypto::seal_with(&key, &headers, &plain), "{kind:?}");
    }

    // The gear table: little-endian u64s of the 2048 derived bytes.
    let table = keys.gear_table();
    assert_eq!(table[0], 0x00c3_9e11_e6a6_2b84);
    assert_eq!(table[1], 0x0cd1_9d93_d94e_3973);
    assert_eq!(table[255], 0x26e1_4092_8616_04bd);
    assert_eq!(table[0] << 1, 0x0187_3c23_cd4c_5708, "shifted table entry 0");
    assert_eq!(table[1] << 1, 0x19a3_3b27_b29c_72e6, "shifted table entry 1");
}

#[test]
fn padme_examples() {
    for (len, padded) in [
        (0u64, 0u64),
        (1, 1),
        (9, 10),
        (16, 16),
        (17, 18),
        (22, 22),
        (100, 104),
        (129, 144),
        (1000, 1024),
        (4112, 4352),
        (65_553, 67_584),
        (524_304, 540_672),
        (1_000_000, 1_015_808),
        (1_048_592, 1_081_344),
        (8_388_624, 8_650_752),
    ] {
        assert_eq!(padme(len), padded, "padme({len})");
    }
}

#[test]
fn frame_lengths() {
    // A short plaintext is never compressed: header ‖ "coffer", 22 bytes,
    // which Padmé leaves as it is.
    let f = blob::frame(b"coffer", Compression { level: 3 });
    assert_eq!(hex::encode(&f), "01000000060000000600000000000000636f66666572");

    // A 1 MiB incompressible plaintext: raw, 16 + 1 048 576 = 1 048 592
    // bytes padded to 1 081 344.
    let mut noise = vec![0u8; 1 << 20];
    blake3::Hasher::new().update(b"incompressible").finalize_xof().fill(&mut noise);
    let f = blob::frame(&noise, Compression { level: 3 });
    assert_eq!(f[1], 0, "stored raw");
    assert_eq!(f.len(), 1_081_344);
    let keys = Keys::from_master(&master());
    let id = keys.id(&noise);
    let stored = blob::encode(&keys, &repo_id(), ObjectKind::Chunk, &id, &noise, Compression { level: 3 });
    assert_eq!(stored.len(), 1_081_344 + crypto::TAG_LEN);

    // Compression is kept only when it saves more than len/32 bytes.
    let text = b"family photos ".repeat(100);
    let f = blob::frame(&text, Compression { level: 3 });
    assert_eq!(f[1], 1, "stored as zstd");
    let payload = u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as usize;
    assert!(payload < text.len() - text.len() / 32);
    assert_eq!(f.len() as u64, padme(16 + payload as u64));
}

#[test]
fn chunk_object() {
    let keys = Keys::from_master(&master());
    let id = keys.id(b"coffer");
    assert_eq!(
        object_key(ObjectKind::Chunk, &id),
        "chunks/fa/fa430b734b8a2315a0a37ce268f13e7ac4298c5070cb9ddb8c0aa8a24a1c6176"
    );
    let stored = blob::encode(&keys, &repo_id(), ObjectKind::Chunk, &id, b"coffer", Compression { level: 3 });
    assert_eq!(hex::encode(&stored), "563bb7b658595909d8f0d65e468974c7f3e42108bca43ae3c71bf5f4061707a4a3acb5855e7c");
    assert_eq!(blob::decode(&keys, &repo_id(), ObjectKind::Chunk, &id, &stored, 1 << 20).unwrap(), b"coffer");
}

#[test]
fn config_header() {
    let header = ConfigHeader { version: FORMAT_VERSION, repo_id: repo_id() };
    assert_eq!(
        hex::encode(header.to_bytes()),
        "636f666665720001020000000000000040414243444546474849\
         4a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    );
}

#[test]
fn default_chunker_masks() {
    use fastcdc::v2020;
    let p = ChunkerParams::default();
    assert_eq!((p.min_size, p.avg_size, p.max_size, p.normalization), (524_288, 1_048_576, 8_388_608, 1));
    let (mask_s, mask_l) = v2020::select_masks(p.avg_size as usize, v2020::Normalization::Level1);
    assert_eq!(mask_s, 0x0000_d917_6753_7000);
    assert_eq!(mask_l, 0x0000_d917_0753_7000);
}

#[test]
fn chunk_boundaries() {
    // 12 MiB of BLAKE3("coffer chunker test vector") XOF output, cut with
    // the default parameters and the vectors' gear table.
    let mut data = vec![0u8; 12 << 20];
    blake3::Hasher::new().update(b"coffer chunker test vector").finalize_xof().fill(&mut data);
    let keys = Keys::from_master(&master());
    let chunker = Chunker::new(&ChunkerParams::default(), &keys.gear_table()).unwrap();
    let expected = [1_442_693, 1_408_444, 1_200_691, 1_552_189, 533_652, 2_153_365, 2_599_727, 1_202_295, 489_856];
    let lens: Vec<usize> = chunker.split(&data).map(|c| c.len()).collect();
    assert_eq!(lens, expected);
    let mut stream = StreamChunker::new(&chunker, &data[..]);
    let mut streamed = Vec::new();
    while let Some(c) = stream.next_chunk().unwrap() {
        streamed.push(c.len());
    }
    assert_eq!(streamed, expected);
    assert_eq!(
        keys.id(&data[..expected[0]]).to_hex(),
        "319c918740afef087ac635247c1058b32c86cba82c16e0ff8f62c56dace27d9d"
    );
}

//! The per-chunk hot path: chunk, id, compress + encrypt, and the reverse,
//! in bytes per second, for incompressible (JPEG-like) and half-compressible
//! (RAW-like) data.
//!
//! Run: `cargo bench -p coffer-benches --bench chunk_path`

use coffer_benches::{half_compressible, incompressible};
use coffer_core::blob::{self, Compression};
use coffer_core::chunker::{Chunker, ChunkerParams};
use coffer_core::crypto::{Keys, ObjectKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const LEN: usize = 32 * 1024 * 1024;

fn bench(c: &mut Criterion) {
    let keys = Keys::from_master(&[3u8; 64]);
    let repo_id = [1u8; 32];
    let chunker = Chunker::new(&ChunkerParams::default(), &keys.gear_table()).expect("default params");
    let compression = Compression { level: 3 };
    for (name, data) in [("incompressible", incompressible(LEN, 1)), ("half-compressible", half_compressible(LEN, 2))] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(LEN as u64));
        g.sample_size(10);
        g.bench_function("chunk", |b| b.iter(|| chunker.split(black_box(&data)).count()));
        g.bench_function("id", |b| b.iter(|| keys.id(black_box(&data))));
        let chunks: Vec<&[u8]> = chunker.split(&data).collect();
        g.bench_function("compress+encrypt", |b| {
            b.iter(|| {
                for ch in &chunks {
                    let id = keys.id(ch);
                    black_box(blob::encode(&keys, &repo_id, ObjectKind::Chunk, &id, ch, compression));
                }
            })
        });
        g.bench_function("frame only (compress+pad)", |b| {
            b.iter(|| {
                for ch in &chunks {
                    black_box(blob::frame(ch, compression));
                }
            })
        });
        g.bench_function("whole path", |b| {
            b.iter(|| {
                for ch in chunker.split(black_box(&data)) {
                    let id = keys.id(ch);
                    black_box(blob::encode(&keys, &repo_id, ObjectKind::Chunk, &id, ch, compression));
                }
            })
        });
        let encoded: Vec<(coffer_core::Id, Vec<u8>)> = chunks
            .iter()
            .map(|ch| {
                let id = keys.id(ch);
                (id, blob::encode(&keys, &repo_id, ObjectKind::Chunk, &id, ch, compression))
            })
            .collect();
        g.bench_function("decode (decrypt+decompress+verify id)", |b| {
            b.iter(|| {
                for (id, enc) in &encoded {
                    black_box(blob::decode(&keys, &repo_id, ObjectKind::Chunk, id, enc, 16 << 20).expect("decodes"));
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

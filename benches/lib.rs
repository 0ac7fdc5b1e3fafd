//! Shared helpers for coffer's benchmarks.

/// Deterministic incompressible bytes, like JPEG data.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic data that compresses to about half, like RAW photo data.
pub fn half_compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut out = incompressible(len, seed);
    for (i, b) in out.iter_mut().enumerate() {
        if (i / 64) % 2 == 0 {
            *b = (i % 7) as u8;
        }
    }
    out
}

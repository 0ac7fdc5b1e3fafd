//! Key-derivation test vectors (see docs/format.md).

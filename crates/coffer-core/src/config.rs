//! The repository's `config` object.
//!
//! ```text
//! config = magic "coffer\0\x01"(8) ‖ format version u32le ‖ 4 zero bytes ‖ repository id(32)
//!          ‖ nonce(16) ‖ SIV( frame(MessagePack(ConfigBody)) )
//! ```
//!
//! The first 48 bytes are plaintext so that a client can read the format
//! version before it has a key, and say "needs a newer coffer" instead of
//! "wrong password"; they are bound into the encrypted part as associated data.

use serde::{Deserialize, Serialize};

use crate::blob;
use crate::chunker::ChunkerParams;
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"coffer\0\x01";
/// The format version this library writes and the only one it reads.
/// Format 1 (one object per chunk, coffer 0.1) had no users and is refused
/// with [`Error::FormatRetired`]; there is no migration.
pub const FORMAT_VERSION: u32 = 2;
/// Pack target sizes a config may ask for (docs/format.md §17).
pub const PACK_SIZE_RANGE: std::ops::RangeInclusive<u32> = (4 << 20)..=(512 << 20);
/// The design's target sizes: 32 MiB for data packs, 4 MiB for tree packs.
pub const DEFAULT_DATA_PACK_SIZE: u32 = 32 << 20;
pub const DEFAULT_TREE_PACK_SIZE: u32 = 4 << 20;
pub const HEADER_LEN: usize = 48;
/// The object's key in the repository.
pub const NAME: &str = "config";
const MAX_BODY: usize = 64 * 1024;
/// The most bytes a stored `config` can take: the header and the sealed body.
pub const MAX_STORED: u64 = HEADER_LEN as u64 + crate::blob::max_stored_random_len(MAX_BODY);

/// The plaintext header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigHeader {
    pub version: u32,
    pub repo_id: [u8; 32],
}

impl ConfigHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[16..48].copy_from_slice(&self.repo_id);
        out
    }

    /// Parses the header and checks that this library can read the format.
    pub fn parse(stored: &[u8]) -> Result<ConfigHeader> {
        if stored.len() < HEADER_LEN || &stored[..8] != MAGIC {
            return Err(Error::corrupt("config", NAME, "not a coffer config object (bad magic)"));
        }
        let version = u32::from_le_bytes([stored[8], stored[9], stored[10], stored[11]]);
        if version == 0 {
            return Err(Error::corrupt("config", NAME, "format version 0 does not exist"));
        }
        if version < FORMAT_VERSION {
            return Err(Error::FormatRetired { found: version });
        }
        if version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        let mut repo_id = [0u8; 32];
        repo_id.copy_from_slice(&stored[16..48]);
        Ok(ConfigHeader { version, repo_id })
    }
}

/// The encrypted settings of a repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigBody {
    pub version: u32,
    pub chunker: ChunkerParams,
    /// zstd level for chunks and trees; 0 stores everything raw.
    pub compression_level: i32,
    pub created: String,
    /// Blob bytes at which a data pack is sealed.
    pub data_pack_size: u32,
    /// The same for tree packs.
    pub tree_pack_size: u32,
    /// The storage class data packs are written in (S3), chosen at `init`
    /// so that every command that writes packs uses it; upper case.
    /// Absent: the bucket's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_storage_class: Option<String>,
    /// S3 Object Lock, chosen at `init`: every object but locks is written
    /// retained this many days, and each backup extends what its snapshot
    /// uses. Absent: no retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::backend::ObjectLock>,
}

impl ConfigBody {
    pub fn new(chunker: ChunkerParams) -> ConfigBody {
        ConfigBody {
            version: FORMAT_VERSION,
            chunker,
            compression_level: 2,
            created: jiff::Timestamp::now().to_string(),
            data_pack_size: DEFAULT_DATA_PACK_SIZE,
            tree_pack_size: DEFAULT_TREE_PACK_SIZE,
            data_storage_class: None,
            object_lock: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.chunker.validate()?;
        if !(0..=19).contains(&self.compression_level) {
            return Err(Error::corrupt(
                "config",
                NAME,
                format!("compression level {} out of range", self.compression_level),
            ));
        }
        if let Some(class) = &self.data_storage_class
            && !crate::backend::valid_storage_class(class)
        {
            return Err(Error::corrupt("config", NAME, format!("{class:?} is not a storage class")));
        }
        for (what, size) in [("data", self.data_pack_size), ("tree", self.tree_pack_size)] {
            if !PACK_SIZE_RANGE.contains(&size) {
                return Err(Error::corrupt(
                    "config",
                    NAME,
                    format!("{what} pack size {size} is outside 4 MiB to 512 MiB"),
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self, keys: &Keys, header: &ConfigHeader) -> Vec<u8> {
        let hdr = header.to_bytes();
        let body = rmp_serde::to_vec_named(self).unwrap_or_default();
        let sealed = blob::seal_random(keys, &header.repo_id, ObjectKind::Config, NAME, &hdr, &body);
        let mut out = hdr.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decode(keys: &Keys, stored: &[u8]) -> Result<(ConfigHeader, ConfigBody)> {
        let header = ConfigHeader::parse(stored)?;
        let body = blob::open_random(
            keys,
            &header.repo_id,
            ObjectKind::Config,
            NAME,
            &stored[..HEADER_LEN],
            &stored[HEADER_LEN..],
            MAX_BODY,
        )
        .map_err(|_| {
            Error::corrupt(
                "config",
                NAME,
                "does not authenticate under this key: it was altered, or the key belongs to another repository",
            )
        })?;
        let body: ConfigBody =
            rmp_serde::from_slice(&body).map_err(|e| Error::corrupt("config", NAME, format!("does not parse: {e}")))?;
        if body.version != header.version {
            return Err(Error::corrupt("config", NAME, "encrypted version differs from the plaintext header"));
        }
        body.validate()?;
        Ok((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_version_check() {
        let keys = Keys::from_master(&[9; 64]);
        let header = ConfigHeader { version: FORMAT_VERSION, repo_id: [5; 32] };
        let body = ConfigBody::new(ChunkerParams::default());
        let bytes = body.encode(&keys, &header);
        let (h, b) = ConfigBody::decode(&keys, &bytes).unwrap();
        assert_eq!((h, b), (header, body));

        let mut newer = bytes.clone();
        newer[8] = 3;
        assert!(matches!(ConfigBody::decode(&keys, &newer), Err(Error::UnsupportedVersion { found: 3, .. })));
        let mut retired = bytes.clone();
        retired[8] = 1;
        let err = ConfigHeader::parse(&retired).unwrap_err();
        assert!(matches!(err, Error::FormatRetired { found: 1 }), "{err}");
        assert!(err.to_string().contains("coffer 0.1"), "{err}");

        let mut odd = ConfigBody::new(ChunkerParams::default());
        odd.data_pack_size = 1 << 20;
        assert!(odd.validate().is_err(), "a 1 MiB data pack target is refused");
        let mut other_repo = bytes.clone();
        other_repo[20] ^= 1;
        assert!(matches!(ConfigBody::decode(&keys, &other_repo), Err(Error::Corrupt { .. })));
        assert!(ConfigBody::decode(&Keys::from_master(&[8; 64]), &bytes).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let keys = Keys::from_master(&[9; 64]);
            let _ = ConfigBody::decode(&keys, &data);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            let _ = ConfigBody::decode(&keys, &with_magic);
        }
    }
}

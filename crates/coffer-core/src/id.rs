//! Object ids: 32 bytes, written as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of a stored object: the keyed BLAKE3 hash of its plaintext.
///
/// Keyed, so that someone who can list the repository cannot confirm that a
/// file they know is stored in it by hashing it themselves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub const LEN: usize = 32;

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first `n` hex digits, as shown to people.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(8);
        s
    }

    /// Parses exactly 64 lowercase hex digits; anything else is `None`.
    ///
    /// Lowercase only, so that one id has exactly one object name and a
    /// listing can never count the same object twice.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }

    pub fn random() -> Id {
        let mut out = [0u8; 32];
        crate::crypto::fill_random(&mut out);
        Id(out)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::from_hex(s).ok_or_else(|| crate::Error::InvalidInput(format!("not an object id: {s:?}")))
    }
}

/// Raw bytes in the stored (binary) format; hex in human-readable ones
/// such as the JSON output of the CLI.
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { s.serialize_bytes(&self.0) }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            return Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"));
        }
        let bytes: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        Ok(Id(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = Id([0xab; 32]);
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short(), "abababab");
    }

    #[test]
    fn rejects_malformed_names() {
        assert_eq!(Id::from_hex(&"AB".repeat(32)), None, "uppercase");
        assert_eq!(Id::from_hex(&"ab".repeat(31)), None, "short");
        assert_eq!(Id::from_hex(&format!("{}.tmp", "ab".repeat(32))), None, "temp name");
        assert_eq!(Id::from_hex(&"zz".repeat(32)), None, "not hex");
    }

    #[test]
    fn serde_round_trip() {
        let id = Id([7; 32]);
        let bytes = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(bytes.len(), 2 + 32, "bin8 header + 32 bytes");
        assert_eq!(rmp_serde::from_slice::<Id>(&bytes).unwrap(), id);
        let short = rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![1u8; 31])).unwrap();
        assert!(rmp_serde::from_slice::<Id>(&short).is_err());
    }

    #[test]
    fn json_uses_hex() {
        let id = Id([0x5a; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
    }
}

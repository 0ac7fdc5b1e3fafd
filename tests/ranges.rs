//! Ranged reads (a blob of a pack, a pack's header) on both backends: exactly
//! the bytes asked for, an error naming the object when it ends first, and
//! the blocking form on a local folder agreeing with the async one.

use coffer_core::backend::{BackendError, Bytes};

use crate::common::{Backend, Env, both_backends, random_bytes};

both_backends!(ranged_reads_return_exactly_the_range);

fn ranged_reads_return_exactly_the_range(backend: Backend) {
    let env = Env::new_on(backend);
    let store = env.library_backend();
    let data = random_bytes(300_000, 11);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        store.create().await.unwrap();
        store.put("data/ab/abcd", Bytes::from(data.clone())).await.unwrap();
        store.sync().await.unwrap();
        for (offset, len) in [(0u64, 1u64), (0, 300_000), (12_345, 100_000), (299_999, 1), (150_000, 0)] {
            let got = store.get_range("data/ab/abcd", offset, len).await.unwrap();
            assert_eq!(got, &data[offset as usize..(offset + len) as usize], "{offset}+{len}");
        }
        for (offset, len) in [(299_999u64, 2u64), (300_000, 1), (1 << 40, 10)] {
            let err = store.get_range("data/ab/abcd", offset, len).await.unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(&err, BackendError::Io { key, .. } if key == "data/ab/abcd")
                    && message.contains("ends before"),
                "{offset}+{len}: {message}"
            );
        }
        let err = store.get_range("data/ab/none", 0, 10).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    });
    let mut expected_down = 1 + 300_000 + 100_000 + 1;
    if backend == Backend::S3 {
        // The server answers the range 299,999+2 with the one byte there is,
        // which comes down before the read is refused as short.
        expected_down += 1;
    }
    if let Some(blocking) = store.blocking_reads() {
        assert_eq!(blocking.get_range_blocking("data/ab/abcd", 7, 70_000).unwrap(), &data[7..70_007]);
        assert!(blocking.get_range_blocking("data/ab/abcd", 299_000, 2000).is_err());
        assert!(blocking.get_range_blocking("data/ab/none", 0, 1).unwrap_err().is_not_found());
        expected_down += 70_000;
    }
    // Exactly the bytes of the ranges that were read: nothing more came down.
    assert_eq!(store.wire_stats().bytes_down, expected_down);
}

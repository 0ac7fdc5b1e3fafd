//! A tree's plaintext (after authentication): MessagePack plus the checks
//! restore relies on (safe names, sorted, fields matching the kind).

#![no_main]

use coffer_core::tree::{Tree, valid_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = Tree::from_bytes("trees/fuzz", data) else {
        return;
    };
    for (i, n) in t.nodes.iter().enumerate() {
        assert!(valid_name(&n.name), "accepted unsafe name {:?}", n.name);
        if i > 0 {
            assert!(t.nodes[i - 1].name < n.name, "accepted unsorted or duplicate names");
        }
    }
    let back = Tree::from_bytes("trees/fuzz", &t.to_bytes()).expect("re-encoded tree parses");
    assert_eq!(back, t);
});

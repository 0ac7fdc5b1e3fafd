//! Key envelopes (`keys/<id>`) are read before anything is authenticated, so
//! their parser sees raw attacker bytes. Parse them; when the parameters are
//! cheap enough to run argon2id inside a fuzzer, open them too.

#![no_main]

use coffer_core::key::KeyEnvelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = KeyEnvelope::from_bytes("keys/fuzz", data) else {
        return;
    };
    // Re-encoding a parsed envelope must give an envelope that parses to the same value.
    let again = KeyEnvelope::from_bytes("keys/fuzz", &env.to_bytes()).expect("re-encoded envelope parses");
    assert_eq!(again, env);
    let p = env.params;
    if p.memory_kib <= 64 && p.iterations <= 2 && p.parallelism <= 2 {
        // Err (bad parameters or lengths) and Ok(None) (wrong password) are both fine; a
        // random envelope opening is astronomically unlikely but would not be a crash.
        let _ = env.open("keys/fuzz", b"fuzz password");
    }
});

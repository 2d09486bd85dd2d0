//! Cheap per-thread randomness for request ids and load balancing: a splitmix64 sequence seeded
//! once per thread from the OS, so the hot path never makes a syscall for it. Not for secrets.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // std seeds RandomState from the OS once per thread; hashing nothing reads that seed out.
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A uniformly distributed u64.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_u64_does_not_repeat_in_a_short_run() {
        let mut seen: Vec<u64> = (0..10_000).map(|_| super::next_u64()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }
}

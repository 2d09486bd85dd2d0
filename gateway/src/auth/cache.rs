//! Verified tokens, so a repeat token skips signature verification.
//!
//! Keyed by the token's SHA-256: collision-resistant, so a forged token can never borrow a
//! verified one's entry, and the token itself is not kept. An entry is good until the token's
//! `exp` and only for the key-set generation it was verified with (a rotation re-verifies).
//! Bounded in entries and in the bytes of the tokens they stand for: a full shard first drops
//! expired entries, then arbitrary ones.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use super::Claims;

const SHARDS: usize = 16;
/// Per provider. Tokens past this many distinct ones are verified as usual, just not all cached.
pub const CAPACITY: usize = 16 * 1024;
/// Per provider, the bytes of the tokens cached at once: an entry keeps the token's claims, whose
/// size follows the token's. Everyday tokens (under 1 KiB) fill every entry within it; tokens near
/// the 8 KiB limit, with claims of kilobytes, fill some 2,000 (about 100 MB otherwise).
pub const MAX_CACHED_TOKEN_BYTES: usize = 16 * 1024 * 1024;

pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[derive(Debug)]
struct Entry {
    /// The token's `exp`, in seconds since the epoch.
    expires_at: u64,
    generation: u64,
    claims: Arc<Claims>,
    /// The token's length, counted against [`MAX_CACHED_TOKEN_BYTES`].
    size: usize,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Digest, Entry, BuildHasherDefault<DigestHasher>>,
    /// The sizes of its entries' tokens, summed.
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.remove(digest) {
            self.bytes -= entry.size;
        }
    }

    fn has_room(&self, size: usize) -> bool {
        self.entries.len() < CAPACITY / SHARDS && self.bytes + size <= MAX_CACHED_TOKEN_BYTES / SHARDS
    }
}

#[derive(Debug)]
pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
}

/// A digest's own bytes as its hash: SHA-256 output is already uniform, so hashing it again
/// (SipHash over 32 bytes per lookup) buys nothing. Flooding needs many colliding entries, and
/// only verified tokens are ever stored.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The array's length comes first (always 32), then the digest. Its last 8 bytes suffice;
        // not its first, whose first byte picks the shard and so is nearly the same within one.
        if let Some(word) = bytes.last_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl TokenCache {
    fn shard(&self, digest: &Digest) -> std::sync::MutexGuard<'_, Shard> {
        // The digest is uniformly distributed, so its first byte spreads tokens evenly.
        self.shards[usize::from(digest[0]) % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The claims of a token verified before, unless it has expired or the keys changed since.
    pub fn get(&self, digest: &Digest, now: u64, generation: u64) -> Option<Arc<Claims>> {
        let mut shard = self.shard(digest);
        let entry = shard.entries.get(digest)?;
        if entry.expires_at > now && entry.generation == generation {
            return Some(entry.claims.clone());
        }
        shard.remove(digest);
        None
    }

    /// Keeps the claims of a token of `size` bytes, verified now.
    pub fn insert(&self, digest: Digest, size: usize, expires_at: u64, generation: u64, claims: Arc<Claims>, now: u64) {
        let mut shard = self.shard(&digest);
        shard.remove(&digest);
        if !shard.has_room(size) {
            shard.entries.retain(|_, entry| entry.expires_at > now);
            shard.bytes = shard.entries.values().map(|entry| entry.size).sum();
        }
        while !shard.has_room(size) {
            let Some(victim) = shard.entries.keys().next().copied() else { return };
            shard.remove(&victim);
        }
        shard.bytes += size;
        shard.entries.insert(digest, Entry { expires_at, generation, claims, size });
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Claims> {
        Arc::new(Claims::new())
    }

    #[test]
    fn get_before_expiry_same_generation_hit() {
        let cache = TokenCache::default();
        cache.insert(digest("t"), 1, 100, 1, claims(), 50);
        assert!(cache.get(&digest("t"), 99, 1).is_some());
        assert!(cache.get(&digest("other"), 99, 1).is_none());
    }

    #[test]
    fn get_at_expiry_or_new_generation_miss() {
        let cache = TokenCache::default();
        cache.insert(digest("t"), 1, 100, 1, claims(), 50);
        assert!(cache.get(&digest("t"), 100, 1).is_none());
        cache.insert(digest("t"), 1, 100, 1, claims(), 50);
        assert!(cache.get(&digest("t"), 60, 2).is_none());
        assert_eq!(cache.len(), 0, "stale entries are dropped when found");
    }

    #[test]
    fn digests_in_one_shard_spread_over_the_low_bits_of_their_hash() {
        use std::hash::BuildHasher as _;
        let hashes = (0..1000)
            .map(|i| digest(&i.to_string()))
            .filter(|d| usize::from(d[0]) % SHARDS == 0)
            .map(|d| BuildHasherDefault::<DigestHasher>::default().hash_one(d) % 16);
        let distinct: std::collections::HashSet<u64> = hashes.collect();
        assert!(distinct.len() > 8, "the table's bucket bits must vary: {distinct:?}");
    }

    #[test]
    fn insert_beyond_capacity_bounded() {
        let cache = TokenCache::default();
        for i in 0..CAPACITY * 2 {
            cache.insert(digest(&i.to_string()), 1, 100, 1, claims(), 50);
        }
        assert!(cache.len() <= CAPACITY);
        assert!(cache.get(&digest(&(CAPACITY * 2 - 1).to_string()), 60, 1).is_some(), "the newest entry is kept");
    }

    /// Tokens near the 8 KiB limit carry claims of kilobytes: fewer of them fit.
    #[test]
    fn insert_beyond_the_token_bytes_bounded() {
        const SIZE: usize = 8 * 1024;
        let cache = TokenCache::default();
        for i in 0..CAPACITY {
            cache.insert(digest(&i.to_string()), SIZE, 100, 1, claims(), 50);
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(held <= MAX_CACHED_TOKEN_BYTES, "{held} bytes held");
        assert!(
            cache.len() <= MAX_CACHED_TOKEN_BYTES / SIZE && cache.len() > MAX_CACHED_TOKEN_BYTES / SIZE / 2,
            "{} entries",
            cache.len()
        );
        assert!(cache.get(&digest(&(CAPACITY - 1).to_string()), 60, 1).is_some(), "the newest entry is kept");
        // Taken out as they go: a shard's count matches what it holds.
        cache.get(&digest(&(CAPACITY - 1).to_string()), 100, 1);
        for shard in cache.shards.iter() {
            let shard = shard.lock().unwrap();
            assert_eq!(shard.bytes, shard.entries.values().map(|entry| entry.size).sum::<usize>());
        }
    }
}

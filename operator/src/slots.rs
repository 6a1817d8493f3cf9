//! Counted slots per key with a cap: open connections per source address, tunnels per edge.
//! A slot is released when dropped, however its holder ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// At most `cap` slots held per key at once (0: no limit).
#[derive(Debug)]
pub(crate) struct Slots<K: Hash + Eq + Clone> {
    cap: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

/// One held slot of `key`; released when dropped.
#[derive(Debug)]
pub(crate) struct Slot<K: Hash + Eq + Clone> {
    key: K,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// At most `cap` slots per key; 0: no limit.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            held: Arc::default(),
        }
    }

    /// A slot for `key`, or `None` when it holds `cap` already.
    pub(crate) fn acquire(&self, key: &K) -> Option<Slot<K>> {
        let mut held = self.held.lock();
        let n = held.entry(key.clone()).or_default();
        if self.cap > 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            key: key.clone(),
            held: self.held.clone(),
        })
    }

    /// Slots `key` holds right now.
    #[cfg(test)]
    pub(crate) fn held(&self, key: &K) -> usize {
        self.held.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_released() {
        let slots = Slots::new(2);
        let first = slots.acquire(&"a").unwrap();
        let _second = slots.acquire(&"a").unwrap();
        assert!(slots.acquire(&"a").is_none(), "a third slot of one key");
        assert!(slots.acquire(&"b").is_some(), "another key is not affected");
        drop(first);
        assert_eq!(slots.held(&"a"), 1);
        assert!(
            slots.acquire(&"a").is_some(),
            "a dropped slot is free again"
        );
        let unlimited = Slots::new(0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.acquire(&"a")).collect();
        assert_eq!(held.len(), 1000);
    }
}

//! [`RecordCache`]: decoded records kept in memory, so that an issuance
//! reads no page (redb) or row (PostgreSQL) and decodes nothing.
//!
//! A miss fills the cache only if no change was applied while it read
//! (a generation counter), so a stale read is never cached.

use std::{collections::HashMap, sync::RwLock};

use super::{DeviceId, DeviceRecord, Write};
use crate::error::{RegistryError, Result};

/// Records already read, shared by the registries' `get`.
pub(super) struct RecordCache {
    /// The records and a generation that every commit advances.
    inner: RwLock<CacheInner>,
}

/// The cache's state, under one lock.
struct CacheInner {
    /// Advanced by every commit; a miss fills the cache only if no commit
    /// happened while it read, so a stale read is never cached.
    generation: u64,
    /// Present devices only; unknown ones are not remembered.
    records: HashMap<DeviceId, DeviceRecord>,
}

/// Records kept at most (a few hundred bytes each); the cache is emptied
/// when full.
const CACHE_CAPACITY: usize = 200_000;

impl RecordCache {
    pub(super) fn new() -> Self {
        RecordCache {
            inner: RwLock::new(CacheInner {
                generation: 0,
                records: HashMap::new(),
            }),
        }
    }

    fn poisoned() -> RegistryError {
        RegistryError::Store("record cache lock poisoned".into())
    }

    /// The cached record, or the generation to fill it at.
    pub(super) fn lookup(&self, id: &DeviceId) -> Result<Result<DeviceRecord, u64>> {
        let inner = self.inner.read().map_err(|_| Self::poisoned())?;
        Ok(match inner.records.get(id) {
            Some(record) => Ok(record.clone()),
            None => Err(inner.generation),
        })
    }

    /// Remembers `record`, read at `generation`, unless a commit came since.
    pub(super) fn fill(&self, generation: u64, record: &DeviceRecord) -> Result<()> {
        let mut inner = self.inner.write().map_err(|_| Self::poisoned())?;
        if inner.generation == generation {
            if inner.records.len() >= CACHE_CAPACITY {
                inner.records.clear();
            }
            inner.records.insert(record.id.clone(), record.clone());
        }
        Ok(())
    }

    /// After a commit of this process: forgets every written id and
    /// advances the generation, so the next read of each refills from the
    /// store (one miss per change) and no read that started before the
    /// commit fills the cache.
    ///
    /// Never writes the committed copy back: between the commit and this
    /// call another writer (another replica, or on redb the next write
    /// transaction) may have committed a newer record, and a read may have
    /// cached it; our older copy would replace it, and no notification
    /// would ever remove it (issue 23, finding 4).
    pub(super) fn committed(&self, writes: &[Write]) -> Result<()> {
        let mut inner = self.inner.write().map_err(|_| Self::poisoned())?;
        inner.generation += 1;
        for write in writes {
            let id = match write {
                Write::Put(record) => &record.id,
                Write::Delete(id) => id,
            };
            inner.records.remove(id);
        }
        Ok(())
    }

    /// Forgets `id`: another writer changed it.
    pub(super) fn invalidate(&self, id: &DeviceId) -> Result<()> {
        let mut inner = self.inner.write().map_err(|_| Self::poisoned())?;
        inner.generation += 1;
        inner.records.remove(id);
        Ok(())
    }

    /// Forgets everything: changes may have been missed.
    pub(super) fn clear(&self) -> Result<()> {
        let mut inner = self.inner.write().map_err(|_| Self::poisoned())?;
        inner.generation += 1;
        inner.records.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use enos_sign_core::{DeviceKey, ProductKey};

    use super::*;

    fn record(version: u32, enabled: bool) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::new(
                ProductKey::new("p").expect("pk"),
                DeviceKey::new("d").expect("dk"),
            ),
            enabled,
            secret_version: version,
            sealed: None,
            gateway: None,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    /// Issue 23, finding 4, in the cache alone: a newer record cached
    /// between our commit and its write-back is not replaced by our older
    /// copy; the id is dropped and the next read refills.
    #[test]
    fn a_commit_never_writes_its_older_copy_over_a_newer_cached_record() {
        let cache = RecordCache::new();
        let ours = record(2, true);
        let theirs = record(2, false);
        let generation = cache.lookup(&ours.id).expect("lookup").expect_err("miss");
        cache.fill(generation, &theirs).expect("fill");
        cache
            .committed(&[Write::Put(ours.clone())])
            .expect("committed");
        let after = cache.lookup(&ours.id).expect("lookup");
        assert!(after.is_err(), "dropped, not written back: {after:?}");
        // A read that started before the commit does not fill.
        cache.fill(generation, &ours).expect("fill");
        assert!(cache.lookup(&ours.id).expect("lookup").is_err());
    }
}

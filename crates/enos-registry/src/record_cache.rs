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

    /// Applies committed writes.
    pub(super) fn committed(&self, writes: &[Write]) -> Result<()> {
        let mut inner = self.inner.write().map_err(|_| Self::poisoned())?;
        inner.generation += 1;
        for write in writes {
            match write {
                Write::Put(record) => {
                    // Replace only what is cached; new records come in on
                    // their first read.
                    if let Some(cached) = inner.records.get_mut(&record.id) {
                        *cached = record.clone();
                    }
                }
                Write::Delete(id) => {
                    inner.records.remove(id);
                }
            }
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

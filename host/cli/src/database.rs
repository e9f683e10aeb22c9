//! Opening the store a `--database` value names: a file path or `sqlite:`
//! URL is the embedded SQLite store.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::store::Store;

/// Open (creating and migrating as needed) the store at `database`.
pub fn open(database: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let store = duro_store_sqlite::SqliteStore::open(database)
        .with_context(|| format!("cannot open the database {}", database.display()))?;
    Ok(Arc::new(store))
}

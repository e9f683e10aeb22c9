//! Bulk fixtures for tests and benchmarks: fill a database with finished
//! instances in a few large transactions, so flat-cost checks at 100,000 or
//! 1,000,000 instances set up in seconds (`duro fill`).

use std::path::Path;

use anyhow::Context as _;

use crate::engine;
use crate::manifest;
use crate::model::{Instance, Millis, RuntimeStatus, now_millis};
use crate::store::ClientStore as _;
use crate::store::sqlite::SqliteStore;

/// Instances written per transaction.
const CHUNK: usize = 10_000;

/// What to fill a database with.
#[derive(Debug, Clone)]
pub struct FillSpec {
    /// The orchestration the instances belong to (its component comes from
    /// the manifest, so they are real instances of the app).
    pub orchestration: String,
    /// How many.
    pub count: usize,
    /// Their final status: Completed, Failed or Terminated.
    pub status: RuntimeStatus,
    /// Instance `n` gets the id `{id_prefix}{n}` and the input
    /// `"{input_prefix}{n}"` (a JSON string).
    pub id_prefix: String,
    /// See `id_prefix`.
    pub input_prefix: String,
    /// Creation times are spread evenly over the last `spread_ms`.
    pub spread_ms: Millis,
}

/// Write `spec.count` finished instances into the database at `database`
/// (created if missing; a running host may share it). Returns how many.
pub async fn fill(database: &Path, manifest_path: &Path, spec: &FillSpec) -> anyhow::Result<usize> {
    anyhow::ensure!(
        spec.status.is_terminal(),
        "--status {}: fixtures are finished instances (Completed, Failed or Terminated)",
        spec.status
    );
    let app = manifest::load(manifest_path)?;
    let component = app
        .orchestrations
        .iter()
        .find(|(name, _)| *name == spec.orchestration)
        .map(|(_, path)| &app.files[path])
        .with_context(|| {
            format!(
                "manifest {} has no orchestration `{}`",
                manifest_path.display(),
                spec.orchestration
            )
        })?;
    let digest = engine::digest(component);
    let store = SqliteStore::open(database)?;
    let now = now_millis();
    store.put_component(&digest, component, now).await?;
    let start = now.saturating_sub(spec.spread_ms);
    let step = spec.spread_ms as f64 / spec.count.max(1) as f64;
    let mut written = 0;
    for chunk_start in (0..spec.count).step_by(CHUNK) {
        let chunk_end = (chunk_start + CHUNK).min(spec.count);
        let instances = (chunk_start..chunk_end)
            .map(|n| {
                let created = start + (n as f64 * step) as Millis;
                let input = serde_json::Value::String(format!("{}{n}", spec.input_prefix));
                Instance {
                    id: format!("{}{n}", spec.id_prefix),
                    name: spec.orchestration.clone(),
                    status: spec.status,
                    input: input.to_string(),
                    output: Some(serde_json::Value::String(format!("filled {n}")).to_string()),
                    custom_status: None,
                    component: digest.clone(),
                    execution_id: crate::model::fresh_id(),
                    created_at: created,
                    updated_at: created,
                    history_len: 2,
                    parent: None,
                    trace_parent: None,
                    scheduled_by: None,
                }
            })
            .collect();
        written += store.insert_finished(instances).await?;
    }
    Ok(written)
}

//! The wasmtime engine: its configuration (component model, pooling
//! allocator, epoch interruption), the on-disk cache of compiled code, and
//! compiled components kept in memory by the digest of their bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{
    Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits,
    StoreLimitsBuilder,
};

/// How often the epoch advances: the granularity of guest time budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest linear memory a guest may grow to.
pub const MAX_GUEST_MEMORY: usize = 256 << 20;

/// The resource limits of every guest store: memory past
/// [`MAX_GUEST_MEMORY`] traps the guest rather than failing the host.
pub fn guest_limits() -> StoreLimits {
    guest_limits_of(MAX_GUEST_MEMORY)
}

/// [`guest_limits`] with a smaller memory cap, `max_memory` bytes.
pub fn guest_limits_of(max_memory: usize) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(max_memory.min(MAX_GUEST_MEMORY))
        .trap_on_grow_failure(true)
        .build()
}

/// [`guest_limits`] that also count the linear memory the guest holds (its
/// memories' sizes, as they grew): what a warm instance costs.
pub struct CountedLimits {
    limits: StoreLimits,
    memory: usize,
}

impl Default for CountedLimits {
    fn default() -> Self {
        CountedLimits {
            limits: guest_limits(),
            memory: 0,
        }
    }
}

impl CountedLimits {
    /// Bytes of linear memory the guest has grown to.
    pub fn memory(&self) -> usize {
        self.memory
    }
}

impl wasmtime::ResourceLimiter for CountedLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// What stopped a guest: its time budget (`deadline`), a memory or table
/// limit (`memory`), or any other trap (`trap`).
pub fn trap_kind(error: &wasmtime::Error) -> &'static str {
    if matches!(
        error.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) {
        "deadline"
    } else if error
        .chain()
        .any(|cause| cause.to_string().contains("forcing trap when growing"))
    {
        "memory"
    } else {
        "trap"
    }
}

/// A time budget as epoch ticks (at least one), for `set_epoch_deadline`.
pub fn budget_ticks(budget: Duration) -> u64 {
    (budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// The digest a component is stored and addressed by: `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A configured engine with its compiled components.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    components: Arc<Mutex<HashMap<String, Component>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Make sure the compiled-code cache at `dir` is ours alone: a cache hit
/// maps its bytes as native code, so whoever can write there runs code in
/// this process. Created `0700` if missing; refused (as ssh refuses a
/// `~/.ssh` others can write) if another user owns it or its group or
/// others may write to it.
pub fn secure_cache_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the compiled-code cache {}", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the compiled-code cache {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        anyhow::bail!(
            "the compiled-code cache {} belongs to user {} and this host runs as user {me}: \
             another user could swap the native code it loads; use a directory of your own \
             (--cache-dir or DURO_CACHE_DIR)",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "the compiled-code cache {} may be written by its group or by others (mode {:o}): \
             they could swap the native code it loads; `chmod go-w` it or use another \
             directory (--cache-dir or DURO_CACHE_DIR)",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

impl Engine {
    /// An engine whose compiled code is cached under `cache_dir` (if given),
    /// with a thread that advances its epoch every [`EPOCH_TICK`], and room
    /// for `guest_instances` guests at once (orchestrations and HTTP
    /// functions together); instantiating one more fails until one ends.
    pub fn new(cache_dir: Option<&Path>, guest_instances: u32) -> anyhow::Result<Self> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(guest_instances)
            .total_core_instances(4 * guest_instances)
            .total_memories(guest_instances)
            .total_tables(2 * guest_instances)
            .total_stacks(guest_instances)
            .max_memory_size(MAX_GUEST_MEMORY)
            // Reset small guests' memory with memset rather than madvise: on
            // few cores the TLB shootdowns of madvise cost more (measured with
            // the lifecycle bench), and a Rust guest's heap is ~1-2 MiB.
            .linear_memory_keep_resident(8 << 20)
            .table_keep_resident(64 << 10)
            .decommit_batch_size(16);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        // For profiling: `perf` then names the guests' compiled functions
        // (wasmtime writes /tmp/perf-<pid>.map).
        if std::env::var_os("DURO_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = cache_dir {
            // wasmtime wants an absolute cache path; users pass relative ones.
            let dir = std::path::absolute(dir)
                .with_context(|| format!("compiled-code cache path {}", dir.display()))?;
            let dir = dir.as_path();
            secure_cache_dir(dir)?;
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(
                Cache::new(cache)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| format!("compiled-code cache in {}", dir.display()))?,
            ));
        }
        let inner = wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let weak = inner.weak();
        std::thread::Builder::new()
            .name("duro-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;
        Ok(Engine {
            inner,
            components: Arc::default(),
            metrics: Arc::default(),
        })
    }

    /// The metrics of the host this engine runs guests for.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Count a guest's trap or limit hit, by its kind, where it ran
    /// (`orchestration`, `activity`, `http`).
    pub fn count_trap(&self, error: &wasmtime::Error, place: &'static str) {
        self.metrics.trap(trap_kind(error), place);
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The component with this digest, compiling `bytes` on first use (or
    /// loading its compiled code from the disk cache).
    pub fn component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<Component> {
        if let Some(component) = self.cached(digest) {
            return Ok(component);
        }
        let component = Component::new(&self.inner, bytes).map_err(|e| {
            let cause = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
            anyhow::anyhow!("not a valid wasm component: {e}: {cause}")
        })?;
        self.components
            .lock()
            .expect("component cache poisoned")
            .insert(digest.to_string(), component.clone());
        Ok(component)
    }

    /// Forget every compiled component whose digest `keep` does not hold
    /// (one needed again is compiled again, or loaded from the disk cache).
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        (self.components.lock().expect("component cache poisoned"))
            .retain(|digest, _| keep.contains(digest));
    }

    /// How many compiled components are held.
    pub fn component_count(&self) -> usize {
        self.components
            .lock()
            .expect("component cache poisoned")
            .len()
    }

    /// The component with this digest if it is already compiled.
    pub fn cached(&self, digest: &str) -> Option<Component> {
        self.components
            .lock()
            .expect("component cache poisoned")
            .get(digest)
            .cloned()
    }
}

/// Components of one world, pre-instantiated against its linker, by
/// digest: what each kind of guest (orchestrations, activities, entities)
/// keeps, so that an instance is made without linking again.
pub struct Prepared<P>(std::sync::Mutex<std::collections::HashMap<String, P>>);

impl<P> Default for Prepared<P> {
    fn default() -> Self {
        Prepared(std::sync::Mutex::default())
    }
}

impl<P: Clone> Prepared<P> {
    /// The prepared component `digest`, made with `prepare` (and kept) if
    /// it is not prepared yet.
    pub fn get_or_prepare(
        &self,
        digest: &str,
        prepare: impl FnOnce() -> anyhow::Result<P>,
    ) -> anyhow::Result<P> {
        let mut prepared = self.0.lock().expect("prepared components poisoned");
        if let Some(pre) = prepared.get(digest) {
            return Ok(pre.clone());
        }
        let pre = prepare()?;
        prepared.insert(digest.to_string(), pre.clone());
        Ok(pre)
    }

    /// The prepared component `digest`, if it is prepared.
    pub fn get(&self, digest: &str) -> Option<P> {
        (self.0.lock().expect("prepared components poisoned"))
            .get(digest)
            .cloned()
    }

    /// Forget the components whose digest `keep` does not hold.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        (self.0.lock().expect("prepared components poisoned"))
            .retain(|digest, _| keep.contains(digest));
    }
}

//! Paths of the guest components built by `build.rs`, and helpers shared by
//! the end-to-end tests in `all/`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The bytes of a built guest.
pub fn guest_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Write the scenario manifest (pointing at the guests the build made, plus
/// `extra` TOML) into `dir`; returns its path.
pub fn scenario_manifest(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[[orchestration]]
name = "Workflow"
component = {SCENARIO:?}

[[orchestration]]
name = "WorkflowWithTimeout"
component = {SCENARIO:?}

[[http]]
name = "Start"
route = "/api/start/{{input}}"
component = {SCENARIO_HTTP:?}

[[http]]
name = "Check"
route = "/api/check/{{input}}"
component = {SCENARIO_HTTP:?}

[[http]]
name = "Stop"
route = "/api/stop/{{input}}"
component = {SCENARIO_HTTP:?}
{extra}
"#
    );
    let path = dir.join("duro.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The scenario's manifest plus the entity test guests and the
/// orchestrations that use them.
pub fn entity_manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let guests = TEST_GUESTS;
    let entities = TEST_ENTITIES;
    let mut extra = String::new();
    for name in ["EntityCaller", "Transfer", "HoldLock", "Sequence"] {
        extra.push_str(&format!(
            "[[orchestration]]\nname = {name:?}\ncomponent = {guests:?}\n"
        ));
    }
    for name in ["Counter", "Account", "Relay", "Ledger"] {
        extra.push_str(&format!(
            "[[entity]]\nname = {name:?}\ncomponent = {entities:?}\n"
        ));
    }
    extra.push_str(&format!(
        "[[http]]\nname = \"Entities\"\nroute = \"/entities\"\nmethods = [\"GET\", \"POST\"]\n\
         component = {:?}\n",
        TEST_GUESTS_HTTP
    ));
    scenario_manifest(dir, &extra)
}

/// The value after `--name` on a benchmark's command line, or `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// With `--postgres` on a benchmark's command line: the database URL in
/// `DURO_BENCH_POSTGRES_URL` (or `DURO_TEST_POSTGRES_URL`) and an empty
/// schema `bench_<name>_<pid>` for the run (dropped first).
pub async fn bench_postgres(name: &str) -> Option<(String, String)> {
    if !std::env::args().any(|a| a == "--postgres") {
        return None;
    }
    let url = std::env::var("DURO_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("DURO_TEST_POSTGRES_URL"))
        .expect("--postgres needs DURO_BENCH_POSTGRES_URL (or DURO_TEST_POSTGRES_URL)");
    let schema = format!("bench_{name}_{}", std::process::id());
    duro_store_postgres::PgStore::drop_schema(&url, &schema)
        .await
        .expect("PostgreSQL reachable");
    Some((url, schema))
}

/// Run `work` to its end on a runtime of its own, on a thread of its own
/// (so that a test inside a runtime may call it too): for test set-up
/// written without `async`.
pub fn block_on<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(work)
            })
            .join()
            .expect("the work panicked")
    })
}

/// `url` with duro's `schema` parameter, for `--database`.
pub fn database_url(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}schema={schema}")
}

/// The store a benchmark measures: a SQLite file in a directory of its
/// own, or, with `--postgres` on the command line, a fresh schema of the
/// database in `DURO_BENCH_POSTGRES_URL` (or `DURO_TEST_POSTGRES_URL`),
/// dropped again by [`BenchStore::close`].
pub struct BenchStore {
    /// The store.
    pub store: std::sync::Arc<dyn duro::store::Store>,
    place: Place,
}

/// Where a [`BenchStore`] keeps its state.
enum Place {
    /// The SQLite file's directory, held to be removed when dropped.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

impl BenchStore {
    /// Open a fresh store named `name` (a schema `bench_<name>_<pid>` on
    /// PostgreSQL).
    pub async fn open(name: &str) -> BenchStore {
        if let Some((url, schema)) = bench_postgres(name).await {
            let database: duro::database::Database = database_url(&url, &schema)
                .parse()
                .expect("a PostgreSQL URL");
            let store = duro::database::open_database(&database, &Default::default())
                .await
                .expect("PostgreSQL store");
            BenchStore {
                store,
                place: Place::Postgres { url, schema },
            }
        } else {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = duro::database::open(&dir.path().join("bench.db"))
                .await
                .expect("SQLite store");
            BenchStore {
                store,
                place: Place::Sqlite { _dir: dir },
            }
        }
    }

    /// `sqlite` or `postgres`, for the results.
    pub fn backend(&self) -> &'static str {
        match self.place {
            Place::Sqlite { .. } => "sqlite",
            Place::Postgres { .. } => "postgres",
        }
    }

    /// Drop the PostgreSQL schema (or the SQLite file), once the runtime
    /// on the store has shut down.
    pub async fn close(self) {
        drop(self.store);
        if let Place::Postgres { url, schema } = self.place {
            duro_store_postgres::PgStore::drop_schema(&url, &schema)
                .await
                .expect("PostgreSQL reachable");
        }
    }
}

//! The store a `--database` value names: `postgres://…` (or
//! `postgresql://…`) is the shared PostgreSQL store; a file path or a
//! `sqlite:` URL is the embedded SQLite store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::store::Store;

/// Where an app's state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// One SQLite file, for one host.
    Sqlite(PathBuf),
    /// A PostgreSQL database, for one host or several.
    Postgres {
        /// The connection URL, without duro's own `schema` parameter.
        url: String,
        /// The schema to keep the tables in (`?schema=name`), if not the
        /// connection's default.
        schema: Option<String>,
    },
}

impl std::str::FromStr for Database {
    type Err = String;

    /// ```
    /// use duro::database::Database;
    /// assert_eq!("app.db".parse(), Ok(Database::Sqlite("app.db".into())));
    /// assert_eq!("sqlite:data/app.db".parse(), Ok(Database::Sqlite("data/app.db".into())));
    /// assert_eq!(
    ///     "postgres://duro@db/duro?schema=staging&connect_timeout=3".parse(),
    ///     Ok(Database::Postgres {
    ///         url: "postgres://duro@db/duro?connect_timeout=3".into(),
    ///         schema: Some("staging".into()),
    ///     })
    /// );
    /// ```
    ///
    /// Shown in logs and messages without its password:
    ///
    /// ```
    /// use duro::database::Database;
    /// let db: Database = "postgres://u:p@ss@db/x?password=q&sslmode=disable".parse().unwrap();
    /// assert_eq!(db.to_string(), "postgres://u:***@db/x?password=***&sslmode=disable");
    /// ```
    fn from_str(value: &str) -> Result<Self, String> {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            let (base, query) = value.split_once('?').unwrap_or((value, ""));
            let mut schema = None;
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.strip_prefix("schema=") {
                    Some(name) => schema = Some(name.to_string()),
                    None => kept.push(pair),
                }
            }
            let url = if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            return Ok(Database::Postgres { url, schema });
        }
        let path = value
            .strip_prefix("sqlite://")
            .or_else(|| value.strip_prefix("sqlite:"))
            .unwrap_or(value);
        if path.is_empty() {
            return Err("the database is empty: give a file path or a postgres:// URL".into());
        }
        if path.contains("://") {
            return Err(format!(
                "`{value}` is not a database duro knows: give a file path, a sqlite: \
                 path or a postgres:// URL"
            ));
        }
        Ok(Database::Sqlite(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Database {
    /// The database for logs and messages, without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres { url, schema } => {
                let authority_end = url
                    .find("://")
                    .map(|scheme| {
                        scheme
                            + 3
                            + url[scheme + 3..]
                                .find(['/', '?'])
                                .unwrap_or(url.len() - scheme - 3)
                    })
                    .unwrap_or(url.len());
                let shown = match (url.find("://"), url[..authority_end].rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        let credentials = &url[scheme + 3..at];
                        match credentials.split_once(':') {
                            Some((user, _)) => {
                                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                            }
                            None => url.clone(),
                        }
                    }
                    _ => url.clone(),
                };
                let shown = mask_query_password(&shown);
                match schema {
                    Some(schema) => write!(f, "{shown} (schema {schema})"),
                    None => write!(f, "{shown}"),
                }
            }
        }
    }
}

/// `url` with the value of a `password=` query parameter hidden.
fn mask_query_password(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

impl Database {
    /// Where files that belong beside the database go (the compiled-code
    /// cache when the user has no cache directory): the SQLite file's
    /// folder, or `.duro` for PostgreSQL.
    pub fn data_dir(&self) -> PathBuf {
        match self {
            Database::Sqlite(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            Database::Postgres { .. } => PathBuf::from(".duro"),
        }
    }
}

/// How stores are opened beyond their location.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// PostgreSQL: how long a host's leases outlive its last renewal.
    pub lease_ttl: Duration,
    /// Most messages one instance may have waiting.
    pub max_inbox: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            lease_ttl: Duration::from_secs(10),
            max_inbox: duro_core::store::DEFAULT_MAX_INBOX,
        }
    }
}

/// A hold on a SQLite database for one serving host, released when the
/// process ends (however it ends: the lock is the OS's).
#[derive(Debug)]
pub struct HostLock {
    _file: std::fs::File,
}

/// Take the SQLite database at `path` for this host alone: an exclusive
/// lock on `<path>.lock`, which names the holder's process id. Two hosts on
/// one file would step the same instances and run activities twice (their
/// leases live in memory); the second is refused, naming the first.
pub fn lock_sqlite(path: &Path) -> anyhow::Result<HostLock> {
    use std::io::{Read as _, Seek as _, Write as _};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the folder {}", parent.display()))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("process {holder}")
            };
            anyhow::bail!(
                "the database {} is served by {holder} (it holds {}): a SQLite database \
                 belongs to one host; stop that one, or share work between hosts through \
                 PostgreSQL",
                path.display(),
                lock_path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(HostLock { _file: file })
}

/// Open (creating and migrating as needed) the SQLite store at `path`.
pub async fn open(path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    open_database(
        &Database::Sqlite(path.to_path_buf()),
        &OpenOptions::default(),
    )
    .await
}

/// Open (connecting, creating and migrating as needed) the store `database`
/// names; a PostgreSQL server that cannot be reached is an error that says
/// so. A PostgreSQL store runs its tasks on the current tokio runtime.
pub async fn open_database(
    database: &Database,
    options: &OpenOptions,
) -> anyhow::Result<Arc<dyn Store>> {
    match database {
        Database::Sqlite(path) => {
            // Opening a file and migrating it block: off the async threads.
            let (path, max_inbox) = (path.clone(), options.max_inbox);
            let store = tokio::task::spawn_blocking(move || {
                duro_store_sqlite::SqliteStore::open_with(&path, max_inbox)
                    .with_context(|| format!("cannot open the database {}", path.display()))
            })
            .await??;
            Ok(Arc::new(store))
        }
        Database::Postgres { url, schema } => {
            let options = duro_store_postgres::PgOptions {
                schema: schema.clone(),
                lease_ttl: options.lease_ttl,
                max_inbox: options.max_inbox,
                ..Default::default()
            };
            let store = duro_store_postgres::PgStore::open(url, options)
                .await
                .with_context(|| format!("cannot open the database {database}"))?;
            Ok(Arc::new(store))
        }
    }
}

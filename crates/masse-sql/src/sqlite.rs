//! SQLite: one file shared by every process on the host (WAL mode, writers
//! queue on `busy_timeout`), or a private in-memory database.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use masse_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Pool, Sqlite};

use crate::config::SqlConfig;
use crate::dialect::Dialect;
use crate::error::{Fail, is_sqlite_busy, map_err};
use crate::registry::Connected;
use crate::store::{Purge, Reopen, Store, reusable};

pub(crate) async fn connect(url: &str, shown: &str, config: &SqlConfig) -> Result<Connected> {
    let invalid = |e: sqlx::Error| Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: e.to_string(),
    };
    let mut options = SqliteConnectOptions::from_str(url).map_err(invalid)?;
    let (database, params) = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split_once('?')
        .unwrap_or((
            url.trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:"),
            "",
        ));
    let param = |key: &str| {
        params
            .split('&')
            .find_map(|p| p.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    };
    let in_memory = database == ":memory:" || param("mode") == Some("memory");
    if database.is_empty() && !in_memory {
        return Err(Error::InvalidAddress {
            kind: "registry url",
            input: shown.to_owned(),
            reason: "no database file: write sqlite://path/to/registry.db \
                     (or sqlite::memory: for a private in-memory registry)"
                .into(),
        });
    }
    let pool = if in_memory {
        // One connection: the database lives exactly as long as it does.
        let pool = SqlitePoolOptions::new()
            .before_acquire(|conn, _| Box::pin(async move { Ok(reusable(conn, Sqlite::BACKEND)) }))
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?;
        migrate(&pool)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?;
        pool
    } else {
        // A registry is written to: create the file (and its directory)
        // unless the URL says otherwise with `mode=`.
        let create = match param("mode") {
            None => {
                options = options.create_if_missing(true);
                true
            }
            Some(mode) => mode == "rwc",
        };
        if let Some(dir) = options.get_filename().parent()
            && create
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
        }
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.busy_timeout);
        let path = options.get_filename().to_path_buf();
        if let Some(e) = orphaned_wal(&path) {
            return Err(e);
        }
        let purge = Arc::new(Purge::default());
        let pool = open_file(&options, config, &purge)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?;
        let watch = FileWatch::new(path, create, options, config.clone(), purge.clone());
        return Ok(Connected {
            backend: Arc::new(Store::new(pool, purge, schema).with_reopen(Box::new(watch))),
            listen: None,
        });
    };

    Ok(Connected {
        backend: Arc::new(Store::new(pool, Arc::default(), schema).in_memory()),
        listen: None,
    })
}

/// Opens a pool on a database file and creates the tables.
async fn open_file(
    options: &SqliteConnectOptions,
    config: &SqlConfig,
    purge: &Arc<Purge>,
) -> std::result::Result<Pool<Sqlite>, sqlx::Error> {
    // Processes opening a new file together race to switch it to WAL,
    // and SQLite reports that race as "database is locked" without
    // waiting on busy_timeout: take turns and try again.
    let mut attempt = 0u32;
    loop {
        let opened = match SqlitePoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.connect_timeout)
            .before_acquire({
                let purge = purge.clone();
                move |conn, meta| {
                    let fresh = purge.keeps(meta.age);
                    Box::pin(async move { Ok(fresh && reusable(conn, Sqlite::BACKEND)) })
                }
            })
            // A connection stuck in a transaction holds the file's write
            // lock: every other writer (other processes too) would wait
            // busy_timeout and fail until it is acquired again. Close it as
            // soon as it comes back, once its queued rollback has run (the
            // ping is answered after it).
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(reusable(conn, Sqlite::BACKEND))
                })
            })
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => match migrate(&pool).await {
                Ok(()) => Ok(pool),
                Err(e) => {
                    pool.close().await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match opened {
            Ok(pool) => return Ok(pool),
            Err(e) if attempt < 8 && is_sqlite_busy(&e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "sqlite file busy while opening; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The device and inode of a file, if it exists.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        // No inodes: only a deleted file is noticed.
        std::fs::metadata(path).ok().map(|_| (0, 0))
    }
}

/// `path` with `suffix` appended (`-wal`, `-shm`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The main file is gone but a write-ahead log is still at its path (the
/// file was deleted by hand, or while another process had it open): opening
/// now would create an empty file and let SQLite read the old log into it.
fn orphaned_wal(path: &Path) -> Option<Error> {
    let wal = sibling(path, "-wal");
    if path.exists() || file_id(&wal).is_none() {
        return None;
    }
    Some(Error::registry(
        Sqlite::BACKEND,
        format!(
            "the SQLite registry file {} is gone but a write-ahead log {} is still there; \
             stop the processes that have the old file open, or restore the file, \
             or delete {} and {}",
            path.display(),
            wal.display(),
            wal.display(),
            sibling(path, "-shm").display()
        ),
    ))
}

/// Notices the database file deleted or replaced under the pool (its device
/// and inode at the path no longer match the file the pool opened), closes
/// the pool and opens the file now at the path, creating it and its tables.
///
/// SQLite leaves the old file's `-wal` and `-shm` at the path when the file
/// was moved or deleted under it (it will not checkpoint a moved file), and
/// a new connection would take that log for the new file's. So before
/// reopening, the handle removes them, but only if they are still the very
/// files its own pool had open: processes that still hold them keep their
/// descriptors and are not disturbed, and a log another handle made for the
/// new file is left alone.
struct FileWatch {
    path: PathBuf,
    /// The URL lets the registry create the file (and so its directory).
    create: bool,
    options: SqliteConnectOptions,
    config: SqlConfig,
    purge: Arc<Purge>,
    state: Mutex<WatchState>,
}

#[derive(Debug, Clone, Copy)]
struct WatchState {
    /// The files the pool has open: main, `-wal`, `-shm`.
    open: Opened,
    /// A change was seen and the old pool closed, but no new pool is open yet.
    pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opened {
    main: Option<(u64, u64)>,
    wal: Option<(u64, u64)>,
    shm: Option<(u64, u64)>,
}

impl Opened {
    fn at(path: &Path) -> Opened {
        Opened {
            main: file_id(path),
            wal: file_id(&sibling(path, "-wal")),
            shm: file_id(&sibling(path, "-shm")),
        }
    }
}

impl FileWatch {
    fn new(
        path: PathBuf,
        create: bool,
        options: SqliteConnectOptions,
        config: SqlConfig,
        purge: Arc<Purge>,
    ) -> Self {
        FileWatch {
            create,
            state: Mutex::new(WatchState {
                open: Opened::at(&path),
                pending: false,
            }),
            path,
            options,
            config,
            purge,
        }
    }
}

#[async_trait::async_trait]
impl Reopen<Sqlite> for FileWatch {
    async fn check(
        &self,
        current: &Pool<Sqlite>,
    ) -> std::result::Result<Option<Pool<Sqlite>>, Fail> {
        let now = file_id(&self.path);
        let open = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.pending {
                if now.is_some() && now == st.open.main {
                    return Ok(None);
                }
                st.pending = true;
                tracing::warn!(
                    path = %self.path.display(),
                    "the registry database file was deleted or replaced under this process; \
                     reopening it (nodes publish themselves again)"
                );
            }
            st.open
        };
        // Let go of the old file first.
        if !current.is_closed() {
            current.close().await;
        }
        for (suffix, ours) in [("-wal", open.wal), ("-shm", open.shm)] {
            let file = sibling(&self.path, suffix);
            if ours.is_some() && file_id(&file) == ours {
                match std::fs::remove_file(&file) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), "removed the old registry file's leftover")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Fail::Masse(e.into())),
                }
            }
        }
        if let Some(e) = orphaned_wal(&self.path) {
            return Err(Fail::Masse(e));
        }
        // The whole directory may have gone (a cleaner, `rm -rf`): made
        // again, as on connect, where the URL lets the file be created.
        if self.create
            && let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Fail::Masse(masse_core::Error::io_context(
                    e,
                    format!("create {} again", dir.display()),
                ))
            })?;
            tracing::warn!(dir = %dir.display(), "the registry database's directory was deleted; created it again");
        }
        let pool = open_file(&self.options, &self.config, &self.purge).await?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.open = Opened::at(&self.path);
        st.pending = false;
        tracing::info!(path = %self.path.display(), "registry database file reopened");
        Ok(Some(pool))
    }
}

/// [`migrate`] as the store keeps it, to run again when the tables are gone.
fn schema(pool: &Pool<Sqlite>) -> BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(migrate(pool))
}

/// Creates the tables; `BEGIN IMMEDIATE` makes processes that start together take turns.
async fn migrate(pool: &Pool<Sqlite>) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin_with(Sqlite::BEGIN).await?;
    for statement in Sqlite::SCHEMA {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

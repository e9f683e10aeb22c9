//! Group reads: the instance rows (status requests) and episode loads asked
//! for while such a read is under way go to the server together, one
//! statement over an array of ids for the lot. Under load a poll or a load
//! then costs the server a share of one statement instead of one of its
//! own; alone, a read goes at once. Each read still sees every write
//! committed before it was asked for (its statement starts after).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use duro_core::store::{StoreError, StoreResult};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::Row;

use duro_store_sql::rows::corrupt;

use crate::{backend, pool_error};

/// Most ids one statement reads.
const MAX_GROUP: usize = 256;

/// Statements of one reader under way at once: a read asked for while they
/// all are waits for the first to end, then goes with the others waiting.
pub const IN_FLIGHT: usize = 2;

/// One id asked for, with the statement's flag for it, and where the
/// answer goes.
type Ask<T> = (String, bool, oneshot::Sender<StoreResult<Option<T>>>);

/// Reads of one statement, grouped.
pub struct Reader<T> {
    asks: mpsc::UnboundedSender<Ask<T>>,
}

impl<T: Clone + Send + 'static> Reader<T> {
    /// A reader running `sql` (its `$1` the ids, `$2`, if `flagged`, a
    /// flag per id; its rows led by the id) on the current runtime,
    /// turning each row into its answer with `decode`.
    pub fn start(
        pool: &Pool,
        sql: &'static str,
        flagged: bool,
        decode: fn(&Row) -> StoreResult<T>,
    ) -> Reader<T> {
        let (asks, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), sql, flagged, decode, queue));
        Reader { asks }
    }

    /// The answer for `id` (with `flag`), or `None` if it has no row.
    pub async fn read(&self, id: &str, flag: bool) -> StoreResult<Option<T>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Backend {
            message: "the PostgreSQL reader has stopped".into(),
            retriable: true,
        };
        (self.asks.send((id.to_string(), flag, reply))).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run<T: Clone + Send + 'static>(
    pool: Pool,
    sql: &'static str,
    flagged: bool,
    decode: fn(&Row) -> StoreResult<T>,
    mut queue: mpsc::UnboundedReceiver<Ask<T>>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // What arrived while waiting for a statement to end goes too.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(ask) => group.push(ask),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // One id once, whoever asked for it (the flag of the first).
            let mut ids: Vec<&str> = Vec::with_capacity(group.len());
            let mut flags = Vec::with_capacity(group.len());
            for (id, flag, _) in &group {
                if !ids.contains(&id.as_str()) {
                    ids.push(id);
                    flags.push(*flag);
                }
            }
            match read(&pool, sql, flagged, decode, &ids, &flags).await {
                Ok(found) => {
                    for (id, _, reply) in group {
                        let answer = match found.get(&id) {
                            None => Ok(None),
                            Some(Ok(value)) => Ok(Some(value.clone())),
                            Some(Err(e)) => Err(copy(e)),
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    for (_, _, reply) in group {
                        let _ = reply.send(Err(copy(&e)));
                    }
                }
            }
        });
    }
}

/// The answers for `ids`, by id, on a connection of the grouped pool
/// (`batch::GROUPED_SETTINGS`).
async fn read<T>(
    pool: &Pool,
    sql: &str,
    flagged: bool,
    decode: fn(&Row) -> StoreResult<T>,
    ids: &[&str],
    flags: &[bool],
) -> StoreResult<HashMap<String, StoreResult<T>>> {
    let client = pool.get().await.map_err(pool_error)?;
    let session: &deadpool_postgres::Object = &client;
    let statement = session.prepare_cached(sql).await.map_err(backend)?;
    let with_flags: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&ids, &flags];
    let params = if flagged {
        &with_flags[..]
    } else {
        &with_flags[..1]
    };
    let rows = session.query(&statement, params).await.map_err(backend)?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(|e| corrupt("read row", e))?;
            Ok((id, decode(row)))
        })
        .collect()
}

/// The same failure, for each reader that shared it.
fn copy(e: &StoreError) -> StoreError {
    StoreError::Backend {
        message: e.to_string(),
        retriable: e.is_retriable(),
    }
}

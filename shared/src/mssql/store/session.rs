//! One pooled connection doing one piece of work: parameterized statements (`@P1`…), an explicit
//! transaction, typed reads of result cells that never panic, and row streams for long reads.
//!
//! A session is handed back to the pool only when its work finished cleanly ([`Session::done`],
//! [`Session::commit`]); one dropped on an error is closed, and the server rolls back whatever
//! transaction it held.

use crate::errors::StoreError;
use crate::mssql::errors::store_error;
use crate::mssql::pool::{Pool, Pooled};
use crate::ports::Batches;
use futures_util::TryStreamExt;
use tiberius::{ColumnData, IntoSql, Query, Row, TokenRow};

/// Parameters of one statement, `@P1` first.
pub type Params = Vec<ColumnData<'static>>;

/// One parameter.
pub fn p<T: IntoSql<'static>>(v: T) -> ColumnData<'static> {
    v.into_sql()
}

/// `@Pfirst, @Pfirst+1, …` for `n` values (an `IN` list).
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parameters per statement, under SQL Server's 2,100 with room for the fixed ones.
pub const MAX_LIST: usize = 2_000;

/// A connection on loan for one piece of work.
pub struct Session {
    pooled: Pooled,
    context: &'static str,
}

fn query(sql: &str, params: Params) -> Query<'static> {
    let mut q = Query::new(sql.to_owned());
    for v in params {
        q.bind(v);
    }
    q
}

impl Session {
    /// A connection from the pool.
    pub async fn open(pool: &Pool, context: &'static str) -> Result<Session, StoreError> {
        let pooled = pool.get().await.map_err(|e| StoreError::Db {
            context,
            detail: e.detail,
        })?;
        Ok(Session { pooled, context })
    }

    /// Runs a statement (or a batch of them); rows affected by all of them.
    pub async fn exec(&mut self, sql: &str, params: Params) -> Result<u64, StoreError> {
        self.try_exec(sql, params).await.map_err(store_error(self.context))
    }

    /// [`Session::exec`] keeping the driver's error (to tell a duplicate key from a failure).
    pub async fn try_exec(&mut self, sql: &str, params: Params) -> Result<u64, tiberius::error::Error> {
        Ok(query(sql, params).execute(self.pooled.conn()).await?.total())
    }

    /// The rows of a statement's first result set.
    pub async fn rows(&mut self, sql: &str, params: Params) -> Result<Vec<Row>, StoreError> {
        let err = store_error(self.context);
        let stream = query(sql, params).query(self.pooled.conn()).await.map_err(&err)?;
        stream.into_first_result().await.map_err(&err)
    }

    /// The first row of a statement's first result set.
    pub async fn row(&mut self, sql: &str, params: Params) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, params).await?.into_iter().next())
    }

    /// Runs statements as a plain batch, not through `sp_executesql`: a `#temp` table created
    /// there would be dropped when the procedure's scope ends.
    pub async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let err = store_error(self.context);
        let stream = self.pooled.conn().simple_query(sql.to_owned()).await.map_err(&err)?;
        stream.into_results().await.map_err(&err).map(drop)
    }

    /// Begins a transaction (READ COMMITTED, the server default).
    pub async fn begin(&mut self) -> Result<(), StoreError> {
        let err = store_error(self.context);
        self.pooled.conn().begin_transaction().await.map_err(err)
    }

    /// Commits, and hands the connection back.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let err = store_error(self.context);
        self.pooled.conn().commit_transaction().await.map_err(err)?;
        self.pooled.release();
        Ok(())
    }

    /// Rolls back (the work found nothing to do), and hands the connection back.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        let err = store_error(self.context);
        self.pooled.conn().rollback_transaction().await.map_err(err)?;
        self.pooled.release();
        Ok(())
    }

    /// Commits, keeping the connection for more work.
    pub async fn commit_keep(&mut self) -> Result<(), StoreError> {
        let err = store_error(self.context);
        self.pooled.conn().commit_transaction().await.map_err(err)
    }

    /// Rolls back, keeping the connection for more work.
    pub async fn rollback_keep(&mut self) -> Result<(), StoreError> {
        let err = store_error(self.context);
        self.pooled.conn().rollback_transaction().await.map_err(err)
    }

    /// Hands the connection back: every result was read.
    pub fn done(self) {
        self.pooled.release();
    }

    /// The connection itself.
    pub fn conn(&mut self) -> &mut crate::mssql::pool::Conn {
        self.pooled.conn()
    }

    /// Bulk-loads `rows` into `columns` of `table` (a quoted, validated name): the server's
    /// bulk-copy path, one stream instead of a statement per row. Values must stay under 64 KiB
    /// each (tiberius#322): callers load keys and hashes, never bodies.
    pub async fn bulk(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: impl IntoIterator<Item = TokenRow<'static>>,
    ) -> Result<u64, StoreError> {
        let err = store_error(self.context);
        let mut load = self
            .pooled
            .conn()
            .bulk_insert_columns(table, columns)
            .await
            .map_err(&err)?;
        for row in rows {
            load.send(row).await.map_err(&err)?;
        }
        Ok(load.finalize().await.map_err(&err)?.total())
    }

    /// What this session is doing, for errors.
    pub fn context(&self) -> &'static str {
        self.context
    }
}

/// Streams a query's rows in batches of `per_batch` items, each row mapped to items by `map`.
pub fn stream<T, I, F>(
    pool: &Pool,
    context: &'static str,
    sql: String,
    params: Params,
    per_batch: usize,
    map: F,
) -> Batches<T, StoreError>
where
    T: Send + 'static,
    I: IntoIterator<Item = T>,
    F: Fn(&Row) -> Result<I, StoreError> + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let pool = pool.clone();
    tokio::spawn(async move {
        let work = async {
            let mut session = Session::open(&pool, context).await?;
            let err = store_error(context);
            let mut rows = query(&sql, params)
                .query(session.conn())
                .await
                .map_err(&err)?
                .into_row_stream();
            let mut batch = Vec::new();
            while let Some(row) = rows.try_next().await.map_err(&err)? {
                batch.extend(map(&row)?);
                if batch.len() >= per_batch && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                    return Ok(()); // the reader went away: the connection is closed, not reused
                }
            }
            drop(rows);
            session.done();
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch)).await;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(e) = work.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

fn corrupt(i: usize, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: "store column",
        detail: format!("column {i}: {detail}"),
    }
}

/// A cell's kind, for errors (never its value).
fn kind(d: &ColumnData<'_>) -> &'static str {
    match d {
        ColumnData::U8(_) | ColumnData::I16(_) | ColumnData::I32(_) | ColumnData::I64(_) => "an integer",
        ColumnData::Bit(_) => "a bit",
        ColumnData::String(_) => "text",
        ColumnData::Binary(_) => "bytes",
        _ => "another type",
    }
}

fn cell(r: &Row, i: usize) -> Result<&ColumnData<'static>, StoreError> {
    r.get_column_data(i).map_err(|e| corrupt(i, e.to_string()))
}

/// An integer cell of any width, or NULL.
pub fn opt_int(r: &Row, i: usize) -> Result<Option<i64>, StoreError> {
    Ok(match cell(r, i)? {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        ColumnData::Bit(v) => v.map(i64::from),
        other => return Err(corrupt(i, format!("expected an integer, found {}", kind(other)))),
    })
}

/// An integer cell that must not be NULL.
pub fn int(r: &Row, i: usize) -> Result<i64, StoreError> {
    opt_int(r, i)?.ok_or_else(|| corrupt(i, "unexpected NULL".into()))
}

/// A flag that must not be NULL.
pub fn flag(r: &Row, i: usize) -> Result<bool, StoreError> {
    Ok(int(r, i)? != 0)
}

/// A text cell, or NULL.
pub fn opt_text(r: &Row, i: usize) -> Result<Option<String>, StoreError> {
    match cell(r, i)? {
        ColumnData::String(v) => Ok(v.as_ref().map(|s| s.to_string())),
        other => Err(corrupt(i, format!("expected text, found {}", kind(other)))),
    }
}

/// A text cell that must not be NULL.
pub fn text(r: &Row, i: usize) -> Result<String, StoreError> {
    opt_text(r, i)?.ok_or_else(|| corrupt(i, "unexpected NULL".into()))
}

/// A binary cell, or NULL.
pub fn opt_bytes(r: &Row, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
    match cell(r, i)? {
        ColumnData::Binary(v) => Ok(v.as_ref().map(|b| b.to_vec())),
        other => Err(corrupt(i, format!("expected bytes, found {}", kind(other)))),
    }
}

/// A binary cell that must not be NULL.
pub fn bytes(r: &Row, i: usize) -> Result<Vec<u8>, StoreError> {
    opt_bytes(r, i)?.ok_or_else(|| corrupt(i, "unexpected NULL".into()))
}

/// A 16-byte row hash.
pub fn hash(r: &Row, i: usize) -> Result<crate::domain::encoding::RowHash, StoreError> {
    bytes(r, i)?.try_into().map_err(|_| StoreError::Corrupt {
        what: "staging hash",
        detail: "not 16 bytes".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_number_their_parameters_from_the_first_free_one() {
        assert_eq!(placeholders(3, 3), "@P3, @P4, @P5");
        assert_eq!(placeholders(1, 0), "");
    }
}

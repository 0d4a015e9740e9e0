//! The warehouse's database, as the follower sees it: connections, the
//! settings and the table the follower needs (checked before it starts),
//! positions and binlog sizes, the initial read of the table, and the rows
//! of a binlog row event as [`Image`]s of the mapped columns.

use std::time::Duration;

use mysql_async::binlog::events::{RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Row, Value};

use super::mapping::{Image, Mapping, RowChange};
use super::position::Position;

/// What went wrong on the database's side.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The server or the table is not set up as the follower needs: a
    /// configuration error, which no retry mends.
    #[error("{0}")]
    Setup(String),
    /// The server could not be reached, or the connection failed.
    #[error("{0}")]
    Connection(String),
}

impl From<mysql_async::Error> for Problem {
    fn from(e: mysql_async::Error) -> Self {
        Self::Connection(e.to_string())
    }
}

/// Figure columns of these types are refused: stock must be exact.
const INEXACT: [&str; 3] = ["float", "double", "real"];

/// The longest a query or a connection attempt may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut`, or fails after [`QUERY_TIMEOUT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, mysql_async::Error>>) -> Result<T, Problem> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(result) => result.map_err(|e| Problem::Connection(format!("{what}: {e}"))),
        Err(_) => Err(Problem::Connection(format!("{what}: no answer within {QUERY_TIMEOUT:?}"))),
    }
}

/// A new connection.
pub async fn connect(opts: &Opts) -> Result<Conn, Problem> {
    bounded("connecting", Conn::new(opts.clone())).await
}

/// Checks that the server writes the binlog the follower reads (on, row
/// format, full row images with column names), that the table and every
/// mapped column exist, and that figures are exact types. Every problem
/// found is named, with what to change.
pub async fn check(conn: &mut Conn, mapping: &Mapping) -> Result<(), Problem> {
    let settings: Option<(Option<String>, Option<String>, Option<String>)> = bounded(
        "reading the binlog settings",
        conn.query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image"),
    )
    .await?;
    let (log_bin, format, image) = settings.unwrap_or_default();
    let is = |value: &Option<String>, wanted: &[&str]| {
        value.as_deref().is_some_and(|v| wanted.iter().any(|w| v.eq_ignore_ascii_case(w)))
    };
    let mut wrong = Vec::new();
    if !is(&log_bin, &["1", "ON"]) {
        wrong.push("the binary log is off (start the server with log_bin)".to_owned());
    }
    if !is(&format, &["ROW"]) {
        wrong.push(format!("binlog_format is {}, not ROW", format.as_deref().unwrap_or("unset")));
    }
    if !is(&image, &["FULL"]) {
        wrong.push(format!("binlog_row_image is {}, not FULL", image.as_deref().unwrap_or("unset")));
    }
    // Column names in the binlog: a row is read by name, so a column added
    // or dropped elsewhere in the table moves nothing.
    match conn.query_first::<Option<String>, _>("SELECT @@binlog_row_metadata").await {
        Ok(Some(Some(metadata))) if metadata.eq_ignore_ascii_case("FULL") => {}
        Ok(value) => wrong.push(format!(
            "binlog_row_metadata is {}, not FULL",
            value.flatten().unwrap_or_else(|| "unset".to_owned())
        )),
        Err(_) => wrong.push("the server has no binlog_row_metadata (MySQL 8.0.1+ or MariaDB 10.5+ has)".to_owned()),
    }
    if !wrong.is_empty() {
        return Err(Problem::Setup(format!("the server's binlog cannot be followed: {}", wrong.join("; "))));
    }

    let columns: Vec<(String, String)> = bounded(
        "reading the table's columns",
        conn.exec(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&mapping.database, &mapping.table),
        ),
    )
    .await?;
    let table = mapping.qualified();
    if columns.is_empty() {
        return Err(Problem::Setup(format!(
            "table {table} does not exist, or the follower's user cannot see it (GRANT SELECT ON {table})"
        )));
    }
    for (role, column) in mapping.columns.iter() {
        let Some((_, kind)) = columns.iter().find(|(name, _)| name.eq_ignore_ascii_case(column)) else {
            let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
            return Err(Problem::Setup(format!(
                "--cdc-columns: {role}={column}: {table} has no column {column:?}; its columns are {}",
                names.join(", ")
            )));
        };
        let figure = ["physical", "reserved", "in_transit"].contains(&role);
        if figure && INEXACT.iter().any(|inexact| kind.eq_ignore_ascii_case(inexact)) {
            return Err(Problem::Setup(format!(
                "--cdc-columns: {role}={column}: {table}.{column} is {kind}; stock figures must be exact \
                 (DECIMAL or an integer type)"
            )));
        }
    }
    current_position(conn).await.map_err(|e| match e {
        Problem::Connection(detail) => Problem::Setup(format!(
            "cannot read the server's binlog position ({detail}); grant the follower's user REPLICATION CLIENT \
             (BINLOG MONITOR on MariaDB)"
        )),
        setup => setup,
    })?;
    Ok(())
}

/// The server's current binlog position: where the next commit goes.
pub async fn current_position(conn: &mut Conn) -> Result<Position, Problem> {
    // MySQL 8.4 renamed the statement; MariaDB and older MySQL know the first.
    let row: Option<Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        Err(_) => bounded("reading the binlog position", conn.query_first("SHOW BINARY LOG STATUS")).await?,
    };
    let row = row.ok_or_else(|| Problem::Setup("the server reports no binlog position: is log_bin on?".into()))?;
    let file = row.get::<Option<String>, _>(0).flatten();
    let offset = row.get::<Option<u64>, _>(1).flatten();
    match (file, offset) {
        (Some(file), Some(offset)) => Ok(Position::new(file, offset)),
        _ => Err(Problem::Connection("the server's binlog position is unreadable".into())),
    }
}

/// The server's binlog files and their sizes, oldest first.
pub async fn binlog_files(conn: &mut Conn) -> Result<Vec<(String, u64)>, Problem> {
    let rows: Vec<Row> = bounded("listing the binlog files", conn.query("SHOW BINARY LOGS")).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((row.get::<Option<String>, _>(0).flatten()?, row.get::<Option<u64>, _>(1).flatten()?)))
        .collect())
}

/// Binlog bytes the server wrote after `applied`.
pub fn bytes_behind(files: &[(String, u64)], applied: &Position) -> u64 {
    let Some(at) = files.iter().position(|(name, _)| *name == applied.file) else {
        return files.iter().map(|(_, size)| size).sum();
    };
    let rest: u64 = files[at + 1..].iter().map(|(_, size)| size).sum();
    files[at].1.saturating_sub(applied.offset) + rest
}

/// The statement of the initial read: the mapped columns of every row.
pub fn select_all(mapping: &Mapping) -> String {
    let columns: Vec<String> = mapping.columns.iter().map(|(_, column)| format!("`{column}`")).collect();
    format!("SELECT {} FROM `{}`.`{}`", columns.join(", "), mapping.database, mapping.table)
}

/// A row of [`select_all`] as an image.
pub fn loaded_image(row: &Row, mapping: &Mapping) -> Image {
    mapping.columns.iter().enumerate().map(|(i, (role, _))| (role, row.as_ref(i).and_then(text))).collect()
}

/// Whether a table map event is of the followed table.
pub fn is_followed(tme: &TableMapEvent<'_>, mapping: &Mapping) -> bool {
    tme.database_name() == mapping.database.as_str() && tme.table_name() == mapping.table.as_str()
}

/// The rows of a row event of the followed table, as images of the mapped
/// columns. A mapped column missing from the event is a problem of the
/// setup (dropped or renamed, or no column names in the binlog), not of a
/// row: the follower stops rather than dead-letter every row after it.
pub fn row_changes(
    event: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
    mapping: &Mapping,
) -> Result<Vec<RowChange>, Problem> {
    let mut changes = Vec::new();
    for row in event.rows(tme) {
        let (before, after) = row.map_err(|e| Problem::Connection(format!("an undecodable row event: {e}")))?;
        let image = |row: Option<BinlogRow>| row.map(|row| binlog_image(&row, mapping)).transpose();
        let change = match (event, image(before)?, image(after)?) {
            (RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_), _, Some(after)) => {
                RowChange::Insert(after)
            }
            (
                RowsEventData::UpdateRowsEvent(_)
                | RowsEventData::UpdateRowsEventV1(_)
                | RowsEventData::PartialUpdateRowsEvent(_),
                Some(before),
                Some(after),
            ) => RowChange::Update(before, after),
            (RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_), Some(before), _) => {
                RowChange::Delete(before)
            }
            _ => return Err(Problem::Connection("a row event without the images its kind has".into())),
        };
        changes.push(change);
    }
    Ok(changes)
}

fn binlog_image(row: &BinlogRow, mapping: &Mapping) -> Result<Image, Problem> {
    let columns = row.columns_ref();
    let mut image = Image::new();
    for (role, column) in mapping.columns.iter() {
        let index = columns.iter().position(|c| c.name_str().eq_ignore_ascii_case(column));
        let value = index.and_then(|i| row.as_ref(i)).ok_or_else(|| {
            Problem::Setup(format!(
                "the binlog's rows of {} lack column {column:?} ({role}): it was dropped or renamed, or the server \
                 stopped writing column names (binlog_row_metadata=FULL) or whole rows (binlog_row_image=FULL)",
                mapping.qualified()
            ))
        })?;
        let value = match value {
            BinlogValue::Value(value) => text(value),
            _ => Some(String::new()),
        };
        image.insert(role, value);
    }
    Ok(image)
}

/// A value as text; `None` for NULL.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_bytes_behind_across_files() {
        let files = vec![("b.000001".to_owned(), 1000), ("b.000002".to_owned(), 500), ("b.000003".to_owned(), 200)];
        assert_eq!(bytes_behind(&files, &Position::new("b.000003", 200)), 0);
        assert_eq!(bytes_behind(&files, &Position::new("b.000002", 100)), 400 + 200);
        // A file the server no longer lists: everything it has is behind.
        assert_eq!(bytes_behind(&files, &Position::new("b.000000", 4)), 1700);
    }
}

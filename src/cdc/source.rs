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

/// The followed table as the server names it (its case may differ from
/// the configuration's where names are case-insensitive), as row events
/// name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
}

/// ER_UNKNOWN_SYSTEM_VARIABLE.
const UNKNOWN_VARIABLE: u16 = 1193;
/// ER_SPECIFIC_ACCESS_DENIED_ERROR and ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: [u16; 2] = [1227, 1045];

/// A server variable, `None` if the server does not know it; an error of
/// the connection is an error.
async fn variable(conn: &mut Conn, name: &str) -> Result<Option<String>, Problem> {
    let what = format!("reading @@{name}");
    match answered(&what, conn.query_first::<Option<String>, _>(format!("SELECT @@{name}"))).await? {
        Ok(value) => Ok(Some(value.flatten().unwrap_or_default())),
        Err(e) if e.code == UNKNOWN_VARIABLE => Ok(None),
        Err(e) => Err(Problem::Connection(format!("{what}: {e}"))),
    }
}

/// Figure columns of these types are refused: stock must be exact.
const INEXACT: [&str; 3] = ["float", "double", "real"];

/// The longest a query or a connection attempt may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut`, or fails after [`QUERY_TIMEOUT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, mysql_async::Error>>) -> Result<T, Problem> {
    answered(what, fut).await?.map_err(|e| Problem::Connection(format!("{what}: {e}")))
}

/// Runs `fut` for at most [`QUERY_TIMEOUT`]: what the server answered, its
/// own error included (for the caller to tell a setup problem by its code),
/// or a [`Problem::Connection`] when it did not answer.
async fn answered<T>(
    what: &str,
    fut: impl Future<Output = Result<T, mysql_async::Error>>,
) -> Result<Result<T, mysql_async::ServerError>, Problem> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(Ok(value)),
        Ok(Err(mysql_async::Error::Server(e))) => Ok(Err(e)),
        Ok(Err(e)) => Err(Problem::Connection(format!("{what}: {e}"))),
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
pub async fn check(conn: &mut Conn, mapping: &Mapping) -> Result<Followed, Problem> {
    let mut wrong = Vec::new();
    let on = |value: &Option<String>| value.as_deref().is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"));
    if !on(&variable(conn, "log_bin").await?) {
        wrong.push("the binary log is off (start the server with log_bin)".to_owned());
    }
    for (name, wanted) in [("binlog_format", "ROW"), ("binlog_row_image", "FULL"), ("binlog_row_metadata", "FULL")] {
        match variable(conn, name).await? {
            Some(value) if value.eq_ignore_ascii_case(wanted) => {}
            Some(value) => wrong.push(format!("{name} is {value}, not {wanted}")),
            // Column names in the binlog: a row is read by name, so a column
            // added or dropped elsewhere in the table moves nothing.
            None => wrong.push(format!("the server has no {name} (MySQL 8.0.1+ or MariaDB 10.5+ has)")),
        }
    }
    // Compressed row events are not decoded here: their rows would be lost.
    for name in ["log_bin_compress", "binlog_transaction_compression"] {
        if on(&variable(conn, name).await?) {
            wrong.push(format!("{name} is ON; the follower reads uncompressed row events only"));
        }
    }
    if !wrong.is_empty() {
        return Err(Problem::Setup(format!("the server's binlog cannot be followed: {}", wrong.join("; "))));
    }

    let columns: Vec<(String, String, String, String)> = bounded(
        "reading the table's columns",
        conn.exec(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&mapping.database, &mapping.table),
        ),
    )
    .await?;
    let table = mapping.qualified();
    let Some((database, name, _, _)) = columns.first() else {
        return Err(Problem::Setup(format!(
            "table {table} does not exist, or the follower's user cannot see it (GRANT SELECT ON {table})"
        )));
    };
    let followed = Followed { database: database.clone(), table: name.clone() };
    for (role, column) in mapping.columns.iter() {
        let Some((_, _, _, kind)) = columns.iter().find(|(_, _, name, _)| name.eq_ignore_ascii_case(column)) else {
            let names: Vec<&str> = columns.iter().map(|(_, _, name, _)| name.as_str()).collect();
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
    current_position(conn).await?;
    Ok(followed)
}

/// The server's current binlog position: where the next commit goes.
pub async fn current_position(conn: &mut Conn) -> Result<Position, Problem> {
    let denied = |e: &mysql_async::ServerError| {
        Problem::Setup(format!(
            "cannot read the server's binlog position ({e}); grant the follower's user REPLICATION CLIENT \
             (BINLOG MONITOR on MariaDB)"
        ))
    };
    let mut row: Option<Row> = None;
    // MySQL 8.4 renamed the statement; MariaDB and older MySQL know the first.
    for statement in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
        match answered("reading the binlog position", conn.query_first(statement)).await? {
            Ok(found) => {
                row = found;
                break;
            }
            Err(e) if ACCESS_DENIED.contains(&e.code) => return Err(denied(&e)),
            // A syntax error: the other statement.
            Err(_) => continue,
        }
    }
    let row = row.ok_or_else(|| Problem::Setup("the server reports no binlog position: is log_bin on?".into()))?;
    let file = row.get::<Option<String>, _>(0).flatten();
    let offset = row.get::<Option<u64>, _>(1).flatten();
    match (file, offset) {
        (Some(file), Some(offset)) => Ok(Position::new(file, offset)),
        _ => Err(Problem::Connection("the server's binlog position is unreadable".into())),
    }
}

/// The binlog position of the consistent snapshot this connection's
/// transaction reads (MariaDB's `binlog_snapshot_file` and `_position`);
/// None where the server does not tell.
pub async fn snapshot_position(conn: &mut Conn) -> Result<Option<Position>, Problem> {
    let rows: Vec<(String, String)> =
        bounded("reading the snapshot's position", conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'")).await?;
    let value = |name: &str| rows.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    Ok(match (value("binlog_snapshot_file"), value("binlog_snapshot_position")) {
        (Some(file), Some(offset)) if !file.is_empty() => offset.parse().ok().map(|offset| Position::new(file, offset)),
        _ => None,
    })
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
pub fn is_followed(tme: &TableMapEvent<'_>, followed: &Followed) -> bool {
    tme.database_name() == followed.database.as_str() && tme.table_name() == followed.table.as_str()
}

/// The rows of a row event of the followed table, as images of the mapped
/// columns; a row that cannot be decoded is an error of its own (the
/// follower dead-letters it). A mapped column missing from the event is a
/// problem of the setup (dropped or renamed, or no column names in the
/// binlog), not of a row: the follower stops rather than dead-letter every
/// row after it.
pub fn row_changes(
    event: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
    mapping: &Mapping,
) -> Result<Vec<Result<RowChange, String>>, Problem> {
    let mut changes = Vec::new();
    for row in event.rows(tme) {
        let (before, after) = match row {
            Ok(images) => images,
            Err(e) => {
                // The rest of the event cannot be told apart from this row.
                changes.push(Err(format!("an undecodable row: {e}")));
                break;
            }
        };
        let image = |row: Option<BinlogRow>| row.map(|row| binlog_image(&row, mapping)).transpose();
        let change = match (event, image(before)?, image(after)?) {
            (RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_), _, Some(after)) => {
                Ok(RowChange::Insert(after))
            }
            (
                RowsEventData::UpdateRowsEvent(_)
                | RowsEventData::UpdateRowsEventV1(_)
                | RowsEventData::PartialUpdateRowsEvent(_),
                Some(before),
                Some(after),
            ) => Ok(RowChange::Update(before, after)),
            (RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_), Some(before), _) => {
                Ok(RowChange::Delete(before))
            }
            _ => Err("a row without the images its event's kind has".to_owned()),
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
            // JSON: no role takes it; a figure or id of it fails to parse.
            _ => Some("(json)".to_owned()),
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

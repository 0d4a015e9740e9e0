//! What a warehouse table means to stocklock: which of its columns name the
//! record and hold the figures, and how a row image becomes a stock write.
//! Parsing here follows the rules of the API and of the stream channel, so
//! a figure the API would refuse is refused here too, and the error names
//! the table's column.

use std::collections::HashMap;

use super::position::Position;
use crate::domain::{
    AdjustStockCommand, Error, MAX_SCALED, RecordKey, RequestId, ScaledStock, SetStockCommand, Signed, Sku, UnitScale,
    WarehouseId,
};

/// The actor of the stock writes the follower makes, in audit and events.
pub const ACTOR: &str = "binlog";

/// What a row of the table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A row is a record's stock: an INSERT or UPDATE sets it (a snapshot).
    Snapshot,
    /// A row is one movement (a receipt, a shipment, an adjustment): an
    /// INSERT adds its quantities to the record's (a delta), once.
    Movement,
}

/// What a DELETE of a stock row does, in snapshot mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDelete {
    /// The record's physical, reserved and in-transit stock become zero.
    Zero,
    /// Nothing: the record keeps its last figures.
    Ignore,
}

/// The roles a column can have, as `--cdc-columns` names them.
const ROLES: [&str; 9] =
    ["sku", "warehouse_id", "physical", "reserved", "in_transit", "version", "unit_scale", "id", "reason"];

/// Which column plays which role. The figures are the record's own in
/// snapshot mode and the movement's change in movement mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns(HashMap<&'static str, String>);

impl Columns {
    /// Parses `role=column,...` over the defaults of `mode`: `sku`,
    /// `warehouse_id` and `physical` are the columns of the same name unless
    /// named, and `id` too in movement mode; the other roles are mapped only
    /// when named.
    pub fn parse(text: &str, mode: Mode) -> Result<Self, String> {
        let mut columns: HashMap<&'static str, String> =
            ["sku", "warehouse_id", "physical"].into_iter().map(|role| (role, role.to_owned())).collect();
        if mode == Mode::Movement {
            columns.insert("id", "id".to_owned());
        }
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (role, column) = pair
                .split_once('=')
                .map(|(role, column)| (role.trim(), column.trim()))
                .ok_or_else(|| format!("--cdc-columns: {pair:?} is not role=column"))?;
            let role = ROLES
                .iter()
                .find(|known| **known == role)
                .ok_or_else(|| format!("--cdc-columns: {role:?} is not one of {}", ROLES.join(", ")))?;
            if column.is_empty() || column.contains('`') {
                return Err(format!("--cdc-columns: {role} names no usable column ({column:?})"));
            }
            columns.insert(role, column.to_owned());
        }
        let misplaced: &[&str] = match mode {
            Mode::Snapshot => &["id", "reason"],
            Mode::Movement => &["version"],
        };
        if let Some(role) = misplaced.iter().find(|role| columns.contains_key(**role)) {
            return Err(format!("--cdc-columns: {role} has no meaning in {mode:?} mode"));
        }
        Ok(Self(columns))
    }

    /// The column of `role`, when mapped.
    pub fn get(&self, role: &str) -> Option<&str> {
        self.0.get(role).map(String::as_str)
    }

    /// Every mapped (role, column), in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        ROLES.iter().filter_map(|role| self.0.get(role).map(|column| (*role, column.as_str())))
    }
}

/// The whole mapping of one table.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// Snapshot or movement rows.
    pub mode: Mode,
    /// The table's database (schema).
    pub database: String,
    /// The table.
    pub table: String,
    /// Which column plays which role.
    pub columns: Columns,
    /// The unit scale of the figures, when no column gives it per row.
    pub unit_scale: UnitScale,
    /// What a DELETE does (snapshot mode).
    pub on_delete: OnDelete,
}

/// A row image: the mapped columns' values as text (`None` for SQL NULL),
/// by role. A role whose column the image lacks is absent.
pub type Image = HashMap<&'static str, Option<String>>;

/// One stock write a row asks for.
#[derive(Debug)]
pub enum Change {
    /// A record's stock.
    Snapshot(SetStockCommand),
    /// A change of a record's stock, applied once.
    Delta(AdjustStockCommand),
}

impl Change {
    /// The record it writes.
    pub fn record(&self) -> &RecordKey {
        match self {
            Self::Snapshot(cmd) => &cmd.record,
            Self::Delta(cmd) => &cmd.record,
        }
    }
}

/// What a row event did to one row.
#[derive(Debug)]
pub enum RowChange {
    /// INSERT: the new row.
    Insert(Image),
    /// UPDATE: the row before and after.
    Update(Image, Image),
    /// DELETE: the row that was.
    Delete(Image),
}

impl Mapping {
    /// The table as `database.table`, for messages and names.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// The stock writes one row change asks for, in order (none for a
    /// DELETE that is ignored). `at` is the end of the row's event in the
    /// binlog: in snapshot mode without a version column it is the
    /// snapshot's source_version, so a change replayed after a restart, or
    /// an older one, is ignored as stale.
    pub fn changes(&self, row: &RowChange, at: &Position) -> Result<Vec<Change>, Error> {
        match (self.mode, row) {
            (Mode::Snapshot, RowChange::Insert(after)) => Ok(vec![self.snapshot(after, at)?]),
            (Mode::Snapshot, RowChange::Update(before, after)) => {
                let mut changes = Vec::with_capacity(2);
                // A row whose sku or warehouse changed leaves its old record.
                if self.record(before)? != self.record(after)? {
                    changes.extend(self.deleted(before, at)?);
                }
                changes.push(self.snapshot(after, at)?);
                Ok(changes)
            }
            (Mode::Snapshot, RowChange::Delete(before)) => Ok(self.deleted(before, at)?.into_iter().collect()),
            (Mode::Movement, RowChange::Insert(after)) => Ok(vec![self.movement(after)?]),
            // A note or a timestamp changed: no stock did.
            (Mode::Movement, RowChange::Update(before, after)) if self.same_movement(before, after) => Ok(Vec::new()),
            (Mode::Movement, RowChange::Update(before, _)) => Err(Error::invalid(
                self.column("id"),
                format!(
                    "movement {} was updated; movements are append-only, so the correction must be a new row",
                    self.text(before, "id").unwrap_or("?")
                ),
            )),
            // Purging old movements changes no stock.
            (Mode::Movement, RowChange::Delete(_)) => Ok(Vec::new()),
        }
    }

    /// Whether an update left everything a movement applies as it was.
    fn same_movement(&self, before: &Image, after: &Image) -> bool {
        ["sku", "warehouse_id", "physical", "reserved", "in_transit", "unit_scale", "id"]
            .iter()
            .all(|role| before.get(role) == after.get(role))
    }

    /// A snapshot from a row of the initial load, read at `at`.
    pub fn loaded(&self, row: &Image, at: &Position) -> Result<Change, Error> {
        self.snapshot(row, at)
    }

    fn snapshot(&self, row: &Image, at: &Position) -> Result<Change, Error> {
        let unit_scale = self.unit_scale(row)?;
        let figure = |role: &str| match self.text(row, role) {
            None => Ok(ScaledStock(0)),
            Some(text) => ScaledStock::parse(text, unit_scale, self.column(role)),
        };
        let cmd = SetStockCommand {
            record: self.record(row)?,
            physical: match self.text(row, "physical") {
                None => return Err(Error::invalid(self.column("physical"), "is NULL")),
                Some(_) => figure("physical")?,
            },
            reserved: figure("reserved")?,
            in_transit: figure("in_transit")?,
            unit_scale,
            source_version: self.version(row, at)?,
            request_id: None,
            actor: ACTOR.into(),
        };
        cmd.check_in_range()?;
        Ok(Change::Snapshot(cmd))
    }

    /// What the DELETE of a stock row asks for.
    fn deleted(&self, before: &Image, at: &Position) -> Result<Option<Change>, Error> {
        if self.on_delete == OnDelete::Ignore {
            return Ok(None);
        }
        let version = match self.columns.get("version") {
            // The row's last version was applied; zero comes after it.
            Some(_) => self.version(before, at)? + 1,
            None => at.source_version()?,
        };
        Ok(Some(Change::Snapshot(SetStockCommand {
            record: self.record(before)?,
            physical: ScaledStock(0),
            reserved: ScaledStock(0),
            in_transit: ScaledStock(0),
            unit_scale: self.unit_scale(before)?,
            source_version: version,
            request_id: None,
            actor: ACTOR.into(),
        })))
    }

    fn movement(&self, row: &Image) -> Result<Change, Error> {
        let id = self.text(row, "id").ok_or_else(|| Error::invalid(self.column("id"), "is NULL"))?;
        let delta = |role: &str| match self.text(row, role) {
            None => Ok(Signed::ZERO),
            Some(text) => Signed::parse(text, self.column(role)),
        };
        let cmd = AdjustStockCommand {
            record: self.record(row)?,
            physical: delta("physical")?,
            reserved: delta("reserved")?,
            in_transit: delta("in_transit")?,
            // The movement's id is its idempotency key: a movement replayed
            // after a restart or a takeover is applied once.
            request_id: RequestId::parse(&format!("binlog:{}.{}:{id}", self.database, self.table), self.column("id"))?,
            reason: self.text(row, "reason").unwrap_or_default().to_owned(),
            actor: ACTOR.into(),
        };
        cmd.check_not_empty().map_err(|_| {
            Error::invalid(self.column("physical"), format!("movement {id} changes no figure (every quantity is zero)"))
        })?;
        Ok(Change::Delta(cmd))
    }

    fn record(&self, row: &Image) -> Result<RecordKey, Error> {
        let text = |role: &str| self.text(row, role).ok_or_else(|| Error::invalid(self.column(role), "is NULL"));
        Ok(RecordKey::new(
            Sku::parse(text("sku")?, self.column("sku"))?,
            WarehouseId::parse(text("warehouse_id")?, self.column("warehouse_id"))?,
        ))
    }

    fn unit_scale(&self, row: &Image) -> Result<UnitScale, Error> {
        let Some(column) = self.columns.get("unit_scale") else {
            return Ok(self.unit_scale);
        };
        let text = self.text(row, "unit_scale").ok_or_else(|| Error::invalid(column, "is NULL"))?;
        let scale = text.parse().map_err(|_| Error::invalid(column, format!("{text:?} is not a unit scale")))?;
        UnitScale::new(scale, column)
    }

    fn version(&self, row: &Image, at: &Position) -> Result<u64, Error> {
        let Some(column) = self.columns.get("version") else {
            return at.source_version();
        };
        let text = self.text(row, "version").ok_or_else(|| Error::invalid(column, "is NULL"))?;
        text.parse::<u64>()
            .ok()
            .filter(|version| *version < MAX_SCALED as u64)
            .ok_or_else(|| Error::invalid(column, format!("{text:?} is not a whole number below 2^53")))
    }

    /// The column that plays `role` (the role itself if none does, which
    /// only a row of an unmapped role could ask for).
    fn column<'a>(&'a self, role: &'a str) -> &'a str {
        self.columns.get(role).unwrap_or(role)
    }

    fn text<'a>(&self, row: &'a Image, role: &str) -> Option<&'a str> {
        row.get(role).and_then(|value| value.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(mode: Mode, columns: &str) -> Mapping {
        Mapping {
            mode,
            database: "shop".into(),
            table: "stock".into(),
            columns: Columns::parse(columns, mode).unwrap(),
            unit_scale: UnitScale::new(0, "unit_scale").unwrap(),
            on_delete: OnDelete::Zero,
        }
    }

    fn image(pairs: &[(&'static str, Option<&str>)]) -> Image {
        pairs.iter().map(|(role, value)| (*role, value.map(str::to_owned))).collect()
    }

    fn at(offset: u64) -> Position {
        Position::new("binlog.000002", offset)
    }

    #[test]
    fn columns_default_and_refuse_what_they_cannot_mean() {
        let columns = Columns::parse("physical=on_hand, reserved = held", Mode::Snapshot).unwrap();
        assert_eq!(columns.get("sku"), Some("sku"));
        assert_eq!(columns.get("physical"), Some("on_hand"));
        assert_eq!(columns.get("reserved"), Some("held"));
        assert_eq!(columns.get("in_transit"), None);
        assert_eq!(Columns::parse("", Mode::Movement).unwrap().get("id"), Some("id"));
        for (text, mode, says) in [
            ("qty", Mode::Snapshot, "is not role=column"),
            ("quantity=qty", Mode::Snapshot, "\"quantity\" is not one of"),
            ("physical=", Mode::Snapshot, "names no usable column"),
            ("id=movement_id", Mode::Snapshot, "id has no meaning in Snapshot mode"),
            ("version=v", Mode::Movement, "version has no meaning in Movement mode"),
        ] {
            let error = Columns::parse(text, mode).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_stock_row_is_a_snapshot_versioned_by_its_binlog_position() {
        let mapping = mapping(Mode::Snapshot, "physical=on_hand,unit_scale=scale");
        let row = image(&[
            ("sku", Some("S1")),
            ("warehouse_id", Some("W1")),
            ("physical", Some("12.50")),
            ("unit_scale", Some("2")),
        ]);
        let changes = mapping.changes(&RowChange::Insert(row), &at(900)).unwrap();
        let [Change::Snapshot(cmd)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!((cmd.physical.0, cmd.reserved.0, cmd.unit_scale.get()), (1250, 0, 2));
        assert_eq!(cmd.source_version, (2 << 32) | 900);
    }

    #[test]
    fn a_row_that_moves_to_another_record_empties_the_old_one() {
        let mapping = mapping(Mode::Snapshot, "");
        let before = image(&[("sku", Some("S1")), ("warehouse_id", Some("W1")), ("physical", Some("4"))]);
        let after = image(&[("sku", Some("S1")), ("warehouse_id", Some("W2")), ("physical", Some("4"))]);
        let changes = mapping.changes(&RowChange::Update(before, after), &at(10)).unwrap();
        let [Change::Snapshot(old), Change::Snapshot(new)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!((old.record.warehouse.as_str(), old.physical.0), ("W1", 0));
        assert_eq!((new.record.warehouse.as_str(), new.physical.0), ("W2", 4));
    }

    #[test]
    fn a_delete_follows_the_configuration() {
        let row = image(&[("sku", Some("S1")), ("warehouse_id", Some("W1")), ("physical", Some("4"))]);
        let mut mapping = mapping(Mode::Snapshot, "");
        let changes = mapping.changes(&RowChange::Delete(row.clone()), &at(10)).unwrap();
        assert!(matches!(&changes[..], [Change::Snapshot(cmd)] if cmd.physical.0 == 0));
        mapping.on_delete = OnDelete::Ignore;
        assert!(mapping.changes(&RowChange::Delete(row), &at(10)).unwrap().is_empty());
    }

    #[test]
    fn a_movement_is_a_delta_keyed_by_its_id() {
        let mapping = mapping(Mode::Movement, "physical=qty");
        let row =
            image(&[("sku", Some("S1")), ("warehouse_id", Some("W1")), ("physical", Some("-3")), ("id", Some("77"))]);
        let changes = mapping.changes(&RowChange::Insert(row.clone()), &at(10)).unwrap();
        let [Change::Delta(cmd)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!(cmd.request_id.as_str(), "binlog:shop.stock:77");
        assert_eq!(cmd.physical, Signed::parse("-3", "q").unwrap());
        // An update that leaves the movement's figures alone changes no stock.
        assert!(mapping.changes(&RowChange::Update(row.clone(), row.clone()), &at(10)).unwrap().is_empty());
        let mut corrected = row.clone();
        corrected.insert("physical", Some("-4".to_owned()));
        let error = mapping.changes(&RowChange::Update(row, corrected), &at(10)).unwrap_err();
        assert!(error.to_string().contains("append-only"), "{error}");
    }

    #[test]
    fn a_bad_row_names_its_column() {
        let mapping = mapping(Mode::Snapshot, "physical=on_hand,version=v");
        for (row, column) in [
            (
                image(&[
                    ("sku", Some("S")),
                    ("warehouse_id", Some("W")),
                    ("physical", Some("-1")),
                    ("version", Some("1")),
                ]),
                "on_hand",
            ),
            (
                image(&[
                    ("sku", Some("S")),
                    ("warehouse_id", Some("W")),
                    ("physical", Some("1.5")),
                    ("version", Some("1")),
                ]),
                "on_hand",
            ),
            (
                image(&[("sku", Some("S")), ("warehouse_id", Some("W")), ("physical", None), ("version", Some("1"))]),
                "on_hand",
            ),
            (
                image(&[
                    ("sku", Some("S")),
                    ("warehouse_id", Some("W")),
                    ("physical", Some("1")),
                    ("version", Some("x")),
                ]),
                "v",
            ),
            (
                image(&[
                    ("sku", Some("S x")),
                    ("warehouse_id", Some("W")),
                    ("physical", Some("1")),
                    ("version", Some("1")),
                ]),
                "sku",
            ),
        ] {
            match mapping.changes(&RowChange::Insert(row.clone()), &at(1)) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, column, "{row:?}"),
                other => panic!("{row:?}: {other:?}"),
            }
        }
    }
}

//! Identifiers: SKUs, warehouses, orders, holders, request, lock and batch ids.
//!
//! Every identifier is 1 to [`MAX_ID_LEN`] bytes of printable text without
//! whitespace, braces or `|`: braces would change a Redis Cluster hash tag and
//! `|` separates the parts of a record or lock id.

use std::fmt;

use super::Error;

/// Longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn check(value: &str, field: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(field, format!("is {} bytes long, the limit is {MAX_ID_LEN}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '{' | '}' | '|')) {
        return Err(Error::invalid(
            field,
            format!("contains {c:?}; whitespace, control characters, braces and '|' are not allowed"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`; `field` names it in the error.
            pub fn parse(value: &str, field: &str) -> Result<Self, Error> {
                check(value, field)?;
                Ok(Self(value.to_owned()))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A stock-keeping unit, as the shop names it.
    Sku
);
id_type!(
    /// A warehouse (or store, or any stock location).
    WarehouseId
);
id_type!(
    /// The caller's reference for the order a lock is for.
    OrderId
);
id_type!(
    /// The caller that holds a lock; only it may renew, release or commit it.
    Holder
);
id_type!(
    /// The caller's idempotency key for one mutation.
    RequestId
);
id_type!(
    /// A server-generated id for the locks of one BatchLock call.
    BatchId
);

impl BatchId {
    /// A new, random batch id.
    pub fn generate() -> Self {
        Self(format!("b-{:032x}", rand::random::<u128>()))
    }
}

/// One stock record: a SKU in a warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// The SKU.
    pub sku: Sku,
    /// The warehouse.
    pub warehouse: WarehouseId,
}

impl RecordKey {
    /// Builds a key from its two parts.
    pub fn new(sku: Sku, warehouse: WarehouseId) -> Self {
        Self { sku, warehouse }
    }

    /// Parses the `sku|warehouse` form used inside Redis.
    pub fn parse_id(id: &str) -> Option<Self> {
        let (sku, warehouse) = id.split_once('|')?;
        Some(Self { sku: Sku::parse(sku, "sku").ok()?, warehouse: WarehouseId::parse(warehouse, "warehouse_id").ok()? })
    }
}

impl fmt::Display for RecordKey {
    /// `sku|warehouse`: unambiguous, since neither part may contain `|`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.sku, self.warehouse)
    }
}

/// A lock's id: `sku|warehouse|token-nonce`.
///
/// It names its record, so every operation on a lock is one script on one
/// record (one shard, on Redis Cluster) with no lookup first. The fencing
/// token makes it unique within the record, and the random nonce makes it
/// unguessable and keeps it unique should a record ever be recreated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockId {
    /// The record the lock holds stock of.
    pub record: RecordKey,
    /// The lock's fencing token, unique within its record.
    pub token: u64,
    /// Random hex chosen when the lock was taken.
    pub nonce: String,
}

/// Longest lock id accepted, in bytes: two identifiers, a token and a nonce.
pub const MAX_LOCK_ID_LEN: usize = 2 * MAX_ID_LEN + 48;

impl LockId {
    /// Parses a lock id that a client sent back; `field` names it in the error.
    pub fn parse(value: &str, field: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if value.len() > MAX_LOCK_ID_LEN {
            return Err(Error::invalid(
                field,
                format!("is {} bytes long, the limit is {MAX_LOCK_ID_LEN}", value.len()),
            ));
        }
        let malformed = || Error::invalid(field, "is not a lock id issued by this service");
        let mut parts = value.split('|');
        let (Some(sku), Some(warehouse), Some(tail), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let (token, nonce) = tail.split_once('-').ok_or_else(malformed)?;
        let token = token.parse::<u64>().map_err(|_| malformed())?;
        let (random, session) = match nonce.split_once('s') {
            Some((random, session)) => (random, Some(session)),
            None => (nonce, None),
        };
        if random.is_empty() || random.len() > 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        if session.is_some_and(|s| SessionId::parse(s, field).is_err()) {
            return Err(malformed());
        }
        Ok(Self {
            record: RecordKey {
                sku: Sku::parse(sku, field).map_err(|_| malformed())?,
                warehouse: WarehouseId::parse(warehouse, field).map_err(|_| malformed())?,
            },
            token,
            nonce: nonce.to_owned(),
        })
    }
}

impl LockId {
    /// The session the lock lives in, if it was taken in one: its nonce
    /// is then `<random hex>s<session id>` (see [`session_nonce`]).
    pub fn session(&self) -> Option<SessionId> {
        SessionId::of_nonce(&self.nonce)
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}-{}", self.record, self.token, self.nonce)
    }
}

/// A new random nonce for the locks of one request.
pub fn new_nonce() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The nonce of the locks one request takes in `session`: random hex, then
/// `s` and the session id, so that every lock id names its session and a
/// call about the lock finds the session with no lookup.
pub fn session_nonce(random: &str, session: &SessionId) -> String {
    format!("{random}s{session}")
}

/// A session: a lease that keeps every lock taken in it alive while its
/// holder keeps the session alive (see `OpenSession`). Sixteen lowercase hex
/// digits, derived from the request_id that opened it, so a retried
/// OpenSession names the same session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Length of a session id, in hex digits.
    pub const LEN: usize = 16;

    /// Validates a session id a client sent; `field` names it in the error.
    pub fn parse(value: &str, field: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if value.len() != Self::LEN || !value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::invalid(field, "is not a session id issued by this service"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The session a lock nonce names (see [`session_nonce`]), if any.
    pub fn of_nonce(nonce: &str) -> Option<Self> {
        let (_, session) = nonce.split_once('s')?;
        Self::parse(session, "nonce").ok()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_what_would_break_keys() {
        for bad in ["", "a b", "a{b", "a}b", "a|b", "a\nb", &"x".repeat(129)] {
            assert!(Sku::parse(bad, "sku").is_err(), "{bad:?} was accepted");
        }
        assert!(Sku::parse("SKU-1/blue:XL", "sku").is_ok());
        assert!(Sku::parse("Größe-42", "sku").is_ok());
    }

    #[test]
    fn lock_id_round_trips() {
        let id = LockId {
            record: RecordKey::new(Sku::parse("SKU-1", "sku").unwrap(), WarehouseId::parse("WH:A", "w").unwrap()),
            token: 42,
            nonce: "00ff00ff".into(),
        };
        let text = id.to_string();
        assert_eq!(text, "SKU-1|WH:A|42-00ff00ff");
        assert_eq!(LockId::parse(&text, "lock_id").unwrap(), id);
    }

    #[test]
    fn a_lock_id_names_its_session() {
        let session = SessionId::parse("0123456789abcdef", "session_id").unwrap();
        let id = LockId {
            record: RecordKey::new(Sku::parse("SKU-1", "sku").unwrap(), WarehouseId::parse("WH-A", "w").unwrap()),
            token: 7,
            nonce: session_nonce("00ff00ff", &session),
        };
        let parsed = LockId::parse(&id.to_string(), "lock_id").unwrap();
        assert_eq!(parsed.session(), Some(session));
        assert_eq!(LockId::parse("a|b|1-00ff", "lock_id").unwrap().session(), None);
    }

    #[test]
    fn lock_id_rejects_forgeries() {
        for bad in [
            "x",
            "a|b",
            "a|b|c",
            "a|b|1",
            "a|b|1-",
            "a|b|x-00",
            "a|b|1-zz",
            "a|b|1-00|c",
            "a|b|1-00s",
            "a|b|1-00s0123",
            "a|b|1-s0123456789abcdef",
            "a|b|1-00s0123456789ABCDEF",
        ] {
            assert!(LockId::parse(bad, "lock_id").is_err(), "{bad:?} was accepted");
        }
    }
}

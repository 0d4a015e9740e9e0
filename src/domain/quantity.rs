//! Quantities: decimal strings at the edge, scaled integers inside Redis.
//!
//! A record's [`UnitScale`] says how many fractional digits it counts in; a
//! figure `2.5` on a record of scale 1 is stored as `25`. No floating point
//! touches a stock figure: parsing is exact decimal arithmetic, and every
//! scaled value stays below 2^53 so Lua (whose numbers are doubles) holds it
//! exactly.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::Error;

/// Largest magnitude of a scaled figure: what a Lua number holds exactly.
pub const MAX_SCALED: i64 = (1 << 53) - 1;

/// Most fractional digits a record may count in.
pub const MAX_UNIT_SCALE: u32 = 6;

/// How many fractional digits a record counts in (0 = whole units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnitScale(u32);

impl UnitScale {
    /// Validates a unit scale; `field` names it in the error.
    pub fn new(scale: u32, field: &str) -> Result<Self, Error> {
        if scale > MAX_UNIT_SCALE {
            return Err(Error::invalid(field, format!("is {scale}; it must be between 0 and {MAX_UNIT_SCALE}")));
        }
        Ok(Self(scale))
    }

    /// The number of fractional digits.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Formats a scaled integer of this scale as a decimal string.
    pub fn format(self, scaled: i64) -> String {
        format_scaled(scaled, self.0)
    }
}

/// Formats a scaled integer as a decimal without trailing zeros: `25`, 1 → `2.5`.
pub fn format_scaled(scaled: i64, scale: u32) -> String {
    Decimal::new(scaled, scale).normalize().to_string()
}

/// A decimal as its exact integer mantissa and scale (`2.5` = 25 × 10^-1),
/// with trailing zeros removed. The record's unit scale, which only Redis
/// knows, decides inside the script whether it has too many digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The digits, as an integer.
    pub mantissa: i64,
    /// How many of them are fractional.
    pub scale: u32,
}

impl Signed {
    /// Zero, for a delta that was left out.
    pub const ZERO: Self = Self { mantissa: 0, scale: 0 };

    /// Parses any decimal, negative and zero included; `field` names it in errors.
    pub fn parse(text: &str, field: &str) -> Result<Self, Error> {
        let decimal = parse_decimal(text, field)?;
        let scale = decimal.scale();
        if scale > MAX_UNIT_SCALE {
            return Err(Error::invalid(
                field,
                format!("{text:?} has {scale} fractional digits; at most {MAX_UNIT_SCALE} are allowed"),
            ));
        }
        let mantissa = i64::try_from(decimal.mantissa())
            .ok()
            .filter(|m| m.abs() <= MAX_SCALED)
            .ok_or_else(|| Error::invalid(field, format!("{text:?} is too large")))?;
        Ok(Self { mantissa, scale })
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    /// The value scaled to `unit`, when it has no more digits than the unit
    /// allows and fits below 2^53.
    pub fn to_scaled(self, unit: UnitScale, field: &str) -> Result<i64, Error> {
        if self.scale > unit.get() {
            return Err(Error::invalid(
                field,
                format!("has {} fractional digits; the record's unit_scale allows {}", self.scale, unit.get()),
            ));
        }
        10i64
            .checked_pow(unit.get() - self.scale)
            .and_then(|factor| self.mantissa.checked_mul(factor))
            .filter(|v| v.abs() <= MAX_SCALED)
            .ok_or_else(|| Error::invalid(field, "is too large"))
    }
}

/// A strictly positive quantity, as locked or committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(Signed);

impl Quantity {
    /// Parses a quantity that must be greater than zero.
    pub fn parse(text: &str, field: &str) -> Result<Self, Error> {
        let value = Signed::parse(text, field)?;
        if value.mantissa <= 0 {
            return Err(Error::invalid(field, format!("{text:?} must be greater than zero")));
        }
        Ok(Self(value))
    }

    /// The exact decimal.
    pub fn decimal(self) -> Signed {
        self.0
    }
}

/// A figure of a stock snapshot, already scaled to the snapshot's unit scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaledStock(pub i64);

impl ScaledStock {
    /// Parses a non-negative figure (empty = 0) and scales it to `unit`.
    pub fn parse(text: &str, unit: UnitScale, field: &str) -> Result<Self, Error> {
        let value = if text.is_empty() { Signed::ZERO } else { Signed::parse(text, field)? };
        if value.mantissa < 0 {
            return Err(Error::invalid(field, format!("{text:?} must not be negative")));
        }
        value.to_scaled(unit, field).map(Self)
    }
}

fn parse_decimal(text: &str, field: &str) -> Result<Decimal, Error> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required, as a decimal string such as \"2\" or \"2.5\""));
    }
    let plain = text.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'));
    let decimal = if plain { Decimal::from_str(text).ok() } else { None };
    decimal.map(|d| d.normalize()).ok_or_else(|| Error::invalid(field, format!("{text:?} is not a decimal number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(Signed::parse("2.50", "q").unwrap(), Signed { mantissa: 25, scale: 1 });
        assert_eq!(Signed::parse("-3", "q").unwrap(), Signed { mantissa: -3, scale: 0 });
        assert_eq!(Signed::parse("0.000001", "q").unwrap(), Signed { mantissa: 1, scale: 6 });
        assert_eq!(Signed::parse("100", "q").unwrap(), Signed { mantissa: 100, scale: 0 });
    }

    #[test]
    fn rejects_what_is_not_a_plain_decimal() {
        for bad in ["", "abc", "1e3", "+1", " 1", "1,5", "0x10", "NaN", "--1", "1.2.3", "0.0000001"] {
            assert!(Signed::parse(bad, "q").is_err(), "{bad:?} was accepted");
        }
        assert!(Signed::parse("9007199254740992", "q").is_err());
        assert!(Signed::parse("9007199254740991", "q").is_ok());
    }

    #[test]
    fn quantity_is_positive() {
        assert!(Quantity::parse("0", "q").is_err());
        assert!(Quantity::parse("0.000", "q").is_err());
        assert!(Quantity::parse("-1", "q").is_err());
        assert!(Quantity::parse("0.5", "q").is_ok());
    }

    #[test]
    fn scales_to_the_unit() {
        let unit = UnitScale::new(3, "s").unwrap();
        assert_eq!(Signed::parse("2.5", "q").unwrap().to_scaled(unit, "q").unwrap(), 2500);
        assert!(Signed::parse("2.5001", "q").unwrap().to_scaled(unit, "q").is_err());
        assert!(Signed::parse("9007199254740", "q").unwrap().to_scaled(UnitScale::new(6, "s").unwrap(), "q").is_err());
        assert!(UnitScale::new(7, "s").is_err());
    }

    #[test]
    fn formats_without_trailing_zeros() {
        assert_eq!(format_scaled(2500, 3), "2.5");
        assert_eq!(format_scaled(97, 0), "97");
        assert_eq!(format_scaled(-15, 1), "-1.5");
        assert_eq!(format_scaled(0, 4), "0");
    }
}

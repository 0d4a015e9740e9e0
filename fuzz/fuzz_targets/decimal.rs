//! Decimal parsing: any text either parses to a value inside the exact
//! range, which prints and parses back to itself, or is refused with an
//! error naming the field; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stocklock::domain::{Error, MAX_SCALED, MAX_UNIT_SCALE, Quantity, ScaledStock, Signed, UnitScale, format_scaled};

fuzz_target!(|data: (&str, u8)| {
    let (text, unit) = data;
    match Signed::parse(text, "quantity") {
        Ok(value) => {
            assert!(value.mantissa.abs() <= MAX_SCALED && value.scale <= MAX_UNIT_SCALE, "{text:?} -> {value:?}");
            let printed = format_scaled(value.mantissa, value.scale);
            let again = Signed::parse(&printed, "quantity").expect("a printed value parses");
            assert_eq!(
                format_scaled(again.mantissa, again.scale),
                printed,
                "{text:?} printed as {printed:?} does not round-trip"
            );
            if let Ok(unit) = UnitScale::new(u32::from(unit % 12), "unit_scale") {
                if let Ok(scaled) = value.to_scaled(unit, "quantity") {
                    assert!(scaled.abs() <= MAX_SCALED);
                    assert_eq!(format_scaled(scaled, unit.get()), printed, "scaling keeps the value of {text:?}");
                }
            }
        }
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "quantity"),
        Err(other) => panic!("{text:?}: not an argument error: {other:?}"),
    }
    if let Ok(quantity) = Quantity::parse(text, "quantity") {
        assert!(quantity.decimal().mantissa > 0, "{text:?} is a quantity but not positive");
    }
    if let Ok(unit) = UnitScale::new(u32::from(unit % 12), "unit_scale") {
        if let Ok(stock) = ScaledStock::parse(text, unit, "physical") {
            assert!((0..=MAX_SCALED).contains(&stock.0));
        }
    }
});

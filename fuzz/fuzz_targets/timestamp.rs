//! The timestamp parser never panics, and whatever it accepts is a storable
//! instant that formats and parses back to itself.
#![no_main]

use chrono::Datelike;
use chronolog::domain::{format_timestamp, parse_event_timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(at) = parse_event_timestamp(input) {
        assert!((1..=9999).contains(&at.year()), "{input:?} gave {at}");
        assert_eq!(
            at.timestamp_subsec_nanos() % 1_000,
            0,
            "{input:?} kept sub-microsecond digits"
        );
        let formatted = format_timestamp(&at);
        assert_eq!(
            parse_event_timestamp(&formatted),
            Ok(at),
            "{input:?} → {formatted}"
        );
    }
});

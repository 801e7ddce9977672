//! The record decoder never panics on any key and value, and a decoded
//! command encodes to a record that decodes to the same command.
#![no_main]

use chronolog::kafka::record::{decode, encode_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (Option<Vec<u8>>, Option<Vec<u8>>)| {
    let (key, value) = data;
    if let Ok(command) = decode(key.as_deref(), value.as_deref()) {
        let key = command.command_id.to_string();
        assert_eq!(
            decode(Some(key.as_bytes()), Some(&encode_value(&command))),
            Ok(command)
        );
    }
});

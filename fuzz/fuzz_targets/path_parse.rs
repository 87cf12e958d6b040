//! See `checks/path_parse.rs`.
#![no_main]

#[path = "../checks/path_parse.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));

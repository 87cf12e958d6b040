//! See `checks/scp_control.rs`.
#![no_main]

#[path = "../checks/scp_control.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));

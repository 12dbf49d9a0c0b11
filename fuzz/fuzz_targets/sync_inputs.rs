//! `cargo fuzz run sync_inputs`: see `fuzz/checks.rs` (`check_sync_inputs`) for what is checked.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_sync_inputs(data));

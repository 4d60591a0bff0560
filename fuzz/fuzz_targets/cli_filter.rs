//! Fuzz target: see [`blazedb_fuzz::cli_filter`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::cli_filter(data));

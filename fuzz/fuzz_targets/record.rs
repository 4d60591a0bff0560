//! Fuzz target: see [`blazedb_fuzz::record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::record(data));

//! Fuzz target: see [`blazedb_fuzz::value`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::value(data));

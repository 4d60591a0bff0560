//! Fuzz target: see [`blazedb_fuzz::request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::request(data));

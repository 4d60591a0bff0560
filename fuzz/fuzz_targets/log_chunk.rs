//! Fuzz target: see [`blazedb_fuzz::log_chunk`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::log_chunk(data));

//! Fuzz target: see [`blazedb_fuzz::sealed`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::sealed(data));

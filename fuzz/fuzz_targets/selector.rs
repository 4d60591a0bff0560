//! Fuzz target: see [`blazedb_fuzz::selector`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::selector(data));

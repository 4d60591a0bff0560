//! Fuzz target: see [`blazedb_fuzz::invite`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::invite(data));

//! Fuzz target: see [`blazedb_fuzz::peer_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blazedb_fuzz::peer_message(data));

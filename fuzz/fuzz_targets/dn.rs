//! Fuzz target `dn`: [`ldapsync::fuzzing::fuzz_dn`] on every input (seeds in `fuzz/corpus/dn/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_dn(data));

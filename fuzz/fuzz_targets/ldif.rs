//! Fuzz target `ldif`: [`ldapsync::fuzzing::fuzz_ldif`] on every input (seeds in `fuzz/corpus/ldif/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_ldif(data));

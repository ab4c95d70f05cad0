//! Fuzz target `guid`: [`ldapsync::fuzzing::fuzz_guid`] on every input (seeds in `fuzz/corpus/guid/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_guid(data));

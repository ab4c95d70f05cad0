//! Fuzz target `filter`: [`ldapsync::fuzzing::fuzz_filter`] on every input (seeds in `fuzz/corpus/filter/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_filter(data));

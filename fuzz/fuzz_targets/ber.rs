//! Fuzz target `ber`: [`ldapsync::fuzzing::fuzz_ber`] on every input (seeds in `fuzz/corpus/ber/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_ber(data));

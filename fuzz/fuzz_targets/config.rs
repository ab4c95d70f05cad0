//! Fuzz target `config`: [`ldapsync::fuzzing::fuzz_config`] on every input (seeds in `fuzz/corpus/config/`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldapsync::fuzzing::fuzz_config(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jitgate::fuzzing::duration(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enos_fuzz_targets::mqtt_login(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enos_fuzz_targets::pkcs11_config(data));

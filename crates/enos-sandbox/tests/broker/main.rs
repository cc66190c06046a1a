//! The sandbox as a child process, exercised with real rumqttc clients on
//! 127.0.0.1 and credentials signed by enos-sign-core. One test binary so
//! that rumqttd and rumqttc are linked once.

mod activation;
mod common;
mod config_file;
mod enos_certificates;
mod enos_connection;
mod listeners;
mod mqtt_semantics;
mod refusals;
mod reload;
mod sdk_logins;
mod session;
mod sub_device_limits;

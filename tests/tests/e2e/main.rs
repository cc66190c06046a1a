//! End-to-end scenarios over the real binaries and libraries: the EnOS
//! sandbox (child process), the signer (in process with real mTLS, or the
//! `enos-signer` binary where it must die by SIGKILL), agents (the library
//! in this process, or the binary), Debian's Mosquitto.
//!
//! Every scenario ends with the leak scan: every secret it used and every
//! password the signer issued (recovered from the audit trail) are looked
//! for in every log it produced; the demo scans its own run.
//!
//! | module | scenario |
//! |---|---|
//! | `activation` | a gateway without a secret activates (securemode 3), its pushed secret goes into custody, it reconnects with securemode 2; a signer outage and a killed agent mid hand-over; 770 |
//! | `batch` | 150 sub-devices re-logged in by one combine.login.batch; the one the signer has unbound is refused |
//! | `demo` | `enos-demo` runs the whole loop; on failure it names the step; no process is left either way |
//! | `rotation` | a secret rotated while running: the next connect uses the new one, the sandbox refuses the old |
//! | `disabled` | a disabled device: the signer refuses, the agent backs off, recovers once enabled |
//! | `signer_kill` | the signer killed with SIGKILL: sessions stay up, new connects work after its restart |
//! | `fleet` | 200 agents in this process through a broker restart, within the signer's rate limit |
//! | `storm` | `enos-fleet` with 300 agents through connect, broker restart, signer restart: all connect, none refused, within the limit; 200 renewing the signer's certificates; 20 renewing their EnOS certificates in one wave within `[enos_api] concurrency` |
//! | `mosquitto` | Mosquitto: TLS with a required device certificate; CONNACK "not authorised" and backoff |
//! | `replicas` | 200 agents over two signer replicas on PostgreSQL; one SIGKILLed: all fail over, none refused, all audited |

mod activation;
mod batch;
mod demo;
mod disabled;
mod fleet;
mod mosquitto;
mod replicas;
mod rotation;
mod signer_kill;
mod storm;
mod support;

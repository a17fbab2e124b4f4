//! End-to-end tests, in one test binary (one link, one private cluster for
//! all of them; each test takes databases of its own).

mod cdc_changes;
mod cli;
mod help;
mod interop;
mod keyless;
mod log_based;
mod logging;
mod meltano;
mod mistakes;
mod oracle;
mod progress;
mod readme;
mod reference;
mod roundtrip;
mod secure;

//! End-to-end tests, in one test binary (one link, one private cluster for
//! all of them; each test takes databases of its own).

mod cdc_changes;
mod cli;
mod filters;
mod help;
mod interop;
mod interop_taps;
mod interop_targets;
mod keyless;
mod log_based;
mod logging;
mod meltano;
mod mistakes;
mod oracle;
mod pipelines;
mod progress;
mod readme;
mod reference;
mod roundtrip;
mod secure;
mod sources;
mod split;
mod target_settings;

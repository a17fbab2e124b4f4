//! End-to-end tests, in one test binary (one link, one private cluster for
//! all of them; each test takes databases of its own).

mod cli;
mod help;
mod interop;
mod log_based;
mod logging;
mod meltano;
mod mistakes;
mod reference;
mod roundtrip;
mod secure;

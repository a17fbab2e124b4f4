//! The tap's integration tests, in one test binary (one link, one private
//! cluster for all of them; each test takes a database of its own).

mod cli;
mod common;
mod discover;
mod fidelity;
mod memory;
mod sync;
mod types;

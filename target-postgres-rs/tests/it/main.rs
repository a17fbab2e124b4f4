//! The target's integration tests, in one test binary (one link, one private
//! cluster for all of them; each test takes a database of its own).

mod activation;
mod behaviour;
mod common;
mod direct_keys;
mod fidelity;
mod grants;
mod parallel;
mod peers;
mod privileges;
mod vectors;
mod view_widening;

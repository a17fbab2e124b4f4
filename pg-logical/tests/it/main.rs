//! pg-logical against a real server, in one test binary.

mod real_server;
mod slot_and_changes;
mod streaming;

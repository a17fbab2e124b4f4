//! pg-connect against real servers, in one test binary: TLS modes and
//! certificates, and SSH tunnels.

mod diagnosis;
mod tls;
mod tunnel;

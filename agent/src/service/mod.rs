//! Running the agent as a service.
//!
//! - [`notify`]: readiness and stopping notices (`Type=notify`).

pub mod notify;

//! The Shoal controller: enrollment CA, policies, quotas, ACLs, rollouts
//! and fleet metrics.
//!
//! Optional by design: agents keep distributing under the last policy they
//! received when it is down. The service is built on the wire contract in
//! `shoal-proto` (`AgentControl` and `Admin` services).

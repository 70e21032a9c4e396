//! The pure parts of vmcluster: configuration, the topology model and its validation, the
//! identities derived from names, libvirt XML, NoCloud seeds, step plans and node state machines.
//!
//! **Invariant:** nothing in this crate spawns a task, opens a connection or touches the host
//! except reading a config file; facts about the host come in as arguments. That keeps every
//! rule here testable in microseconds and lets the actors own all I/O.

pub mod config;
pub mod dmesg;
pub mod error;
pub mod names;
pub mod plan;
pub mod probe;
pub mod recovery;
pub mod seed;
pub mod snapshot;
pub mod state;
pub mod topology;
pub mod view;
pub mod xml;

pub use error::ErrorCode;

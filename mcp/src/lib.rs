//! The vmcluster MCP server and CLI: the only crate that knows JSON and MCP.
//!
//! **Invariant:** nothing here touches libvirt, SSH or the journal; a tool parses its
//! arguments, sends one request to the [`vmcluster_actors::Engine`], and maps the typed reply
//! (errors are mapped once, in [`envelope`]).

pub mod cli;
pub mod envelope;
pub mod params;
pub mod resources;
pub mod server;
pub mod tools;

//! The vmcluster MCP server and CLI: the only crate that knows JSON and MCP.
//!
//! **Invariant:** nothing here touches libvirt, SSH or the journal; a tool parses its
//! arguments, sends one request to the [`vmcluster_actors::Engine`], and maps the typed reply
//! (errors are mapped once, in [`envelope`]). The server has two front doors: MCP on stdio
//! ([`server`], [`resources`]) and the [`control`] socket for local clients such as
//! `vmcluster events`.

pub mod cli;
pub mod control;
pub mod envelope;
pub mod exec_output;
pub mod params;
pub mod resources;
pub mod server;
pub mod slow;
pub mod tools;

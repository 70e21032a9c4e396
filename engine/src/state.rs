//! Node state machines: the libvirt domain state as we report it, and readiness phases.
//!
//! Readiness is a ladder the NodeActor climbs after a boot: the domain runs, then the SSH port
//! answers, then SSH authenticates and runs a command, then cloud-init reports it finished (when
//! the guest has cloud-init). [`Readiness::transition`] is the one place that says which moves
//! are legal; the table test below covers every pair.

use serde::{Deserialize, Serialize};

/// A domain's state as libvirt reports it (seed 000's strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DomainState {
    /// Running (or blocked, which is running and idle).
    #[serde(rename = "running")]
    Running,
    /// Paused.
    #[serde(rename = "paused")]
    Paused,
    /// Being shut down.
    #[serde(rename = "shutting down")]
    ShuttingDown,
    /// Off.
    #[serde(rename = "shut off")]
    ShutOff,
    /// Crashed.
    #[serde(rename = "crashed")]
    Crashed,
    /// Suspended to disk by the guest.
    #[serde(rename = "pmsuspended")]
    PmSuspended,
    /// No such domain in libvirt (it was removed behind our back, or never defined).
    #[serde(rename = "undefined")]
    Undefined,
    /// libvirt gave a state we do not know.
    #[serde(rename = "unknown")]
    Unknown,
}

impl DomainState {
    /// Whether the guest's CPUs can be running.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DomainState::Running
                | DomainState::Paused
                | DomainState::ShuttingDown
                | DomainState::PmSuspended
        )
    }
}

/// How far a node got on its way to being usable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// The domain is not running.
    Down,
    /// The domain runs; nothing answers yet.
    DomainRunning,
    /// The SSH port accepts TCP connections.
    PortOpen,
    /// SSH authenticated and ran a command.
    SshAuthenticated,
    /// cloud-init (if present) finished: the node is ready for work.
    Ready,
}

/// The state of a node's pooled SSH session, as `cluster_status` reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SshSession {
    /// No session, and none is being made (the domain is not running).
    #[default]
    None,
    /// A session is being made (the boot's readiness probe, or a reconnect with backoff after
    /// the previous session dropped).
    Connecting,
    /// An authenticated session is open.
    Connected,
}

/// A move the readiness machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Invalid readiness transition from {from:?} to {to:?}")]
pub struct InvalidTransition {
    /// Where it was.
    pub from: Readiness,
    /// Where it was asked to go.
    pub to: Readiness,
}

impl Readiness {
    /// Moves to `to` if legal: one rung up, any rung down, or staying put.
    pub fn transition(self, to: Readiness) -> Result<Readiness, InvalidTransition> {
        use Readiness::*;
        let ok = match (self, to) {
            (a, b) if a == b => true,
            (_, Down) => true,
            // Losing SSH (reboot, revert) falls back to "domain running".
            (PortOpen | SshAuthenticated | Ready, DomainRunning) => true,
            (Down, DomainRunning) | (DomainRunning, PortOpen) | (PortOpen, SshAuthenticated) => {
                true
            }
            (SshAuthenticated, Ready) => true,
            _ => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// The wire name of the phase (`domain_running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Down => "down",
            Readiness::DomainRunning => "domain_running",
            Readiness::PortOpen => "port_open",
            Readiness::SshAuthenticated => "ssh_authenticated",
            Readiness::Ready => "ready",
        }
    }

    /// The phases in climbing order.
    pub const ALL: [Readiness; 5] = [
        Readiness::Down,
        Readiness::DomainRunning,
        Readiness::PortOpen,
        Readiness::SshAuthenticated,
        Readiness::Ready,
    ];
}

#[cfg(test)]
mod tests {
    use super::Readiness::{self, *};

    #[test]
    fn transition_table() {
        // Rows: from; columns: to (Down, DomainRunning, PortOpen, SshAuthenticated, Ready).
        let table: [(Readiness, [bool; 5]); 5] = [
            (Down, [true, true, false, false, false]),
            (DomainRunning, [true, true, true, false, false]),
            (PortOpen, [true, true, true, true, false]),
            (SshAuthenticated, [true, true, false, true, true]),
            (Ready, [true, true, false, false, true]),
        ];
        for (from, row) in table {
            for (to, ok) in Readiness::ALL.into_iter().zip(row) {
                assert_eq!(from.transition(to).is_ok(), ok, "{from:?} -> {to:?}");
            }
        }
    }
}

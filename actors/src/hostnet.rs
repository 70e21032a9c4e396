//! The HostNetActor: the single owner of host networking (libvirt networks and their bridges).
//!
//! Networks are shared host state, so one actor serialises every change to them: two clusters
//! defined at once can never race to create the same bridge. It adopts a network that carries
//! our owner tag for the same cluster, and refuses (as `CONFLICT`) one that does not.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use vmcluster_engine::topology::ClusterSpec;
use vmcluster_engine::xml::{self, Owner};

use crate::error::{EngineError, Result};
use crate::libvirt::{NetworkInfo, Virt};

/// Messages of the HostNetActor.
#[derive(Debug)]
pub enum HostNetMsg {
    /// Define the cluster's network if absent. Replies whether it was created.
    Ensure {
        /// The cluster.
        spec: Arc<ClusterSpec>,
        /// Owner tag for a new network.
        owner: Owner,
        /// Reply.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Start the network if inactive.
    Start {
        /// Network name.
        name: String,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Stop and undefine the network if it is ours. Replies whether it existed.
    Remove {
        /// The cluster.
        spec: Arc<ClusterSpec>,
        /// Reply.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Every libvirt network on the host.
    List {
        /// Reply.
        reply: RpcReplyPort<Result<Vec<NetworkInfo>>>,
    },
}

/// The HostNetActor.
#[derive(Debug)]
pub struct HostNetActor;

impl Actor for HostNetActor {
    type Msg = HostNetMsg;
    type State = Virt;
    type Arguments = Virt;

    async fn pre_start(
        &self,
        _me: ActorRef<HostNetMsg>,
        virt: Virt,
    ) -> Result<Virt, ActorProcessingErr> {
        Ok(virt)
    }

    async fn handle(
        &self,
        _me: ActorRef<HostNetMsg>,
        msg: HostNetMsg,
        virt: &mut Virt,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostNetMsg::Ensure { spec, owner, reply } => {
                let _ = reply.send(on_ensure(virt, &spec, &owner).await);
            }
            HostNetMsg::Start { name, reply } => {
                let _ = reply.send(virt.start_network(&name).await);
            }
            HostNetMsg::Remove { spec, reply } => {
                let _ = reply.send(on_remove(virt, &spec).await);
            }
            HostNetMsg::List { reply } => {
                let _ = reply.send(virt.networks().await);
            }
        }
        Ok(())
    }
}

/// Whether an existing network may be used (or removed) by `cluster`.
pub fn check_network_owner(info: &NetworkInfo, cluster: &str) -> Result<()> {
    match &info.owner {
        Some(o) if o.cluster == cluster => Ok(()),
        Some(o) => Err(EngineError::Conflict(format!(
            "libvirt network {:?} belongs to vmcluster cluster {:?}",
            info.facts.name, o.cluster
        ))),
        None => Err(EngineError::Conflict(format!(
            "libvirt network {:?} exists and was not created by vmcluster; choose another network name",
            info.facts.name
        ))),
    }
}

async fn on_ensure(virt: &Virt, spec: &ClusterSpec, owner: &Owner) -> Result<bool> {
    if let Some(info) = virt.network(&spec.network.name).await? {
        check_network_owner(&info, &spec.name)?;
        return Ok(false);
    }
    virt.define_network(xml::network_xml(spec, owner)).await?;
    Ok(true)
}

async fn on_remove(virt: &Virt, spec: &ClusterSpec) -> Result<bool> {
    match virt.network(&spec.network.name).await? {
        None => Ok(false),
        Some(info) => {
            check_network_owner(&info, &spec.name)?;
            virt.remove_network(&spec.network.name).await?;
            Ok(true)
        }
    }
}

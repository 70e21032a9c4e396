//! The actors of vmcluster: they own every libvirt connection, SSH session and background task.
//!
//! [`Engine`] is the handle the MCP server and the CLI hold. Each of its methods is one
//! request/reply exchange with the [`cluster::ClusterActor`]:
//!
//! 1. the caller builds a message carrying a `RpcReplyPort`;
//! 2. the actor validates what it can answer from its own state (unknown cluster → `NOT_FOUND`);
//! 3. work that touches the host runs in a task holding the cluster's operation lock, so the
//!    actor keeps answering `cluster_status` while a cluster boots;
//! 4. that task journals the command before its first side effect ([`ops::Op`]);
//! 5. it sends a typed `Result` back through the port; the caller maps errors once.
//!
//! **Invariant:** this is the only crate that spawns tasks or opens connections; the MCP layer
//! never touches libvirt, SSH or the journal directly.

pub mod cluster;
pub mod error;
pub mod exec;
pub mod files;
pub mod host;
pub mod hostnet;
pub mod libvirt;
pub mod node;
pub mod ops;
pub mod outputs;
pub mod ssh;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use vmcluster_engine::config::Config;
use vmcluster_engine::view::{ClusterHandle, ClusterList, ClusterStatus, NodeResult};
use vmcluster_journal::Journal;

use cluster::{ClusterActor, ClusterArgs, ClusterMsg, ask};
pub use cluster::{NodeOp, Reply, StopMode};
pub use error::{EngineError, Result};
use hostnet::{HostNetActor, HostNetMsg};

/// The running engine: actors, libvirt connection and journal of one process.
#[derive(Debug, Clone)]
pub struct Engine {
    cluster: ActorRef<ClusterMsg>,
    hostnet: ActorRef<HostNetMsg>,
    journal: Journal,
    config: Arc<Config>,
    outputs: outputs::OutputStore,
}

impl Engine {
    /// Opens the journal and libvirt, replays the journal and starts the actors.
    pub async fn start(config: Config) -> Result<Engine> {
        let config = Arc::new(config);
        host::ensure_dir(&config.state_dir)?;
        let (journal, recovery) = Journal::open(&config.state_dir.join("journal"))?;
        if recovery.discarded_tail {
            tracing::warn!("the journal's last record was torn and has been discarded");
        }
        let outputs = outputs::OutputStore::open(&config.state_dir.join("exec-outputs"))?;
        let (virt, mut events) = libvirt::Virt::open(&config.libvirt_uri).await?;
        let (hostnet, _) = Actor::spawn(None, HostNetActor, virt.clone())
            .await
            .map_err(|e| EngineError::Internal(format!("spawn host network actor: {e}")))?;
        let args = ClusterArgs {
            config: config.clone(),
            virt,
            journal: journal.clone(),
            hostnet: hostnet.clone(),
            outputs: outputs.clone(),
        };
        let (cluster, _) = Actor::spawn(None, ClusterActor, args)
            .await
            .map_err(|e| EngineError::Internal(format!("spawn cluster actor: {e}")))?;
        let router = cluster.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if router.cast(ClusterMsg::Domain(ev)).is_err() {
                    break;
                }
            }
        });
        Ok(Engine {
            cluster,
            hostnet,
            journal,
            config,
            outputs,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The journal (read-only use: tailing, audits).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Stops the actors and waits until they are gone, so the journal and the actors' registered
    /// names are released when this returns (another engine may then open the same state).
    pub async fn shutdown(self) {
        let budget = Some(Duration::from_secs(10));
        let nodes = self.cluster.get_children();
        let _ = self.cluster.stop_and_wait(None, budget).await;
        for n in nodes {
            let _ = n.wait(budget).await;
        }
        let _ = self.hostnet.stop_and_wait(None, budget).await;
    }

    async fn reply<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Reply<T>>) -> ClusterMsg,
    ) -> Reply<T> {
        match ask(&self.cluster, msg, None).await {
            Ok(r) => r,
            Err(e) => Reply {
                op_id: None,
                result: Err(e),
            },
        }
    }

    /// `cluster_define`: converge the host to the topology `topology`.
    pub async fn define(&self, topology: &str) -> Reply<ClusterStatus> {
        let topology = topology.to_owned();
        self.reply(|reply| ClusterMsg::Define { topology, reply })
            .await
    }

    /// `cluster_start`: boot every node, optionally waiting for readiness.
    pub async fn start_cluster(
        &self,
        cluster: &str,
        wait_for_ssh: bool,
        ssh_timeout: Duration,
    ) -> Reply<ClusterStatus> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::Start {
            cluster,
            wait_for_ssh,
            ssh_timeout,
            reply,
        })
        .await
    }

    /// `cluster_stop`.
    pub async fn stop_cluster(
        &self,
        cluster: &str,
        mode: StopMode,
        timeout: Duration,
    ) -> Reply<ClusterStatus> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::Stop {
            cluster,
            mode,
            timeout,
            reply,
        })
        .await
    }

    /// `cluster_destroy`.
    pub async fn destroy(&self, cluster: &str, remove_overlays: bool) -> Reply<ClusterStatus> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::Destroy {
            cluster,
            remove_overlays,
            reply,
        })
        .await
    }

    /// `cluster_status`: from actor state, never waiting on the network.
    pub async fn status(&self, cluster: &str) -> Result<ClusterStatus> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Status { cluster, reply },
            None,
        )
        .await?
    }

    /// `cluster_handle`.
    pub async fn handle(&self, cluster: &str) -> Result<ClusterHandle> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Handle { cluster, reply },
            None,
        )
        .await?
    }

    /// `cluster_list`.
    pub async fn list(&self) -> Result<ClusterList> {
        ask(&self.cluster, |reply| ClusterMsg::List { reply }, None).await
    }

    /// `node_exec` / `node_exec_all`: runs `request` on `nodes` (every node when `None`).
    pub async fn exec(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
        request: exec::ExecRequest,
    ) -> Reply<crate::exec::NodeOutcomes> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::Exec {
            cluster,
            nodes,
            request,
            reply,
        })
        .await
    }

    /// `dmesg_mark`: writes one fresh marker into the kernel log of each chosen node (all when
    /// `None`). Returns the marker id and each node's outcome.
    pub async fn dmesg_mark(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
    ) -> (String, Reply<exec::NodeOutcomes>) {
        let id = format!("{}", uuid::Uuid::now_v7().simple());
        let line = vmcluster_engine::dmesg::marker_line(&id);
        let request = exec::ExecRequest::new(
            format!("printf '%s\\n' {} > /dev/kmsg", exec::shell_quote(&line)),
            Duration::from_secs(20),
        );
        (id, self.exec(cluster, nodes, request).await)
    }

    /// `dmesg_collect`: each chosen node's kernel log after `marker` (or after what the last
    /// collect returned), filtered and capped.
    pub async fn dmesg_collect(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
        marker: Option<String>,
        filter: vmcluster_engine::dmesg::FilterLevel,
        max_lines: usize,
    ) -> Result<crate::exec::NodeCollections> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Dmesg {
                cluster,
                nodes,
                marker,
                filter,
                max_lines,
                reply,
            },
            None,
        )
        .await?
    }

    /// `node_console`: the last `lines` lines of a node's serial console.
    pub async fn console(
        &self,
        cluster: &str,
        node: &str,
        lines: usize,
    ) -> Result<vmcluster_engine::view::ConsoleTail> {
        let (cluster, node) = (cluster.to_owned(), node.to_owned());
        ask(
            &self.cluster,
            |reply| ClusterMsg::Console {
                cluster,
                node,
                lines,
                reply,
            },
            None,
        )
        .await?
    }

    /// `node_upload` / `node_download`: moves one file between this host and a node.
    pub async fn transfer(
        &self,
        cluster: &str,
        node: &str,
        transfer: files::Transfer,
    ) -> Reply<vmcluster_engine::view::FileTransferResult> {
        let (cluster, node) = (cluster.to_owned(), node.to_owned());
        self.reply(|reply| ClusterMsg::Transfer {
            cluster,
            node,
            transfer,
            reply,
        })
        .await
    }

    /// The full output behind an exec output URI (`NOT_FOUND` when unknown or evicted).
    pub async fn exec_output(&self, uri: &str) -> Result<Vec<u8>> {
        let Some((op_id, node, stream)) = outputs::parse_uri(uri) else {
            return Err(EngineError::NotFound {
                kind: "exec output",
                name: uri.to_owned(),
            });
        };
        let store = self.outputs.clone();
        tokio::task::spawn_blocking(move || store.read(op_id, &node, stream))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
    }

    /// Every kept exec output, oldest first.
    pub async fn exec_outputs(&self) -> Vec<outputs::StoredOutput> {
        let store = self.outputs.clone();
        tokio::task::spawn_blocking(move || store.list())
            .await
            .unwrap_or_default()
    }

    /// `node_crash`, `node_start`, `node_stop`, `node_reboot`.
    pub async fn node(&self, cluster: &str, node: &str, op: NodeOp) -> Reply<NodeResult> {
        let (cluster, node) = (cluster.to_owned(), node.to_owned());
        self.reply(|reply| ClusterMsg::Node {
            cluster,
            node,
            op,
            reply,
        })
        .await
    }
}

/// How long to wait by default for nodes to become ready.
pub const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(120);

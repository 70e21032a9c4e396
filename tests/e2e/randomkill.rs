//! The random-kill loop with a history check (promise P4, Jepsen's set-full in miniature).
//!
//! Each round starts the real server, lets three concurrent callers issue random define /
//! start / stop / destroy calls (one cluster each, over one MCP session), and SIGKILLs the
//! server at a random moment. A fresh server then settles the journal, and the check replays
//! each caller's history: every acknowledged result must be present, every `not_applied` call
//! must have left nothing, every call cut off by the kill must be settled one way or the other
//! in the journal, and the host must match the journal (each cluster complete or absent).
//! Bounded: a fixed number of rounds, each kill within 2 s. The seed of the random choices is
//! printed; the kill moment is wall-clock, so a replay is close, not exact.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use vmcluster_tests::{McpClient, Scratch, TopologySpec, topology_yaml};

use crate::{host_objects, preflight};

const CLUSTERS: [(&str, u8); 3] = [("rk0", 141), ("rk1", 142), ("rk2", 143)];
const ROUNDS: u64 = 8;

/// A tiny deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a caller saw.
#[derive(Debug, Clone)]
enum Seen {
    /// A finished answer: success flag and the journaled outcome.
    Answered { tool: String, outcome: String },
    /// The server died before answering.
    Cut { tool: String },
}

async fn caller(c: &McpClient, cluster: &str, mut rng: Rng) -> Vec<Seen> {
    let mut history = Vec::new();
    loop {
        let (tool, args) = match rng.below(4) {
            0 | 1 => ("cluster_define", json!({"topology_name": cluster})),
            2 => (
                "cluster_start",
                json!({"cluster_name": cluster, "wait_for_ssh": false}),
            ),
            _ => (
                "cluster_destroy",
                json!({"cluster_name": cluster, "remove_overlays": true}),
            ),
        };
        match c.try_call(tool, args).await {
            Some(r) => {
                let outcome = r.envelope["outcome"].as_str().unwrap_or("none").to_owned();
                history.push(Seen::Answered {
                    tool: tool.into(),
                    outcome,
                });
            }
            None => {
                history.push(Seen::Cut { tool: tool.into() });
                return history;
            }
        }
    }
}

/// Whether `tool` with outcome `applied` leaves the cluster defined (`Some`), or does not
/// change that (`None`).
fn effect(tool: &str) -> Option<bool> {
    match tool {
        "cluster_define" => Some(true),
        "cluster_destroy" => Some(false),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_lose_nothing_acknowledged_and_leak_nothing() {
    let g = preflight();
    let seed = std::env::var("VMCLUSTER_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!(
        "random-kill seed {seed} (VMCLUSTER_RANDOM_SEED={seed} replays its choices; kill timing stays wall-clock)"
    );
    let mut rng = Rng(seed);
    let s = Scratch::new("rk");
    for (name, octet) in CLUSTERS {
        s.write_topology(
            name,
            &topology_yaml(&TopologySpec {
                cluster: name,
                octet,
                nodes: &["n1"],
                base_image: &g.base,
                kernel: Some((&g.kernel, &g.initrd)),
                memory_mb: 128,
            }),
        );
    }
    let env = s.env("qemu:///system");
    let mut defined: BTreeMap<&str, bool> = CLUSTERS.iter().map(|(n, _)| (*n, false)).collect();

    for round in 0..ROUNDS {
        let c = McpClient::spawn(&env).await;
        let kill_after = Duration::from_millis(200 + rng.below(1800));
        let seeds: Vec<u64> = CLUSTERS.iter().map(|_| rng.next() | 1).collect();
        let killer = async {
            tokio::time::sleep(kill_after).await;
            let st = std::process::Command::new("pkill")
                .args(["-KILL", "-x", "vmcluster"])
                .status()
                .expect("pkill");
            assert!(st.success(), "round {round}: the server was running");
        };
        let callers = futures::future::join_all(
            CLUSTERS
                .iter()
                .zip(seeds)
                .map(|((name, _), sd)| caller(&c, name, Rng(sd))),
        );
        let (histories, ()) = tokio::join!(callers, killer);
        c.close().await;

        let c = McpClient::spawn(&env).await;
        let ops = c.call("op_list", json!({"limit": 1000})).await;
        let ops = ops.ok()["ops"].as_array().unwrap().clone();
        for op in &ops {
            assert_eq!(
                op["state"], "finished",
                "seed {seed} round {round}: unsettled {op}"
            );
        }
        let listed = c.call("cluster_list", json!({})).await;
        let listed: Vec<String> = listed.ok()["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cluster_name"].as_str().unwrap().to_owned())
            .collect();
        for ((name, _), history) in CLUSTERS.iter().zip(histories) {
            let present = listed.iter().any(|l| l == name);
            // The newest journaled op of this cluster settles a call cut off by the kill.
            let newest: Option<&Value> = ops.iter().find(|o| o["cluster_name"] == *name);
            let mut expect = Some(defined[name]);
            for seen in &history {
                match seen {
                    Seen::Answered { tool, outcome } => match outcome.as_str() {
                        "applied" => {
                            if let Some(e) = effect(tool) {
                                expect = Some(e);
                            }
                        }
                        "not_applied" => {}
                        // Partly done (a destroy that failed midway): the host decides.
                        _ => {
                            if effect(tool).is_some() {
                                expect = None;
                            }
                        }
                    },
                    Seen::Cut { tool } => {
                        let settled = newest
                            .filter(|o| o["tool"] == tool.as_str())
                            .and_then(|o| o["outcome"].as_str());
                        match settled {
                            Some("applied") => {
                                if let Some(e) = effect(tool) {
                                    expect = Some(e);
                                }
                            }
                            // Not journaled at all, or settled as not applied: no change.
                            None | Some("not_applied") => {}
                            Some(_) => expect = None,
                        }
                    }
                }
            }
            if let Some(e) = expect {
                assert_eq!(
                    present, e,
                    "seed {seed} round {round} {name}: history {history:?}, newest op {newest:?}"
                );
            }
            // Host and journal agree: complete or absent.
            let objs = host_objects(name);
            let dir = s.path().join("overlays").join(name);
            if present {
                assert_eq!(objs.domains.len(), 1, "seed {seed} {name}: {objs:?}");
                assert_eq!(objs.networks.len(), 1, "seed {seed} {name}: {objs:?}");
                assert!(dir.join("n1.qcow2").is_file(), "seed {seed} {name}");
            } else {
                assert!(
                    objs.domains.is_empty() && objs.networks.is_empty() && !objs.bridge,
                    "seed {seed} round {round} {name}: leaked {objs:?}"
                );
                assert!(
                    !dir.exists(),
                    "seed {seed} {name}: {} leaked",
                    dir.display()
                );
            }
            defined.insert(name, present);
        }
        c.close().await;
    }
    let c = McpClient::spawn(&env).await;
    for (name, _) in CLUSTERS {
        if defined[name] {
            crate::destroy_and_check_clean(&c, &s, name).await;
        }
    }
    c.close().await;
}

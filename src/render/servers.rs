//! Which OMERO servers a node of an `independent` topology runs, and the JVM heap Blitz gets
//! when the operator chooses them (grid topology places its servers in `grid`).
//!
//! How OMERO sizes its JVMs (omero-py `src/omero/install/jvmcfg.py`, read from the source, not
//! run): `omero admin rewrite` gives each JVM *template* of `templates.xml` (blitz, indexer,
//! pixeldata, repository) a heap of `percent` of the node's memory (`omero.jvmcfg.system_memory`,
//! clamped to 3414-48000 MB) with the default strategy, whatever the node descriptors say:
//! Blitz 15 %, PixelData 15 %, the Indexer 10 % (`PercentStrategy.PERCENT_DEFAULTS`), each
//! instance that runs getting its template's heap. `omero.jvmcfg.<setting>.<template>` wins over
//! `omero.jvmcfg.<setting>`, which wins over the default. The node descriptors only decide which
//! instances run. So with OMERO's whole set a node's heaps take 40 % of its memory, and a node
//! that runs only Blitz and Tables (Python) would leave 25 % of it to JVMs that do not exist,
//! unless Blitz is given their share.

use super::value::Value;
use crate::api::{NodeSpec, OmeroCluster, Topology, servers};

/// OMERO's default heap percentages of the JVM servers (`PERCENT_DEFAULTS`).
const BLITZ_PERCENT: u32 = 15;
const INDEXER_PERCENT: u32 = 10;
const PIXELDATA_PERCENT: u32 = 15;
/// The heaps of OMERO's whole set (one Blitz, one Indexer, one PixelData): what a node's JVMs
/// take by default, and what the operator keeps them to when it chooses fewer servers.
const WHOLE_SET_PERCENT: u32 = BLITZ_PERCENT + INDEXER_PERCENT + PIXELDATA_PERCENT;

/// The heap share of each Blitz the operator sets (the default strategy's percent).
pub(crate) const BLITZ_PERCENT_PROPERTY: &str = "omero.jvmcfg.percent.blitz";

/// The servers the operator declares for `node`, when it declares them: the node's `servers`,
/// or on a read-only node with no `omero.server.nodedescriptors` in any `config`,
/// [`servers::READ_ONLY_DEFAULT`]. None: OMERO's whole set, or the user's own descriptors.
pub(crate) fn chosen(cluster: &OmeroCluster, node: &NodeSpec) -> Option<Vec<String>> {
    if cluster.spec.topology != Topology::Independent {
        return None;
    }
    if !node.servers.is_empty() {
        return Some(node.servers.clone());
    }
    let users_own =
        [&cluster.spec.config, &node.config].iter().any(|c| c.contains_key(servers::NODE_DESCRIPTORS));
    (!node.is_read_write() && !users_own)
        .then(|| servers::READ_ONLY_DEFAULT.iter().map(|s| s.to_string()).collect())
}

/// The properties the operator sets for the servers it chose: the node descriptors, and
/// Blitz's heap share ([`blitz_percent`]) when it differs from OMERO's default.
pub(crate) fn properties(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<(&'static str, Value)> {
    let Some(chosen) = chosen(cluster, node) else {
        return Vec::new();
    };
    let mut props = vec![(servers::NODE_DESCRIPTORS, Value::Literal(format!("master:{}", chosen.join(","))))];
    if let Some(percent) = blitz_percent(cluster, node, &chosen) {
        props.push((BLITZ_PERCENT_PROPERTY, Value::Literal(percent.to_string())));
    }
    props
}

/// Each Blitz's heap share, so that the JVMs that run take together what OMERO's whole set
/// would (40 %): the Indexers and PixelData servers that run keep their default shares, the
/// Blitz servers share the rest, never less than their own 15 %. None when that is OMERO's
/// default anyway, or when `config` sizes the JVMs itself.
fn blitz_percent(cluster: &OmeroCluster, node: &NodeSpec, chosen: &[String]) -> Option<u32> {
    if sized_by_hand(cluster, node) {
        return None;
    }
    let count = |kind: &str| chosen.iter().filter(|s| servers::template(s) == kind).count() as u32;
    let others = INDEXER_PERCENT * count("Indexer") + PIXELDATA_PERCENT * count("PixelData");
    let share = WHOLE_SET_PERCENT.saturating_sub(others) / count("Blitz").max(1);
    (share > BLITZ_PERCENT).then_some(share)
}

/// Whether `config` (the cluster's or the node's) sets how the heaps are sized: a percent, a
/// heap size or a strategy, for all servers or one. `system_memory` is not one of them: it is
/// what the shares are of.
fn sized_by_hand(cluster: &OmeroCluster, node: &NodeSpec) -> bool {
    let sizing = |key: &str| {
        key.strip_prefix("omero.jvmcfg.").is_some_and(|rest| {
            let setting = rest.split('.').next().unwrap_or_default();
            ["percent", "heap_size", "strategy"].contains(&setting)
        })
    };
    cluster.spec.config.keys().chain(node.config.keys()).any(|k| sizing(k))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::render::render;
    use crate::render::{
        config,
        tests::{BASE, base_with, cluster, env_of, env_value},
    };

    const DESCRIPTORS: &str = "CONFIG_omero_server_nodedescriptors";
    const BLITZ: &str = "CONFIG_omero_jvmcfg_percent_blitz";

    #[test]
    fn a_read_only_node_runs_blitz_and_tables_and_blitz_gets_the_heap_the_others_left() {
        let desired = render(&cluster(BASE));
        assert_eq!(env_value(&desired, "ro", DESCRIPTORS), "master:Blitz-0,Tables-0");
        assert_eq!(env_value(&desired, "ro", BLITZ), "40");
        // The read-write node keeps OMERO's whole set and its sizing.
        assert!(env_of(&desired, "rw", DESCRIPTORS).is_none());
        assert!(env_of(&desired, "rw", BLITZ).is_none());
    }

    #[test]
    fn a_half_read_only_node_keeps_omeros_set() {
        // readOnly.db alone: the cluster's read-write node (the one allowed), which OMERO's own
        // servers may still need (a writable repository); `servers` trims it where wanted.
        let c = base_with(|c| {
            c.spec.nodes.remove(0);
            c.spec.nodes[0].read_only = Some(crate::api::ReadOnlySpec { db: true, repo: false });
        });
        assert!(env_of(&render(&c), "ro", DESCRIPTORS).is_none());
    }

    #[test]
    fn a_nodes_servers_override_the_default_and_size_blitz_for_what_runs() {
        let with = |node: usize, servers: &[&str]| {
            base_with(|c| c.spec.nodes[node].servers = servers.iter().map(|s| s.to_string()).collect())
        };
        let desired = render(&with(1, &["Blitz-0", "Tables-0", "PixelData-0"]));
        assert_eq!(env_value(&desired, "ro", DESCRIPTORS), "master:Blitz-0,Tables-0,PixelData-0");
        assert_eq!(env_value(&desired, "ro", BLITZ), "25", "40 less PixelData's 15");
        // The read-write node too, when asked; with an Indexer and a PixelData Blitz keeps 15.
        let desired = render(&with(0, &["Blitz-0", "Indexer-0", "PixelData-0", "Tables-0"]));
        assert_eq!(env_value(&desired, "rw", DESCRIPTORS), "master:Blitz-0,Indexer-0,PixelData-0,Tables-0");
        assert!(env_of(&desired, "rw", BLITZ).is_none());
        // Two Blitz servers share what is left.
        let desired = render(&with(1, &["Blitz-0", "Blitz-1"]));
        assert_eq!(env_value(&desired, "ro", BLITZ), "20");
    }

    #[test]
    fn the_users_own_descriptors_and_sizing_win() {
        let c = base_with(|c| {
            c.spec
                .config
                .insert(servers::NODE_DESCRIPTORS.into(), "master:Blitz-0,Tables-0,Processor-0".into());
        });
        let desired = render(&c);
        assert_eq!(env_value(&desired, "ro", DESCRIPTORS), "master:Blitz-0,Tables-0,Processor-0");
        assert!(env_of(&desired, "ro", BLITZ).is_none(), "the user's layout: the user's sizing");
        // A node's servers still win over the cluster's descriptors.
        let c = base_with(|c| {
            c.spec
                .config
                .insert(servers::NODE_DESCRIPTORS.into(), "master:Blitz-0,Tables-0,Processor-0".into());
            c.spec.nodes[1].servers = vec!["Blitz-0".into()];
        });
        assert_eq!(env_value(&render(&c), "ro", DESCRIPTORS), "master:Blitz-0");
        for key in [
            "omero.jvmcfg.percent.blitz",
            "omero.jvmcfg.percent",
            "omero.jvmcfg.heap_size.blitz",
            "omero.jvmcfg.strategy",
        ] {
            let c = base_with(|c| {
                c.spec.nodes[1].config.insert(key.into(), "50".into());
            });
            let desired = render(&c);
            assert_eq!(env_value(&desired, "ro", DESCRIPTORS), "master:Blitz-0,Tables-0", "{key}");
            let blitz = env_of(&desired, "ro", BLITZ).and_then(|e| e.value.as_deref());
            assert_ne!(blitz, Some("40"), "{key}: sized by hand");
        }
        // The memory they are shares of is no sizing of its own.
        let c = base_with(|c| {
            c.spec.config.insert("omero.jvmcfg.system_memory".into(), "16384".into());
        });
        assert_eq!(env_value(&render(&c), "ro", BLITZ), "40");
    }

    #[test]
    fn grid_nodes_are_placed_by_the_grid() {
        // A read-only grid worker hosts one Blitz, which the master's descriptors place.
        let c = cluster(
            &BASE
                .replace("  database:", "  topology: Grid\n  database:")
                .replace("    - name: rw\n", "    - name: rw\n      master: true\n"),
        );
        assert!(!c.spec.nodes[1].is_read_write());
        assert!(c.spec.nodes.iter().all(|n| chosen(&c, n).is_none()));
        assert!(render(&c).deployments.iter().all(|d| {
            let env =
                d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
            env.iter().all(|e| e.name != BLITZ)
        }));
    }

    /// The heap in MiB each running JVM gets, by omero-py's jvmcfg rules (default strategy):
    /// `int(active * percent / 100)`, `active` the node's memory clamped to 3414-48000, percent
    /// per template from `omero.jvmcfg.percent.<template>`, `omero.jvmcfg.percent` or the
    /// default; running JVMs from `omero.server.nodedescriptors` (OMERO's whole set without it).
    fn jvm_heaps_mib(c: &OmeroCluster, node: &str) -> Vec<(String, u64)> {
        let node = c.spec.node(node).unwrap();
        let props = config::properties(c, node);
        let literal = |key: &str| match props.get(key) {
            Some(Value::Literal(v)) => Some(v.clone()),
            _ => None,
        };
        let memory: u64 = literal("omero.jvmcfg.system_memory").unwrap().parse().unwrap();
        let active = memory.clamp(3414, 48000);
        let descriptors = literal(servers::NODE_DESCRIPTORS)
            .unwrap_or_else(|| "master:Blitz-0,Indexer-0,DropBox,MonitorServer,FileServer,Storm,PixelData-0,Processor-0,Tables-0".into());
        let running = descriptors.split_once(':').unwrap().1.split(',');
        running
            .filter_map(|server| {
                let (template, default) = match servers::template(server) {
                    "Blitz" => ("blitz", BLITZ_PERCENT),
                    "Indexer" => ("indexer", INDEXER_PERCENT),
                    "PixelData" => ("pixeldata", PIXELDATA_PERCENT),
                    _ => return None, // Python or C++ servers: no JVM
                };
                let percent: u64 = literal(&format!("omero.jvmcfg.percent.{template}"))
                    .or_else(|| literal("omero.jvmcfg.percent"))
                    .map_or(u64::from(default), |p| p.parse().unwrap());
                Some((server.to_string(), active * percent / 100))
            })
            .collect()
    }

    /// The figures in the README: a typical read-only node (16 GiB limit, as in
    /// `examples/read-only-replicas.yaml`) with OMERO's whole set (what it ran before) and with
    /// the trimmed set, with and without Blitz given the others' share. `cargo test --lib
    /// jvm_heaps -- --nocapture` prints them.
    #[test]
    fn jvm_heaps_of_a_read_only_node_with_and_without_the_trimmed_servers() {
        for limit in ["4Gi", "8Gi", "16Gi"] {
            let sized = |servers: Option<&[&str]>, blitz: Option<&str>| {
                base_with(|c| {
                    let ro = &mut c.spec.nodes[1];
                    let resources = ro.resources.get_or_insert_default();
                    resources.limits.get_or_insert_default().insert("memory".into(), Quantity(limit.into()));
                    if let Some(servers) = servers {
                        ro.config.insert(
                            servers::NODE_DESCRIPTORS.into(),
                            format!("master:{}", servers.join(",")),
                        );
                    }
                    if let Some(blitz) = blitz {
                        ro.config.insert(BLITZ_PERCENT_PROPERTY.into(), blitz.into());
                    }
                })
            };
            let whole =
                "Blitz-0,Indexer-0,DropBox,MonitorServer,FileServer,Storm,PixelData-0,Processor-0,Tables-0";
            let before = jvm_heaps_mib(&sized(Some(&whole.split(',').collect::<Vec<_>>()), None), "ro");
            let trimmed_only = jvm_heaps_mib(&sized(Some(&["Blitz-0", "Tables-0"]), Some("15")), "ro");
            let now = jvm_heaps_mib(&sized(None, None), "ro");
            let total = |h: &[(String, u64)]| h.iter().map(|(_, m)| m).sum::<u64>();
            println!(
                "{limit}: OMERO's whole set {before:?} = {} MiB in {} JVMs; Blitz-0,Tables-0 at Blitz's default 15 % \
                 {trimmed_only:?} = {} MiB; as rendered {now:?} = {} MiB in {} JVM",
                total(&before),
                before.len(),
                total(&trimmed_only),
                total(&now),
                now.len()
            );
            assert_eq!(before.len(), 3);
            assert_eq!(now.len(), 1);
            assert!(total(&before).abs_diff(total(&now)) <= 1, "the heaps together stay what they were");
            assert!(now[0].1 > before[0].1, "Blitz gets the share of the JVMs that no longer run");
        }
    }
}

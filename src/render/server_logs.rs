//! The `omero-logs` container: OMERO's own log files in the container log stream.
//!
//! Why a container and not OMERO's logging configured to write to stdout: OMERO's Java servers
//! log through `etc/logback.xml`, a file of the image whose root logger has only a rolling
//! file appender (`${omero.logfile}`, i.e. `var/log/<server>.log`); no OMERO property adds an
//! appender, so stdout would mean replacing that file in every image version. Its Python
//! servers (Processor, Tables, DropBox, ...) log through omero-py's `configure_server_logging`,
//! whose `omero.logging.*` properties choose only the directory, size, count and level: with
//! a directory and a file name it always writes a rotating file (omero-py `omero/util`). And
//! even a server's stdout would not reach the container's: `icegridnode` sends its own and its
//! servers' output to `var/log/master.out` and `master.err` (`Ice.StdOut`/`Ice.StdErr` in
//! `etc/templates/master.cfg`). All read from OMERO's source and templates, not observed. A
//! container that follows the files covers the Java and Python servers and `master.err` alike,
//! whatever the image's version.
//!
//! The follower (`logs/omero_log_follower.py`, standard library only) runs with the image's
//! own Python, like the session counter. It is shipped inline in the pod template (`python -c`)
//! rather than in a ConfigMap as the counter's script is: no object more per cluster (no API
//! write, none to create before the Deployments, none to own or delete), and a pod runs exactly
//! the follower of its own template (a ConfigMap's new content reaches running pods' volumes
//! before their drained rollout). Its cost is its size in each pod template: the comment lines
//! are left out of the shipped copy. The revision (a digest of the template) covers it, so a new
//! follower reaches running nodes only through the drained rollout.

use std::{collections::BTreeMap, sync::LazyLock};

use k8s_openapi::{
    api::core::v1::{Container, EmptyDirVolumeSource, EnvVar, ResourceRequirements, Volume, VolumeMount},
    apimachinery::pkg::api::resource::Quantity,
};

use super::{counter, volumes};
use crate::api::{NodeSpec, OmeroCluster};

/// The follower as kept in this repository, with its comments.
pub const SCRIPT: &str = include_str!("../../logs/omero_log_follower.py");
/// The container's name in a node's pod.
pub use crate::api::SERVER_LOGS_CONTAINER as CONTAINER_NAME;
/// Where the follower keeps how far it wrote each file (its own emptyDir): a restart of the
/// container resumes there instead of writing every file again.
const STATE_VOLUME: &str = "omero-logs-state";
const STATE_DIR: &str = "/opt/omero-operator/omero-logs";
/// A few hundred bytes of JSON; the limit only keeps a runaway from filling the node's disk.
const STATE_SIZE_LIMIT: &str = "1Mi";

/// [`SCRIPT`] as the pod runs it: without its full-line comments and blank lines, indented by
/// one space a level instead of four (a sixth of its size). Python keeps its meaning: the
/// script has no multi-line strings and indents blocks by fours (its tests run this copy).
pub(crate) static SHIPPED: LazyLock<String> = LazyLock::new(|| shipped(SCRIPT));

fn shipped(script: &str) -> String {
    script
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| {
            let code = line.trim_start_matches(' ');
            format!("{}{code}\n", " ".repeat((line.len() - code.len()) / 4))
        })
        .collect()
}

/// Runs the follower (`$1`) and starts it again whenever it exits, so the container itself
/// never ends and never crash-loops: a container that is not running makes the pod not ready,
/// which would take the node out of every Service. On SIGTERM it passes the signal on and
/// waits: the follower reads on until the files are quiet (the server's shutdown), then exits.
fn supervisor() -> String {
    let python = counter::PYTHON;
    format!(
        "trap 'kill -TERM $child 2>/dev/null; wait $child; exit 0' TERM INT\n\
         while :; do\n  \
           {python} -c \"$1\" & child=$!\n  \
           wait $child; code=$?\n  \
           echo \"omero-logs: the follower exited with status $code; starting it again in 10s\"\n  \
           sleep 10 & child=$!; wait $child\n\
         done\n"
    )
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("5m")), ("memory".into(), q("32Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("64Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// Whether the cluster's nodes run the log container.
pub(crate) fn runs(cluster: &OmeroCluster) -> bool {
    cluster.spec.server_logs_container()
}

/// The follower's own scratch volume.
pub(crate) fn volume() -> Volume {
    Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(STATE_SIZE_LIMIT.into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The log container of `node`'s pod. `server` is the rendered OMERO container, whose image
/// and security settings it takes. No probes: it must never make the pod unready.
pub(crate) fn container(cluster: &OmeroCluster, node: &NodeSpec, server: &Container) -> Container {
    let literal =
        |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
    // The var volume, read-only here: the follower only reads.
    let var = volumes::mounts(cluster, node)
        .into_iter()
        .filter(|m| m.mount_path == volumes::VAR_DIR)
        .map(|m| VolumeMount { read_only: Some(true), ..m });
    let state =
        VolumeMount { name: STATE_VOLUME.into(), mount_path: STATE_DIR.into(), ..VolumeMount::default() };
    // A claim for var outlives pods: what is in it at the first start is an earlier pod's.
    let from = if node.var_claim_name.is_some() { "end" } else { "beginning" };
    Container {
        name: CONTAINER_NAME.into(),
        image: server.image.clone(),
        image_pull_policy: server.image_pull_policy.clone(),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            supervisor(),
            CONTAINER_NAME.into(),
            SHIPPED.clone(),
        ]),
        env: Some(vec![
            literal("OMERO_LOGS_DIR", format!("{}/log", volumes::VAR_DIR)),
            literal("OMERO_LOGS_STATE", format!("{STATE_DIR}/positions.json")),
            literal("OMERO_LOGS_FROM", from.into()),
        ]),
        resources: Some(
            cluster
                .spec
                .server_logs
                .as_ref()
                .and_then(|l| l.resources.clone())
                .unwrap_or_else(default_resources),
        ),
        volume_mounts: Some(var.chain([state]).collect()),
        security_context: server.security_context.clone(),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, base_with, cluster, deployment_of, pod_spec},
    };

    fn logs_of<'a>(desired: &'a crate::render::Desired, node: &str) -> Option<&'a Container> {
        pod_spec(desired, node).containers.iter().find(|c| c.name == CONTAINER_NAME)
    }

    fn revision(desired: &crate::render::Desired, node: &str) -> String {
        crate::render::revision_of(&deployment_of(desired, node).metadata).unwrap().to_string()
    }

    #[test]
    fn every_node_follows_its_logs_from_its_own_image_with_var_read_only() {
        let desired = render(&cluster(BASE));
        for node in ["rw", "ro"] {
            let pod = pod_spec(&desired, node);
            let server = &pod.containers[0];
            let c = logs_of(&desired, node).unwrap_or_else(|| panic!("{node}: an omero-logs container"));
            assert_eq!(c.image, server.image, "{node}: the node's own image");
            assert_eq!(c.image_pull_policy, server.image_pull_policy);
            assert_eq!(c.security_context, server.security_context, "{node}");
            assert_eq!((&c.readiness_probe, &c.liveness_probe, &c.startup_probe), (&None, &None, &None));
            assert_eq!(c.ports, None);
            let command = c.command.as_ref().unwrap();
            assert_eq!(command[..2], ["/bin/sh", "-c"]);
            assert!(command[2].contains("/opt/omero/server/venv3/bin/python -c \"$1\""), "{}", command[2]);
            assert_eq!(command[3], "omero-logs");
            assert_eq!(command[4], *SHIPPED);
            let mounts: Vec<_> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
                .collect();
            assert_eq!(
                mounts,
                [
                    ("var", "/opt/omero/server/OMERO.server/var", Some(true)),
                    ("omero-logs-state", "/opt/omero-operator/omero-logs", None)
                ],
                "{node}"
            );
            let state = pod.volumes.iter().flatten().find(|v| v.name == "omero-logs-state").unwrap();
            assert_eq!(state.empty_dir.as_ref().unwrap().size_limit, Some(Quantity("1Mi".into())));
            let env: BTreeMap<&str, &str> =
                c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
            assert_eq!(
                env,
                BTreeMap::from([
                    ("OMERO_LOGS_DIR", "/opt/omero/server/OMERO.server/var/log"),
                    ("OMERO_LOGS_FROM", "beginning"),
                    ("OMERO_LOGS_STATE", "/opt/omero-operator/omero-logs/positions.json"),
                ])
            );
            for name in env.keys() {
                assert!(SCRIPT.contains(&format!("\"{name}\"")), "the script reads {name}");
            }
            let resources = c.resources.as_ref().unwrap();
            let requests = resources.requests.as_ref().unwrap();
            assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("5m", "32Mi"));
            assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "64Mi");
            // The server container keeps var writable.
            let server_var = server.volume_mounts.iter().flatten().find(|m| m.name == "var").unwrap();
            assert_eq!(server_var.read_only, None);
        }
    }

    #[test]
    fn a_var_claim_is_followed_from_its_end_at_the_first_start() {
        let yaml = BASE.replace("    - name: rw\n", "    - name: rw\n      varClaimName: omero-rw-var\n");
        let desired = render(&cluster(&yaml));
        let from = |node: &str| {
            let c = logs_of(&desired, node).unwrap();
            c.env.iter().flatten().find(|e| e.name == "OMERO_LOGS_FROM").unwrap().value.clone().unwrap()
        };
        assert_eq!((from("rw").as_str(), from("ro").as_str()), ("end", "beginning"));
    }

    #[test]
    fn turned_off_there_is_no_log_container_and_resources_can_be_set() {
        let off = render(&base_with(|c| {
            c.spec.server_logs = Some(crate::api::ServerLogsSpec {
                mode: Some(crate::api::ServerLogsMode::None),
                ..Default::default()
            })
        }));
        for node in ["rw", "ro"] {
            assert!(logs_of(&off, node).is_none(), "{node}");
            assert!(!pod_spec(&off, node).volumes.iter().flatten().any(|v| v.name == STATE_VOLUME), "{node}");
        }
        let sized = render(&cluster(&format!(
            "{BASE}  serverLogs:\n    resources: {{requests: {{cpu: 20m, memory: 48Mi}}, limits: {{memory: 96Mi}}}}\n"
        )));
        let resources = logs_of(&sized, "ro").unwrap().resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["memory"].0, "48Mi");
        assert_eq!(resources.limits.unwrap()["memory"].0, "96Mi");
    }

    #[test]
    fn the_revision_changes_only_with_the_log_container_or_its_settings() {
        let on = render(&cluster(BASE));
        let explicit = render(&cluster(&format!("{BASE}  serverLogs: {{mode: Container}}\n")));
        let off = render(&cluster(&format!("{BASE}  serverLogs: {{mode: None}}\n")));
        let sized =
            render(&cluster(&format!("{BASE}  serverLogs: {{resources: {{requests: {{cpu: 1m}}}}}}\n")));
        for node in ["rw", "ro"] {
            assert_eq!(revision(&on, node), revision(&explicit, node), "{node}: the default spelled out");
            assert_ne!(revision(&on, node), revision(&off, node), "{node}: turned off");
            assert_ne!(revision(&on, node), revision(&sized, node), "{node}: other resources");
        }
        // Rendering twice gives the same revision: the shipped follower is the same text.
        assert_eq!(revision(&on, "rw"), revision(&render(&cluster(BASE)), "rw"));
    }

    #[test]
    fn the_shipped_follower_is_the_script_without_comment_lines_and_indented_by_ones() {
        assert_eq!(
            shipped("# a comment\nimport os\n\nif x:\n    # inside\n    y(1,\n      2)\n        \n"),
            "import os\nif x:\n y(1,\n 2)\n"
        );
        assert!(!SHIPPED.lines().any(|l| l.trim_start().starts_with('#') || l.trim().is_empty()));
        let code: Vec<&str> =
            SCRIPT.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
        let shipped: Vec<&str> = SHIPPED.lines().collect();
        assert_eq!(shipped.len(), code.len());
        for (shipped, code) in shipped.iter().zip(&code) {
            assert_eq!(shipped.trim_start(), code.trim_start());
        }
        assert!(SHIPPED.contains("class Followed"), "the real follower is shipped");
        assert!(SHIPPED.len() * 10 < SCRIPT.len() * 7, "{} of {} bytes", SHIPPED.len(), SCRIPT.len());
    }

    /// The container's own command, as the pod runs it (with this machine's python3 for the
    /// image's), over a temporary var/log: the shipped follower writes a record with its file's
    /// name, and the supervisor passes SIGTERM on and ends.
    #[test]
    fn the_rendered_command_follows_a_log_directory_and_stops_on_sigterm() {
        use std::io::{BufRead, BufReader};
        let desired = render(&cluster(BASE));
        let c = logs_of(&desired, "rw").unwrap();
        let mut command = c.command.clone().unwrap();
        command[2] = command[2].replace(counter::PYTHON, "python3");
        let dir = std::env::temp_dir().join(format!("omero-logs-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Blitz-0.log"),
            "2024-01-02 13:45:12,345 INFO  [x] (main) up\n\tcontinued\n2024-01-02 13:45:13,000 INFO  [x] (main) next\n",
        )
        .unwrap();
        let mut child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .env("OMERO_LOGS_DIR", &dir)
            .env("OMERO_LOGS_POLL_SECONDS", "0.05")
            .env("OMERO_LOGS_QUIET_SECONDS", "0.2")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(lines.next().expect("a line").unwrap());
        }
        assert!(seen[0].starts_with("omero-logs: following "), "{seen:?}");
        assert_eq!(seen[1], "Blitz-0.log: 2024-01-02 13:45:12,345 INFO  [x] (main) up\\n\tcontinued");
        assert_eq!(seen[2], "Blitz-0.log: 2024-01-02 13:45:13,000 INFO  [x] (main) next");
        let pid = child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert!(status.success(), "the supervisor ends with 0 after the follower: {status:?}");
        assert!(lines.next().is_none(), "nothing restarted it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_supervisor_is_valid_shell() {
        let script = supervisor();
        let status = std::process::Command::new("sh").args(["-n", "-c", &script]).status().expect("sh runs");
        assert!(status.success(), "sh -n refused:\n{script}");
    }
}

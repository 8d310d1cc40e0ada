//! Health probes of the OMERO container.
//!
//! They run OMERO's own status check (`grid::checks`; a grid worker's differ), as the community chart
//! manics/kubernetes-omero does. A tcpSocket probe on 4064 would only prove that Glacier2
//! listens: Glacier2 comes up before Blitz has finished connecting to the database, and stays
//! up when Blitz has died. `omero admin status` succeeds only when the IceGrid node answers
//! and a Blitz session manager refuses a bogus login the way only OMERO does.
//!
//! Start-up can take many minutes: `/startup/60-database.sh` runs `omego db upgrade` before
//! Blitz starts, and the JVM then builds its Hibernate and search state. A startup probe gives
//! it `STARTUP_BUDGET_SECONDS`; readiness then follows the server closely, and liveness is
//! lenient (the chart's 5 x 60 s) because a restart kills every session on the node.

use k8s_openapi::api::core::v1::{ExecAction, Probe};

/// How long a node may take from container start to its first successful status check.
pub(crate) const STARTUP_BUDGET_SECONDS: i32 = 30 * 60;
const STARTUP_PERIOD_SECONDS: i32 = 10;
/// The CLI is a Python process that talks Ice to the registry: seconds, not milliseconds.
const TIMEOUT_SECONDS: i32 = 20;

pub(crate) fn startup(command: &[String]) -> Probe {
    Probe {
        period_seconds: Some(STARTUP_PERIOD_SECONDS),
        failure_threshold: Some(STARTUP_BUDGET_SECONDS / STARTUP_PERIOD_SECONDS),
        ..exec(command)
    }
}

/// Readiness takes a node out of its Services' endpoints within a minute of Blitz failing.
pub(crate) fn readiness(command: &[String]) -> Probe {
    Probe { period_seconds: Some(20), failure_threshold: Some(3), ..exec(command) }
}

/// Restart only after five minutes of failures: a busy Blitz can miss a few checks.
pub(crate) fn liveness(command: &[String]) -> Probe {
    Probe { period_seconds: Some(60), failure_threshold: Some(5), ..exec(command) }
}

fn exec(command: &[String]) -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(command.to_vec()) }),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        OMERO_CLI, render,
        tests::{BASE, cluster, container},
    };

    #[test]
    fn all_probes_run_omero_admin_status_on_an_independent_node() {
        let desired = render(&cluster(BASE));
        let c = container(&desired, "rw");
        for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
            let probe = probe.clone().expect("probe");
            assert_eq!(probe.exec.unwrap().command.unwrap(), [OMERO_CLI, "admin", "status"]);
            assert_eq!(probe.timeout_seconds, Some(TIMEOUT_SECONDS));
            assert_eq!(probe.tcp_socket, None);
        }
    }

    #[test]
    fn startup_allows_half_an_hour_for_a_database_upgrade() {
        let desired = render(&cluster(BASE));
        let p = container(&desired, "rw").startup_probe.clone().unwrap();
        assert_eq!(p.period_seconds.unwrap() * p.failure_threshold.unwrap(), 1800);
    }

    #[test]
    fn liveness_is_more_lenient_than_readiness() {
        let desired = render(&cluster(BASE));
        let c = container(&desired, "rw");
        let window = |p: &Option<Probe>| {
            let p = p.clone().unwrap();
            p.period_seconds.unwrap() * p.failure_threshold.unwrap()
        };
        assert_eq!(window(&c.readiness_probe), 60);
        assert_eq!(window(&c.liveness_probe), 300);
        assert_eq!(
            c.liveness_probe.clone().unwrap().initial_delay_seconds,
            None,
            "the startup probe gates it"
        );
    }
}

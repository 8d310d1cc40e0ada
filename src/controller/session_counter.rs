//! The real session counter: OMERO's probes behind the controller's port.

use super::port::{SessionCounter, SessionQuery};
use crate::omero::{DatabaseCredentials, ProbeTarget, SessionProbes};

impl SessionCounter for SessionProbes {
    async fn count(&self, query: &SessionQuery) -> Result<Option<u64>, String> {
        let target = ProbeTarget {
            pod_ip: &query.pod_ip,
            probe: &query.probe,
            database: query
                .database
                .as_ref()
                .map(|(endpoint, password)| DatabaseCredentials { endpoint, password }),
        };
        SessionProbes::count(self, &target).await.map_err(|e| e.to_string())
    }
}

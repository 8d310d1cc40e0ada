//! The real OMERO port: the session probes and the grid redirect of `crate::omero`.

use super::port::{OmeroPort, RedirectQuery, SessionCount, SessionQuery};
use crate::omero::{Client, DatabaseCredentials, ProbeTarget};

impl OmeroPort for Client {
    async fn count_sessions(&self, query: &SessionQuery) -> Result<Option<SessionCount>, String> {
        let target = ProbeTarget {
            pod_ip: &query.pod_ip,
            probe: &query.probe,
            database: query
                .database
                .as_ref()
                .map(|(endpoint, password)| DatabaseCredentials { endpoint, password }),
        };
        self.count(&target).await.map_err(|e| e.to_string())
    }

    async fn redirect_new_sessions(&self, query: &RedirectQuery) -> Result<bool, String> {
        let (endpoint, password) = &query.database;
        let credentials = DatabaseCredentials { endpoint, password };
        self.redirect_new_sessions(&credentials, &query.pod_ip)
            .await
            .map(|r| r.changed)
            .map_err(|e| e.to_string())
    }
}

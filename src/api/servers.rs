//! The OMERO servers a node can run, by the names `omero.server.nodedescriptors` takes.
//!
//! omero-py's `_process_defaultxml.py` turns each name into a server instance of OMERO's grid
//! descriptor: `<Template>-<index>` becomes `<server-instance template="<Template>Template"
//! index="<index>">`, a name without `-` a server instance with no index. The templates and
//! which of them take an index are those of OMERO's `etc/templates/grid/templates.xml` (read
//! from the source): a name IceGrid has no template for, or an index where the template takes
//! none, makes `omero admin start` fail to deploy the application.

/// The property that places servers on IceGrid nodes (omero-py 5.9.0 and later).
pub const NODE_DESCRIPTORS: &str = "omero.server.nodedescriptors";

/// Servers that take an index (`Blitz-0`).
pub const INDEXED: &[&str] = &["Blitz", "Indexer", "PixelData", "Processor", "Tables"];
/// Servers that take none.
pub const SINGLE: &[&str] = &["DropBox", "MonitorServer", "FileServer", "Storm", "TestDropBox"];

/// The schema's pattern for one server name; [`is_server`] is the same rule.
pub const SERVER_PATTERN: &str = "^((Blitz|Indexer|PixelData|Processor|Tables)-[0-9]+|DropBox|MonitorServer|FileServer|Storm|TestDropBox)$";

/// The Blitz every node serves its clients through: a node's `servers` must include it.
pub const BLITZ: &str = "Blitz-0";

/// What a read-only node runs unless its `servers` (or `omero.server.nodedescriptors` in the
/// cluster's `config`) says otherwise: what IDR runs its read-only servers with
/// (IDR/deployment `ansible/group_vars/omero-hosts.yml`). The others can do nothing on a node
/// that writes neither the database nor the repository: the Indexer's and PixelData's jobs are
/// guarded off (omero-server `indexer.xml`, `pixeldata.xml`: they need both writable), DropBox
/// and MonitorServer import, Processor runs scripts (which write), FileServer is unused.
pub const READ_ONLY_DEFAULT: &[&str] = &[BLITZ, "Tables-0"];

/// Bounds of `nodes[].servers`, in the CRD too: the API server refuses a CEL rule over a list
/// whose size and item length it cannot bound (its cost estimate would exceed the budget).
pub const MAX_SERVERS: usize = 32;
pub const MAX_SERVER_NAME: usize = 32;

/// Whether `name` names an OMERO server as the node descriptors take it.
pub fn is_server(name: &str) -> bool {
    if name.len() > MAX_SERVER_NAME {
        return false;
    }
    match name.split_once('-') {
        Some((template, index)) => {
            INDEXED.contains(&template) && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
        }
        None => SINGLE.contains(&name),
    }
}

/// The template of a server (`PixelData` for `PixelData-0`).
pub fn template(name: &str) -> &str {
    name.split_once('-').map_or(name, |(template, _)| template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_the_templates_omero_has_with_an_index_where_they_take_one() {
        for good in ["Blitz-0", "Tables-0", "Processor-12", "PixelData-1", "Indexer-0", "DropBox", "Storm"] {
            assert!(is_server(good), "{good}");
        }
        for bad in ["Blitz", "Blitz-", "Blitz-a", "DropBox-1", "Glacier2", "blitz-0", "Tables-0,Blitz-0", ""]
        {
            assert!(!is_server(bad), "{bad}");
        }
        let pattern = regex::Regex::new(SERVER_PATTERN).unwrap();
        for name in
            ["Blitz-0", "Blitz", "Blitz-", "DropBox", "DropBox-1", "Repository-1", "x Blitz-0", "Tables-01"]
        {
            assert_eq!(
                pattern.is_match(name),
                is_server(name),
                "{name}: the schema and the Rust check agree"
            );
        }
        assert_eq!(template("PixelData-3"), "PixelData");
        assert_eq!(template("DropBox"), "DropBox");
    }
}
